"""Quantized training in miniature: the demo recipe's stage 2 and stage 3 trained again
from its stage-1b checkpoint, with the towers' linears in int8 (`model.quant=int8`, Qwix)
and without (the tiny config computes in float32), the same steps, seeds and data order;
each scored like the recipe's stages (held-out LM loss, answer exact match).

  python -m launch.demo --workdir=/tmp/demo                   # the recipe, once
  python benchmarks/int8/convergence.py --workdir=/tmp/demo   # then this (about 15 min, 2 cores)

Writes WORKDIR/int8.md (the table of benchmarks/int8/README.md). The arms' runs are
WORKDIR/int8/{none,int8}/stage{2,3}; a finished run is not run again.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from configs import stage0
from penguin_jax.demo import recipe
from penguin_jax.train import runtime


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True, help="a finished launch.demo recipe")
  args = p.parse_args(argv)
  runtime.quiet_logs()
  demo = recipe.Demo(args.workdir, recipe.FULL, stage0.get_config("tiny"))
  if "stage1b" not in demo.state:
    print(f"error: {args.workdir} has no finished recipe: run python -m launch.demo "
          f"--workdir={args.workdir} first", file=sys.stderr)
    return 1
  rows = []
  for quant in ("none", "int8"):
    prev = demo.state["stage1b"]["workdir"]
    for key, config in (("stage2", "stage2.py"), ("stage3", "stage3.py")):
      name = f"int8/{quant}/{key}"
      run = demo.train(name, config, demo.b.steps[key], f"--config.init.init_from={prev}",
                       f"--config.model.quant={quant}")
      prev = run["workdir"]
      ev = demo.evaluate(name, prev)
      rows.append((quant, key, run, ev))
  lines = ["| quant | stage | steps | last training loss | step time s | held-out LM loss | "
           "exact match |", "|---|---|---|---|---|---|---|"]
  for quant, key, run, ev in rows:
    lines.append(f"| {quant} | {key} | {run['steps']} | {run['loss_last']:.4f} | "
                 f"{run['step_time']:.3f} | {ev['held_out_lm_loss']:.4f} | "
                 f"{ev['exact_match']:.3f} |")
  out = os.path.join(demo.w, "int8.md")
  with open(out, "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))
  print(json.dumps({f"{q}/{k}": {"held_out_lm_loss": e["held_out_lm_loss"],
                                 "exact_match": e["exact_match"]} for q, k, _, e in rows}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
