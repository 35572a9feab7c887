"""Stage 1a: encoder warm-up at low resolution with reconstruction losses (docs/design.md §3).

  python -m launch.train --config=configs/stage1.py:tiny --workdir=/tmp/stage1
  python -m launch.train --config=configs/stage1.py:2b --workdir=gs://BUCKET/stage1 \\
      --config.init.encoder_from_qwen3=Qwen3-0.6B --config.init.llm=Qwen3-1.7B \\
      --config.init.teacher=VL3-SigLIP-NaViT --config.data.tfds_name=penguin_vl/release \\
      --config.data.tfds_data_dir=DIR

Trains encoder + projector (+ distill head), LLM frozen; <= 2048 visual tokens per image,
sequence 4096; LR 1e-3 for both; reconstruction losses against the frozen teacher
VL3-SigLIP-NaViT (`init.teacher`, an HF folder; tiny: a random one written in the workdir),
weighted 3.0 falling to 2.0 over the run.
"""
from configs.common import base


def get_config(arg: str = "2b"):
  c = base(arg)
  c.stage = "stage1"
  c.model.use_teacher = True
  c.optim.trainable = ("vision_encoder", "vision_projector", "vision_distill_layer")
  c.optim.lr.vision_distill_layer = c.optim.lr.vision_projector
  if arg != "tiny":
    c.data.seq_len = 4096
    c.data.max_tokens = 2048
    c.data.max_patches = 8192
    c.data.max_visual_tokens = 4096
    # The LLM is frozen, so there is room to recompute less than base's policy:
    # `remat_policy=auto` chose these at the smallest v5e slices, 2b v5e-4 (15.35 s
    # against full's 16.02 s) and 8b v5e-8 (21.53 s against offload's 25.19 s)
    # (benchmarks/aot_sweep/README.md).
    c.model.remat_policy = {"2b": "save_qkv", "8b": "full"}[arg]
  return c
