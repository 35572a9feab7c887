"""Stage 2: VLM pre-training, everything trainable (docs/design.md §3).

  python -m launch.train --config=configs/stage2.py:tiny --workdir=/tmp/stage2 \\
      --config.init.init_from=/tmp/stage1b

LR encoder 1e-4, projector and LLM 1e-3 (as stage 1b's "others").
"""
from configs.common import base


def get_config(arg: str = "2b"):
  c = base(arg)
  c.stage = "stage2"
  p = c.optim.lr.vision_projector
  c.optim.lr.vision_encoder = p / 10
  c.optim.lr.llm = p
  c.optim.trainable = ("vision_encoder", "vision_projector", "llm")
  return c
