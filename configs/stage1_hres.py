"""Stage 1b: encoder training at high resolution, no reconstruction (docs/design.md §3).

  python -m launch.train --config=configs/stage1_hres.py:tiny --workdir=/tmp/stage1b \\
      --config.init.init_from=/tmp/stage1

Encoder + projector trained (LLM frozen), <= 10240 visual tokens, sequence 16384;
LR projector 1e-3, encoder 5e-4.
"""
from configs.common import base


def get_config(arg: str = "2b"):
  c = base(arg)
  c.stage = "stage1_hres"
  c.optim.lr.vision_encoder = c.optim.lr.vision_projector / 2
  return c
