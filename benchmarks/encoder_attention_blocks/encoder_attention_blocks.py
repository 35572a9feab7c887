"""Encoder attention work on packed rows: full rows vs the blocks splash computes.

  python benchmarks/encoder_attention_blocks/encoder_attention_blocks.py [--batches=8] [--max_patches=20480]

Packs the embedded demo corpus with the Grain pipeline at the 2b stage-3 row sizes
(16,384 tokens, 20,480 patches, 10,240 visual tokens per row, images up to 10,240
tokens) and measures, per row of patches:
  pairs_fraction   sum over frames of patches^2 / (row length)^2: the attention the
                   model needs, relative to attending over whole rows;
  blocks_fraction  512 x 512 blocks that splash still computes (segment_block_overlap)
                   / all blocks of the row: what the TPU kernel does.
Before block skipping the kernel computed every block (fraction 1.0). The demo corpus
has small images (charts, OCR crops, photos, digits, short videos), so its fractions are
far below the worst case of a stage-3 row holding two 10,240-patch images (0.5).
Prints one line per figure.
"""
from __future__ import annotations

import argparse
import os
import tempfile

import jax.numpy as jnp
import numpy as np

from data_pipelines import demo_data, pipeline as P, records, sample as sample_lib
from data_pipelines.tokenizer import Qwen3Tokenizer
from penguin_jax.layers import segment_block_overlap


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--batches", type=int, default=8)
  ap.add_argument("--seq_len", type=int, default=16384)
  ap.add_argument("--max_patches", type=int, default=20480)
  ap.add_argument("--max_visual_tokens", type=int, default=10240)
  ap.add_argument("--block", type=int, default=512)
  ap.add_argument("--train", type=int, default=240)
  args = ap.parse_args()
  scfg = sample_lib.SampleConfig(max_tokens=10240, seq_len=args.seq_len)
  tmp = tempfile.mkdtemp(prefix="penguin_blocks_")
  demo_data.generate(tmp, args.train, 0, seed=0)
  tok = Qwen3Tokenizer.from_vocab_file()
  source = records.JsonlSource(os.path.join(tmp, "train.jsonl"))
  cfg = P.PipelineConfig(max_patches=args.max_patches, max_visual_tokens=args.max_visual_tokens,
                         packing="best_fit", packing_bins=16)
  it = iter(P.make_dataset(source, tok, scfg, cfg, batch_size=1))
  pairs, blocks, fill = [], [], []
  n = args.max_patches // args.block
  for _ in range(args.batches):
    seg = next(it)["patch_segment_ids"][0]
    _, counts = np.unique(seg[seg > 0], return_counts=True)
    pairs.append(float(np.sum(counts.astype(np.float64) ** 2)) / args.max_patches ** 2)
    blocks.append(float(np.asarray(segment_block_overlap(jnp.asarray(seg), args.block)).sum()) / n ** 2)
    fill.append(float(np.mean(seg > 0)))
  print(f"# {args.batches} rows of {args.max_patches} patches from {len(source)} demo samples")
  print(f"patch_fill={np.mean(fill):.3f}")
  print(f"pairs_fraction={np.mean(pairs):.4f}")
  print(f"blocks_fraction={np.mean(blocks):.4f}")


if __name__ == "__main__":
  main()
