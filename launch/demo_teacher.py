"""Pre-train the demo's teacher (a tiny VL3-SigLIP-NaViT) SigLIP's way on the demo corpus's
training images, and write it as an HF folder (`penguin_jax/demo/siglip.py`).

  python -m launch.demo_teacher --data=W/data --out=W/teacher [--steps=300]

(`launch.demo` runs it.)
"""
from __future__ import annotations

import argparse
import sys

from configs.common import base
from penguin_jax.demo import siglip
from penguin_jax.train import data as data_lib, runtime


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m launch.demo_teacher", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--data", required=True, help="the demo corpus's folder (raw/, spm.model)")
  p.add_argument("--out", required=True, help="the teacher's HF folder")
  p.add_argument("--steps", type=int, default=300)
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  runtime.cpu_if_idle()
  cfg = base("tiny")
  siglip.pretrain(args.data, args.out, cfg.model.teacher.to_dict(), data_lib.sample_config(cfg),
                  steps=args.steps, seed=args.seed)
  return 0


if __name__ == "__main__":
  sys.exit(main())
