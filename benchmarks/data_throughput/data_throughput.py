"""Data pipeline throughput and packing efficiency on the embedded demo data.

  python benchmarks/data_throughput/data_throughput.py [--batches=64] [--workers=0] [--packing=best_fit]

Generates the demo corpus (data_pipelines.demo_data) and builds it in a temporary folder
as the TFDS dataset penguin_vl (samples of at most 1,024 tokens; read with
tfds.data_source), then times the Grain pipeline at tiny-stage settings. Prints one line per
figure: token_fill= and patch_fill= (fraction of token / patch slots holding real data)
and batches_per_s=.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

import dataclasses

from data_pipelines import demo_data, pipeline as P, sample as sample_lib, tfds_penguin
from data_pipelines.tokenizer import Qwen3Tokenizer

# Tiny-stage settings (small images and videos, short rows).
SAMPLE = sample_lib.SampleConfig(min_tokens=4, max_tokens=128, seq_len=1024)


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--batches", type=int, default=64, help="at least a few packing rounds")
  ap.add_argument("--workers", type=int, default=0)
  ap.add_argument("--packing", default="best_fit", choices=["first_fit", "best_fit"])
  ap.add_argument("--seq_len", type=int, default=2048)
  ap.add_argument("--max_patches", type=int, default=2560)
  ap.add_argument("--max_visual_tokens", type=int, default=1536)
  ap.add_argument("--batch_size", type=int, default=4)
  ap.add_argument("--bins", type=int, default=64)
  ap.add_argument("--train", type=int, default=200)
  args = ap.parse_args()
  tmp = tempfile.mkdtemp(prefix="penguin_demo_")
  t0 = time.time()
  demo_data.generate(tmp, args.train, 0, seed=0)
  tok = Qwen3Tokenizer.from_vocab_file()
  config = tfds_penguin.PenguinConfig(name="bench", sample=SAMPLE, splits={"train": "train.jsonl"})
  builder = tfds_penguin.prepare(tmp, os.path.join(tmp, "tfds"), config)
  written = builder.info.metadata["train"]["written"]
  source = tfds_penguin.Split("penguin_vl/bench", "train", os.path.join(tmp, "tfds"))
  print(f"# demo corpus: {written} samples built in {time.time() - t0:.1f}s ({tmp})")
  cfg = P.PipelineConfig(max_patches=args.max_patches, max_visual_tokens=args.max_visual_tokens,
                         packing=args.packing, packing_bins=args.bins, workers=args.workers)
  it = iter(P.make_dataset(source, tok, dataclasses.replace(SAMPLE, seq_len=args.seq_len), cfg,
                           batch_size=args.batch_size))
  # Timed from the first batch: a packer emits its bins a round at a time, so any window
  # shorter than several rounds (bins / batch_size batches each) would be misleading.
  tok_fill, patch_fill = [], []
  t0 = time.perf_counter()
  for _ in range(args.batches):
    b = next(it)
    tok_fill.append(np.mean(b["segment_ids"] > 0))
    patch_fill.append(np.mean(b["patch_segment_ids"] > 0))
  dt = time.perf_counter() - t0
  print(f"token_fill={np.mean(tok_fill):.3f}")
  print(f"patch_fill={np.mean(patch_fill):.3f}")
  print(f"batches_per_s={args.batches / dt:.2f}")


if __name__ == "__main__":
  main()
