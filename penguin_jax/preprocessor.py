"""The image processor's settings: `preprocessor_config.json` (docs/design.md §2.1), read and written.

The released Penguin-Encoder and VLM folders carry one; the release's processor class
(`PenguinVLImageProcessor`) reads mean / std, token budget and patch size from it and falls
back to the OpenAI-CLIP constants for a field it omits. Training reads it from the
checkpoint it starts from (`config.data.preprocessor_config`); every export writes the
run's values back, in the model folder (the release's `AutoProcessor`) and in the encoder
folder (its `PenguinVLImageProcessor.from_pretrained(encoder)`). No JAX here: the data
workers import it.
"""
from __future__ import annotations

import json
import os
from typing import Optional

RELEASE_MEAN = RELEASE_STD = (0.5, 0.5, 0.5)  # the released checkpoints' preprocessor_config.json
# OpenAI-CLIP: what the release's processor class falls back to when a config omits them
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PATCH = 14                                    # docs/design.md §1.2
FILE = "preprocessor_config.json"


def read(path: str) -> Optional[tuple[tuple, tuple]]:
  """(image_mean, image_std) from a `preprocessor_config.json` (`path` is the file or a
  directory holding it, e.g. a released encoder folder); None when there is none. A field
  the file omits falls back to CLIP, as the release's processor does. Raises ValueError for
  a patch size other than 14 or a malformed mean / std."""
  f = os.path.join(path, FILE) if os.path.isdir(path) else path
  if not os.path.isfile(f):
    return None
  with open(f) as fh:
    pc = json.load(fh)
  if pc.get("patch_size", PATCH) != PATCH:
    raise ValueError(f"{f}: patch_size {pc['patch_size']}; Penguin-VL uses {PATCH}")
  mean = tuple(float(x) for x in pc.get("image_mean", CLIP_MEAN))
  std = tuple(float(x) for x in pc.get("image_std", CLIP_STD))
  if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
    raise ValueError(f"{f}: image_mean / image_std must be 3 numbers (std > 0), got {mean} / {std}")
  return mean, std


def make(mean=RELEASE_MEAN, std=RELEASE_STD, min_tokens: int = 16,
         max_tokens: int = 16384) -> dict:
  """The release's `preprocessor_config.json` for these settings (its processor's field
  names; bicubic resize, rescale 1/255, RGB; `min_tokens` / `max_tokens` in patches)."""
  return {
      "image_processor_type": "PenguinVLImageProcessor",
      "processor_class": "PenguinVLQwen3Processor",
      "do_resize": True,
      "resample": 3,                      # PIL bicubic
      "do_rescale": True,
      "rescale_factor": 1 / 255,
      "do_normalize": True,
      "image_mean": [float(x) for x in mean],
      "image_std": [float(x) for x in std],
      "do_convert_rgb": True,
      "min_tokens": int(min_tokens),
      "max_tokens": int(max_tokens),
      "patch_size": PATCH,
  }


def write(directory: str, settings: dict) -> str:
  os.makedirs(directory, exist_ok=True)
  f = os.path.join(directory, FILE)
  with open(f, "w") as fh:
    json.dump(settings, fh, indent=2)
  return f
