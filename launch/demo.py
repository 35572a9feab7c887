"""The Penguin recipe in miniature: every stage, on the embedded demo corpus, on a laptop
CPU, no downloads (issue 11).

  python -m launch.demo --workdir=/tmp/demo              # the recipe (see README for times)
  python -m launch.demo --workdir=/tmp/demo --quick      # a smoke version (the test suite's)
  python -m launch.demo --workdir=/tmp/demo --ablation [--seeds=3]
  python -m launch.demo --workdir=/tmp/demo --finetune   # after (or with) the recipe
  python -m launch.demo --workdir=/tmp/demo --benchmarks # the benchmarks' formats

The recipe: data, stage0, teacher, stage1a, stage1b, stage2, stage3, export, eval, each a
command of this project, logged as it runs (WORKDIR/STAGE/train.log has a stage's whole
log); `penguin_jax/demo/recipe.py` says what each step is (`--quick`: only the baseline
and the final model evaluated).
Output: WORKDIR/results.md (the table, and the answers per question kind for the
baseline and the final model), WORKDIR/loss_curves.png, WORKDIR/results.json. A step
already done (WORKDIR/results.json) is not run again: run the same command to go on after
an interruption.

`--ablation`: the paper's encoder ablation, in miniature (WORKDIR/ablation.md, .png, .json).
Every arm gets the same budget, stage 1a then stage 2 (everything trainable; stages 1b and
3 left out for time; fewer steps than the recipe's), on the same stage-0 LLM and teacher
(made first if missing), for each of `--seeds` seeds (the seed of the runs'
initialisation and data order), scored like the recipe's stages:
  paper            encoder from the text-only LLM; warm-up with the reconstruction losses
  random_init      encoder initialised at random; the same warm-up
  no_reconstruction  encoder from the LLM; the warm-up with the LM loss alone
  no_relation      encoder from the LLM; the warm-up without the relation loss
(The paper also compares a contrastively pre-trained ViT; that arm is not built.)

`--finetune`: the recipe (run first if needed), then its stage-3 export adapted to a
question kind the recipe never trained ("Where is the shape?", `position`): the new JSONL
built as a TFDS dataset with the export's tokenizer, then full fine-tuning, LoRA (r 8)
and QLoRA (int8, nf4) with the same steps, each from the export (configs/finetune.py).
WORKDIR/finetune.md and .png: trainable parameters, step time, held-out loss and answer
exact match before and after (docs/finetune.md).

`--benchmarks`: the recipe, then its export on the paper's benchmark formats in
miniature: the demo's questions in each benchmark's released layout (DocVQA / InfoVQA
ANLS, ChartQA relaxed accuracy, TextVQA VQA accuracy, OCRBench, AI2D / MMMU / MMBench /
VideoMME multiple choice), scored as `launch.eval --benchmark` scores them, before and
after full fine-tuning on other questions in those formats (WORKDIR/benchmarks.md).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from configs import stage0
from penguin_jax.demo import recipe
from penguin_jax.train import runtime


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m launch.demo", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True)
  p.add_argument("--quick", action="store_true", help="a few steps per stage (smoke test)")
  p.add_argument("--ablation", action="store_true", help="the encoder ablation instead")
  p.add_argument("--seeds", type=int, default=3, help="--ablation: seeds per arm")
  p.add_argument("--finetune", action="store_true",
                 help="then fine-tune its export: full, LoRA, QLoRA int8 / nf4")
  p.add_argument("--benchmarks", action="store_true",
                 help="then its export on the benchmarks' layouts, before and after "
                      "fine-tuning on their formats")
  args = p.parse_args(argv)
  runtime.quiet_logs()
  runtime.cpu_if_idle()
  logging.getLogger("train").setLevel(logging.WARNING)
  os.makedirs(args.workdir, exist_ok=True)
  demo = recipe.Demo(args.workdir, recipe.QUICK if args.quick else recipe.FULL,
                     stage0.get_config("tiny"))
  try:
    if args.ablation:
      demo.ablation(args.seeds)
    else:
      demo.finetune() if args.finetune else demo.benchmarks() if args.benchmarks else \
          demo.recipe()
  except (RuntimeError, FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
