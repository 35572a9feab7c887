"""Stage 0 (the demo's only): a text-only LLM, trained on the demo corpus's text.

  python -m launch.train --config=configs/stage0.py:tiny --workdir=/tmp/stage0

It stands in for Qwen3's own pre-training in `launch.demo`: its LLM is then both the LLM
the vision encoder starts from ("Qwen3-0.6B", `init.encoder_from_qwen3`) and the decoder
("Qwen3-1.7B", `init.llm`), and, asked the validation questions without their images,
the text-only baseline. Only the LLM trains, on the conversations with their images and
videos taken out (`data.demo_text_only`). Real sizes start from the released Qwen3
checkpoints instead: there is no `2b` / `8b` variant.
"""
from configs.common import base


def get_config(arg: str = "tiny"):
  if arg != "tiny":
    raise ValueError(f"stage 0 has only the tiny variant (got {arg!r}): real sizes start from "
                     "the released Qwen3 checkpoints (config.init.llm)")
  c = base(arg)
  c.stage = "stage0"
  c.data.demo_text_only = True
  c.data.max_patches = 16          # text only: the (unused) vision inputs stay tiny
  c.data.max_visual_tokens = 16
  c.optim.lr = {"llm": 3e-3}
  c.optim.trainable = ("llm",)
  return c
