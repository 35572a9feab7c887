"""A trained run answering every benchmark's layout: the demo's questions written as each
benchmark releases its files (`data_pipelines.demo_benchmarks`), read, prompted, answered
and scored as `launch.eval --benchmark` does, with one generator (programs compiled once
per padded shape). Prints one JSON line per benchmark and a Markdown table.

  python benchmarks/scoring/benchmark_files.py --workdir=RUN [--n=24] [--files=DIR]
"""
import argparse
import json
import os
import sys
import tempfile
import time

from data_pipelines import benchmarks, demo_benchmarks
from penguin_jax import benchmark, inference


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--n", type=int, default=24, help="questions per benchmark")
  ap.add_argument("--files", default=None, help="where the files go (default: a temp dir)")
  args = ap.parse_args(argv)
  files = args.files or tempfile.mkdtemp(prefix="bench_files_")
  demo_benchmarks.write(files, args.n, seed=0)
  quiet = lambda m: print(m, file=sys.stderr)
  g = inference.Generator(inference.load(workdir=args.workdir), log=quiet)
  rows = []
  for name in benchmarks.SPECS:
    t = time.perf_counter()
    s = benchmark.run(g, name, os.path.join(files, name), log=quiet)
    s["seconds"] = round(time.perf_counter() - t, 1)
    print(json.dumps(s), flush=True)
    rows.append(s)
  print("\n| benchmark | metric | score | n | skipped | seconds (compile included) |")
  print("|---|---|---|---|---|---|")
  for s in rows:
    print(f"| {s['benchmark']} | {s['metric']} | {s['score']:.4f} | {s['n']} | {s['skipped']} "
          f"| {s['seconds']} |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
