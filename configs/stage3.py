"""Stage 3: SFT on images and video, everything trainable at 1e-5 (docs/design.md §3).

  python -m launch.train --config=configs/stage3.py:tiny --workdir=/tmp/stage3 \\
      --config.init.init_from=/tmp/stage2

Image merge 1, video merge 2, 1 fps, at most 180 frames.
"""
from configs.common import base


def get_config(arg: str = "2b"):
  c = base(arg)
  c.stage = "stage3"
  lr = 3e-4 if arg == "tiny" else 1e-5   # tiny: a few steps have to show learning
  c.optim.lr = {"vision_encoder": lr, "vision_projector": lr, "llm": lr}
  c.optim.trainable = ("vision_encoder", "vision_projector", "llm")
  return c
