"""TRA: Temporal Redundancy-Aware token compression for video (docs/design.md §2.2).

Two public functions:

* `detect_key_frames(frames)`: 0 = key frame, 1 = intermediate. Each frame is compared
  with the last key frame in OpenCV's 8-bit HSV, per 14x14 patch, by cosine similarity of
  the raw (uncentred) patch vectors; a patch is similar above 0.7; a frame whose fraction
  of similar patches drops below 0.95 becomes the new key frame. Frames are first resized
  (bilinear, antialiased) to sides that are multiples of 14 with 10..10240 patches.
* `allocate_frame_sizes(h, w, frame_types, ...)`: the four-step pixel budget that gives key
  frames up to 16x the area of intermediate frames.

Both reproduce the release (the released checkpoints were trained with them), including
the detector's blind spots described in docs/design.md §2.2. Also used for images: an image is one
key frame with merge size 1 (`images.py`).
"""
from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np

KEY, INTERMEDIATE = 0, 1
SIMILAR_PATCH = 0.7          # cosine above this: the patch is unchanged
MIN_FRAME_SIMILARITY = 0.95  # below this fraction of unchanged patches: new key frame
KI_PATCH = 14
KI_MIN_PIXELS = 10 * 14 * 14
KI_MAX_PIXELS = 10240 * 14 * 14
MAX_ASPECT_RATIO = 200


# --------------------------------------------------------------------------- budget
def _dims_from_area(area: float, aspect: float, factor: int) -> tuple[int, int]:
  """(h, w) with h/w = aspect and h*w ~ area, each rounded to a multiple of factor."""
  w = math.sqrt(area / aspect)
  h = w * aspect
  return max(round(h / factor) * factor, factor), max(round(w / factor) * factor, factor)


def _ensure_min(h: int, w: int, min_pixels: float, aspect: float, factor: int):
  """If rounding fell under min_pixels, recompute from min_pixels and round up."""
  if h * w < min_pixels:
    w_f = math.sqrt(min_pixels / aspect)
    return math.ceil(w_f * aspect / factor) * factor, math.ceil(w_f / factor) * factor
  return h, w


def allocate_frame_sizes(height: int, width: int, frame_types: Sequence[int], *,
                         patch_size: int = 14, merge_size: int = 2, min_tokens: int = 16,
                         max_tokens: int = 16384) -> list[tuple[int, int]]:
  """Each frame's (height, width) in pixels (docs/design.md §2.2's four steps).

  factor f = patch_size * merge_size; min_pixels = min_tokens f^2 1.5,
  max_pixels = max_tokens f^2 0.95. With N_k key and N_i intermediate frames of area A:
  1. (N_k + N_i) A <= max_pixels: native size (rounded to multiples of f).
  2. else A_k = max_pixels / (N_k + N_i / 16), A_i = A_k / 16.
  3. A_i < min_pixels: A_i = min_pixels, A_k = (max_pixels - N_i min_pixels) / N_k.
  4. A_k >= min_pixels.
  """
  if height <= 0 or width <= 0:
    raise ValueError(f"frame size {height}x{width} is empty")
  factor = patch_size * merge_size
  min_pixels = min_tokens * factor * factor * 1.5
  max_pixels = max_tokens * factor * factor * 0.95
  types = [int(t) for t in frame_types]
  n_i = types.count(INTERMEDIATE)
  n_k = len(types) - n_i
  if n_k == 0:
    raise ValueError("frame_types has no key frame (the first frame is always one)")
  aspect = height / width
  area = height * width
  key_area = inter_area = float(area)
  if len(types) * area > max_pixels:
    key_area = max_pixels / (n_k + n_i / 16.0)
    inter_area = key_area / 16.0
    if inter_area < min_pixels:
      inter_area = min_pixels
      key_area = (max_pixels - n_i * min_pixels) / n_k
    key_area = max(key_area, min_pixels)
  key = _ensure_min(*_dims_from_area(key_area, aspect, factor), min_pixels, aspect, factor)
  inter = (_ensure_min(*_dims_from_area(inter_area, aspect, factor), min_pixels, aspect, factor)
           if n_i else key)
  return [inter if t == INTERMEDIATE else key for t in types]


def smart_resize(height: int, width: int, factor: int, min_pixels: float,
                 max_pixels: float) -> tuple[int, int]:
  """Sides multiples of `factor`, area within [min_pixels, max_pixels], aspect kept."""
  if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
    raise ValueError(f"aspect ratio {max(height, width) / min(height, width):.0f} is above "
                     f"{MAX_ASPECT_RATIO}")
  h = max(factor, round(height / factor) * factor)
  w = max(factor, round(width / factor) * factor)
  if h * w > max_pixels:
    s = math.sqrt(height * width / max_pixels)
    h, w = math.floor(height / s / factor) * factor, math.floor(width / s / factor) * factor
  elif h * w < min_pixels:
    s = math.sqrt(min_pixels / (height * width))
    h, w = math.ceil(height * s / factor) * factor, math.ceil(width * s / factor) * factor
  return max(h, factor), max(w, factor)


# --------------------------------------------------------------------------- key frames
def antialias_taps(in_size: int, out_size: int) -> list[tuple[int, np.ndarray]]:
  """Per output pixel (first input index, float32 weights) of an antialiased bilinear
  (triangle filter) resize, computed as PyTorch's CPU kernel computes them: in float32,
  with its mixed float / double intermediate steps (docs/design.md §2.2: float64 weights move
  pixel values by up to 0.004 and flip key-frame decisions)."""
  f32 = np.float32
  scale = f32(f32(in_size) / f32(out_size))
  support = scale if scale >= 1.0 else f32(1.0)
  inv = f32(1.0 / float(scale)) if scale >= 1.0 else f32(1.0)
  taps = []
  for o in range(out_size):
    center = f32(float(scale) * (o + 0.5))
    lo = max(int(float(f32(center - support)) + 0.5), 0)
    hi = min(int(float(f32(center + support)) + 0.5), in_size)
    x = np.abs((np.asarray([float(f32(f32(j) - center)) for j in range(lo, hi)]) + 0.5) * float(inv))
    x = x.astype(f32)
    w = np.where(x < 1.0, (1.0 - x.astype(np.float64)).astype(f32), f32(0.0))
    total = f32(0.0)
    for v in w:                      # a float32 running sum, as the kernel's loop
      total = f32(total + v)
    taps.append((lo, (w / total).astype(f32) if total != 0 else w))
  return taps


def _resize_axis(x: np.ndarray, taps, axis: int) -> np.ndarray:
  """One separable pass over `axis`, float32, summing each output's taps in PyTorch's
  order and rounding: x0 * w0, then the taps in blocks of 4 as separate multiply and add,
  the remaining ones fused (multiply-add rounded once). That is how its AVX2 CPU kernel
  (torch 2.13) evaluates the loop; fused steps are computed in float64 (the product of
  two float32 is exact there) and rounded to float32."""
  x = np.moveaxis(x, axis, -1)
  out = np.empty(x.shape[:-1] + (len(taps),), np.float32)
  for o, (lo, w) in enumerate(taps):
    acc = x[..., lo] * w[0]
    plain = 4 * ((len(w) - 1) // 4)
    for j in range(1, len(w)):
      if j <= plain:
        acc = acc + x[..., lo + j] * w[j]
      else:
        acc = (acc.astype(np.float64) + x[..., lo + j].astype(np.float64) * float(w[j])
               ).astype(np.float32)
    out[..., o] = acc
  return np.moveaxis(out, -1, axis)


def resize_antialiased(frames: np.ndarray, height: int, width: int) -> np.ndarray:
  """frames [N, H, W, C] -> float32 [N, height, width, C], bit for bit PyTorch's
  `interpolate(frames as float32 NCHW, (height, width), mode="bilinear", antialias=True)`
  on CPU (the release's key-frame resize): width pass first, then height."""
  x = frames.astype(np.float32)
  if x.shape[2] != width:
    x = _resize_axis(x, antialias_taps(x.shape[2], width), 2)
  if x.shape[1] != height:
    x = _resize_axis(x, antialias_taps(x.shape[1], height), 1)
  return x


def _hsv_patches(frame: np.ndarray) -> np.ndarray:
  """float RGB [H, W, 3] -> [h*w patches, 3*14*14] of OpenCV 8-bit HSV values (the release
  truncates the resized floats to uint8 first)."""
  hsv = cv2.cvtColor(frame.astype(np.uint8), cv2.COLOR_RGB2HSV).astype(np.float32)
  H, W = hsv.shape[:2]
  p = KI_PATCH
  hsv = hsv.reshape(H // p, p, W // p, p, 3).transpose(0, 2, 4, 1, 3)  # c, p1, p2 per patch
  return hsv.reshape((H // p) * (W // p), -1)


def frame_similarity(a: np.ndarray, b: np.ndarray, eps: float = 1e-8) -> float:
  """Fraction of similar patches between two HSV patch sets [n, 588].

  Patches that are (near) zero in both frames are left out of the fraction, as the release
  computes it (it marks them similar, then averages over the others only). If every patch
  is, the frames count as identical (the release's mean of nothing is NaN, which never
  starts a new key frame)."""
  na = np.linalg.norm(a, axis=-1) + eps
  nb = np.linalg.norm(b, axis=-1) + eps
  cos = np.sum((a / na[:, None]) * (b / nb[:, None]), axis=-1)
  keep = ~((na < 0.01) & (nb < 0.01))
  if not keep.any():
    return 1.0
  return float(np.mean(cos[keep] > SIMILAR_PATCH))


def detect_key_frames(frames: np.ndarray) -> list[int]:
  """frames: uint8 [N, H, W, 3] RGB -> per frame 0 (key) or 1 (intermediate)."""
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3:
    raise ValueError(f"frames must be [N, H, W, 3] RGB, got shape {frames.shape}")
  n, h, w = frames.shape[:3]
  if n == 0:
    return []
  rh, rw = smart_resize(h, w, KI_PATCH, KI_MIN_PIXELS, KI_MAX_PIXELS)
  small = resize_antialiased(frames, rh, rw)
  types = [INTERMEDIATE] * n
  types[0] = KEY
  key = _hsv_patches(small[0])
  for i in range(1, n):
    cur = _hsv_patches(small[i])
    if frame_similarity(key, cur) < MIN_FRAME_SIMILARITY:
      types[i] = KEY
      key = cur
  return types
