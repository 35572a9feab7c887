"""Evaluate a training run on held-out data in the release's JSONL format.

  python -m launch.eval --workdir=W [--step=N] --data=val.jsonl [--out=answers.jsonl]

Two kinds of figures (docs/evaluation.md):
* **held-out loss** (teacher-forced), as the run's own eval step computes it in training:
  the JSONL read as it is (`records.JsonlSource`: no dataset to build), packed as in
  training (the run's sequence length, patch budget and batch), the stage's losses (the
  reconstruction losses of stage 1 against its teacher), and the **per-token accuracy**
  over label tokens. One pass; losses are the mean over batches, token counts are sums.
* **generated answers**: for every sample, the turns before its last assistant turn are
  the prompt, that turn is the reference; greedy decoding, then exact match after
  normalisation and ChartQA's relaxed accuracy (`penguin_jax/evaluation.py`). `--out`
  writes one JSON line per sample (id, prompt, reference, answer, exact_match,
  relaxed_match).
A sample that cannot be used (missing or corrupt media, tag mismatch, too long) is named
on one line, counted and skipped (`--strict`: stop at it). The last line of stdout is
every figure as one JSON object.

The paper's benchmarks, from their released files (`data_pipelines/benchmarks.py` reads
docvqa, infovqa, chartqa, textvqa, ocrbench, ai2d, mmmu, mmbench, videomme), prompted as
lmms-eval prompts Penguin-VL, answered greedily, scored by the benchmark's metric:

  python -m launch.eval --benchmark=docvqa --data=DIR (--workdir=RUN | --hf_dir=HF) \
      [--limit=N] [--out=answers.jsonl]

The last line is {"benchmark", "metric", "score", "n", "skipped", "groups"}; `--out`
holds one line per question, in the format `--score` reads.

Scoring predictions made anywhere (this project, lmms-eval, VLMEvalKit) with a
benchmark's own metric (`penguin_jax/scoring.py`):

  python -m launch.eval --score=predictions.jsonl --metric=anls

One line per prediction, {"answer": str, "reference": str or [str, ...]} (and "options":
{"A": str, ...} for multiple_choice, the reference a letter). Metrics: exact_match, anls,
vqa_accuracy, relaxed_accuracy, multiple_choice, ocrbench, numeric. A malformed line is
named and counted, not scored; the last line is {"METRIC": mean, "n": count, ...}.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from data_pipelines.errors import BadSample
from data_pipelines import benchmarks
from penguin_jax import benchmark, inference, scoring
from penguin_jax.train import runtime


def say(msg: str):
  print(msg, file=sys.stderr, flush=True)


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m launch.eval", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", help="the training run")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
  p.add_argument("--hf_dir", help="with --benchmark: an HF model folder instead of --workdir")
  p.add_argument("--data", help="held-out samples, the release's JSONL format (--benchmark: "
                 "the folder of the benchmark's files)")
  p.add_argument("--benchmark", choices=sorted(benchmarks.SPECS),
                 help="a paper benchmark, from its released files in --data")
  p.add_argument("--limit", type=int, default=None, help="--benchmark: its first N questions")
  p.add_argument("--data_folder", default=None,
                 help="where its media paths are relative to (default: the JSONL's folder)")
  p.add_argument("--out", help="one JSON line per generated answer")
  p.add_argument("--max_new_tokens", type=int, default=None,
                 help="answer length cap (default 64; --benchmark: the benchmark's)")
  p.add_argument("--batch_size", type=int, default=8, help="prompts decoded together")
  p.add_argument("--fsdp", type=int, default=1, help="mesh: weights split over this many devices")
  p.add_argument("--tensor", type=int, default=1, help="mesh: tensor parallelism")
  p.add_argument("--skip_loss", action="store_true", help="only the generated answers")
  p.add_argument("--skip_answers", action="store_true", help="only the held-out loss")
  p.add_argument("--strict", action="store_true", help="stop at the first bad sample")
  p.add_argument("--score", help="instead: score this JSONL of predictions (with --metric)")
  p.add_argument("--metric", choices=sorted(scoring.SCORERS), help="--score's metric")
  return p


def main(argv=None) -> int:
  p = parser()
  args = p.parse_args(argv)
  if args.score:                      # no model: the predictions are scored as they are
    if not args.metric:
      p.error("--score needs --metric")
    try:
      figures = scoring.score_file(args.score, args.metric, log=say)
    except (OSError, UnicodeDecodeError) as e:
      print(f"error: {args.score}: {e.strerror if isinstance(e, OSError) else e}",
            file=sys.stderr)
      return 2
    print(json.dumps(figures), flush=True)
    return 0
  if args.benchmark and (not args.data or not (args.workdir or args.hf_dir)):
    p.error("--benchmark needs --data=DIR and --workdir=RUN or --hf_dir=DIR")
  if not args.benchmark and (not args.workdir or not args.data):
    p.error("give --workdir=RUN and --data=FILE.jsonl (or --score=FILE --metric=NAME)")
  runtime.cpu_if_idle()
  for noisy in ("absl", "jax._src", "orbax", "grain"):
    logging.getLogger(noisy).setLevel(logging.ERROR)
  try:
    figures = run(args)
  except (FileNotFoundError, ValueError, KeyError, BadSample) as e:
    print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
    return 2
  print(json.dumps(figures), flush=True)
  return 0


def run(args) -> dict:
  """Every figure of `launch.eval` for parsed `args` (see `parser`); bad input raises."""
  if args.benchmark:
    loaded = inference.load(args.workdir, args.hf_dir, args.step)
    say(f"model: {loaded.source}")
    g = inference.Generator(loaded, args.fsdp, args.tensor, log=say)
    return benchmark.run(g, args.benchmark, args.data, limit=args.limit, strict=args.strict,
                         batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                         out=args.out, log=say)
  return inference.evaluate_run(
      args.workdir, args.data, step=args.step, data_folder=args.data_folder, out=args.out,
      max_new_tokens=args.max_new_tokens or 64, batch_size=args.batch_size, fsdp=args.fsdp,
      tensor=args.tensor, skip_loss=args.skip_loss, skip_answers=args.skip_answers,
      strict=args.strict, log=say)


if __name__ == "__main__":
  sys.exit(main())
