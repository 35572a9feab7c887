"""Images (docs/design.md §2.1): decode, resize within a token budget, normalisation with the
checkpoint's mean / std, patches in the release's order.

An image is one key frame of the TRA budget (`tra.allocate_frame_sizes`) with its own merge
size: kept at native resolution (sides rounded to multiples of 14 * merge) when the budget
allows, else downscaled with the aspect ratio kept; bicubic resize (PIL, on uint8, as the
release's image processor); rescale by 1/255; mean / std from the checkpoint's
`preprocessor_config.json` (`read_preprocessor_config`), 0.5 / 0.5 as the released
Penguin-Encoder and VLMs say when there is none.
"""
from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from data_pipelines import tra
from data_pipelines.errors import BadSample
# The normalisation constants and the checkpoint's preprocessor_config.json live with the
# other checkpoint files' code (penguin_jax/preprocessor.py); re-exported here.
from penguin_jax.preprocessor import CLIP_MEAN, CLIP_STD, PATCH, RELEASE_MEAN, RELEASE_STD  # noqa: F401
from penguin_jax.preprocessor import read as read_preprocessor_config  # noqa: F401


def load_image(path_or_bytes) -> np.ndarray:
  """-> uint8 [H, W, 3] RGB. Raises BadSample: missing_file, corrupt_image, zero_size_image,
  image_too_large (PIL's decompression-bomb limit)."""
  if isinstance(path_or_bytes, (str, os.PathLike)):
    if not os.path.isfile(path_or_bytes):
      raise BadSample("missing_file", str(path_or_bytes))
    if os.path.getsize(path_or_bytes) == 0:
      raise BadSample("zero_size_image", f"{path_or_bytes}: empty file")
  elif len(path_or_bytes) == 0:
    raise BadSample("zero_size_image", "empty file")
  try:
    src = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
    with Image.open(src) as im:
      im.load()
      if im.width == 0 or im.height == 0:
        raise BadSample("zero_size_image", f"{im.width}x{im.height}")
      arr = np.asarray(im.convert("RGB"))
  except BadSample:
    raise
  except Image.DecompressionBombError as e:       # PIL's guard against huge images
    raise BadSample("image_too_large", str(e))
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
    raise BadSample("corrupt_image", f"{path_or_bytes if not isinstance(path_or_bytes, bytes) else 'bytes'}: {e}")
  if arr.size == 0:
    raise BadSample("zero_size_image", str(arr.shape))
  return arr


def check_aspect_ratio(h: int, w: int):
  """Ratios up to 200 are trained by the release (docs/design.md §2.1); above: a BadSample."""
  if h <= 0 or w <= 0:
    raise BadSample("zero_size_image", f"{h}x{w}")
  if max(h, w) / min(h, w) > tra.MAX_ASPECT_RATIO:
    raise BadSample("aspect_ratio", f"{w}x{h} has aspect ratio {max(h, w) / min(h, w):.1f} "
                    f"> {tra.MAX_ASPECT_RATIO}")


def target_size(h: int, w: int, merge_size: int, min_tokens: int, max_tokens: int):
  """(height, width) in pixels of an image after the budget (one key frame)."""
  check_aspect_ratio(h, w)
  (th, tw), = tra.allocate_frame_sizes(h, w, [tra.KEY], patch_size=PATCH, merge_size=merge_size,
                                       min_tokens=min_tokens, max_tokens=max_tokens)
  return th, tw


MULTI_IMAGE_MODES = ("release", "per_image")


def image_sizes(shapes, *, merge_size: int, min_tokens: int, max_tokens: int,
                mode: str = "release") -> list[tuple[int, int]]:
  """Target (height, width) of each image of one sample, from their (h, w) (docs/design.md §2.1).

  "release" (default; what the released checkpoints were trained on): the release's
      processor sizes a sample's images as the key frames of one clip: one `max_tokens`
      budget for all of them, and the FIRST image's height and width for every image
      (a 451x300 image after a 600x400 one becomes 602x406).
  "per_image": each image sized alone, with its own aspect ratio and the whole budget.
  """
  if mode not in MULTI_IMAGE_MODES:
    raise ValueError(f"multi-image sizing {mode!r}: use one of {MULTI_IMAGE_MODES}")
  if mode == "per_image" or len(shapes) < 2:
    return [target_size(h, w, merge_size, min_tokens, max_tokens) for h, w in shapes]
  for h, w in shapes:
    check_aspect_ratio(h, w)
  return tra.allocate_frame_sizes(*shapes[0], [tra.KEY] * len(shapes), patch_size=PATCH,
                                  merge_size=merge_size, min_tokens=min_tokens,
                                  max_tokens=max_tokens)


def resize_bicubic(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
  if rgb.shape[:2] == (height, width):
    return rgb
  return np.asarray(Image.fromarray(rgb).resize((width, height), Image.BICUBIC))


def to_patches(frames: np.ndarray, merge_size: int, mean=RELEASE_MEAN,
               std=RELEASE_STD) -> tuple[np.ndarray, tuple[int, int, int]]:
  """uint8 [t, H, W, 3] (H, W multiples of 14 * merge) -> (float32 [t*gh*gw, 3*14*14]
  normalised patches in merge-block order, grid (t, gh, gw)). Each patch is laid out
  (channel, row, col), as the release's Conv2d patch embedding reads it."""
  t, H, W, _ = frames.shape
  mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
  x = (frames.astype(np.float32) / 255.0 - mean) / std                  # [t, H, W, 3]
  gh, gw, m = H // PATCH, W // PATCH, merge_size
  x = x.reshape(t, gh // m, m, PATCH, gw // m, m, PATCH, 3)
  x = x.transpose(0, 1, 4, 2, 5, 7, 3, 6)                               # t, bh, bw, m, m, c, p, p
  return np.ascontiguousarray(x.reshape(t * gh * gw, 3 * PATCH * PATCH)), (t, gh, gw)


def process_image(rgb: np.ndarray, *, merge_size: int = 1, min_tokens: int = 16,
                  max_tokens: int = 16384, mean=RELEASE_MEAN, std=RELEASE_STD, size=None):
  """uint8 [H, W, 3] -> (patches [n, 588], grid (1, gh, gw)); n / merge^2 LLM tokens.
  `size`: the target (height, width) when the sample decided it (`image_sizes`)."""
  h, w = rgb.shape[:2]
  th, tw = size or target_size(h, w, merge_size, min_tokens, max_tokens)
  return to_patches(resize_bicubic(rgb, th, tw)[None], merge_size, mean, std)
