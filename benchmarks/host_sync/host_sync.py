"""Steps per second of the tiny training loop with and without a host read every step.

  python benchmarks/host_sync/host_sync.py [--config=stage1.py:tiny] [--steps=40] [--warmup=5]

The loop `launch.train` runs (the real data feed of the demo corpus, the compiled step of
`penguin_jax/train/program.py`), timed twice over the same batches: "per_step_read"
reads one metric to the host after every step (what the loop did when it checked the
non-finite counter each step: the host waits for the device, and the next batch is made
only then), "log_steps_only" reads nothing until the end (today's loop between log
steps). Prints one line per figure: steps_per_s for each and their ratio.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--config", default="stage1.py:tiny")
  ap.add_argument("--steps", type=int, default=40)
  ap.add_argument("--warmup", type=int, default=5)
  args = ap.parse_args()
  import importlib
  import jax
  from penguin_jax.train import data as data_lib, program as program_lib, runtime
  from penguin_jax.train.feed import DataFeed
  stage, variant = args.config.removesuffix(".py").split(".py:") if ".py:" in args.config \
      else args.config.split(":")
  cfg = importlib.import_module(f"configs.{stage.removesuffix('.py')}").get_config(variant)
  work = tempfile.mkdtemp(prefix="host_sync_")
  source, tokenizer, _ = data_lib.prepare(cfg, work)
  program = program_lib.build(cfg, runtime.mesh(cfg), image_token_id=tokenizer.image_token_id)
  step = program.lower().compile()
  teacher = None
  if program.teacher is not None:
    program.write_random_teacher(os.path.join(work, "teacher"), jax.random.PRNGKey(7))
    teacher = program.load_teacher(os.path.join(work, "teacher"))
  results = {}
  for mode in ("per_step_read", "log_steps_only"):
    feed = DataFeed(source, tokenizer, cfg, program.abstract_batch)
    state = program.init_state(jax.random.PRNGKey(0))
    with program.context():
      for i in range(args.warmup + args.steps):
        if i == args.warmup:
          jax.block_until_ready(state)
          t = time.perf_counter()
        batch, _ = feed.next()
        state, metrics = step(state, batch, teacher)
        if mode == "per_step_read":
          int(jax.device_get(metrics["skipped"]))
      jax.block_until_ready(state)
    results[mode] = args.steps / (time.perf_counter() - t)
    print(f"{mode}_steps_per_s={results[mode]:.3f}", flush=True)
  print(f"speedup={results['log_steps_only'] / results['per_step_read']:.3f}")


if __name__ == "__main__":
  main()
