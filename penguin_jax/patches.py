"""The release's patch layout, on the host (NumPy): what the encoder needs beside pixels.

For an item (an image, or a video of t frames) with a grid of (t, h, w) patches and merge
size m (docs/design.md §1.2):

* patch order is merge-block order: (t, h/m, w/m, m, m), each m x m block contiguous;
* every frame is its own attention segment;
* each patch has 2D (row, col) positions in its frame; frames share positions;
* after the encoder, features go back to raster order and are bilinearly resized
  (align_corners=False, no antialias) to (h/m, w/m): `merge_plan` expresses that resize as
  "output token j = sum_k weight[j, k] * patch[index[j, k]]" with at most 4 source patches,
  so the device does it with one static-shape gather for any mix of merge sizes.

These are pure functions of the grid; the data pipeline calls them per sample and pads.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

MAX_MERGE_TAPS = 4  # bilinear: at most 2 x 2 source patches per output token


def patch_positions(t: int, h: int, w: int, m: int) -> np.ndarray:
  """(row, col) of every patch of an item, in merge-block order: int32 [t*h*w, 2]."""
  _check_grid(h, w, m)
  rows = np.arange(h)[:, None].repeat(w, 1)
  cols = np.arange(w)[None, :].repeat(h, 0)
  def block_order(a):  # [h, w] -> (h/m, w/m, m, m) flattened
    return a.reshape(h // m, m, w // m, m).transpose(0, 2, 1, 3).reshape(-1)
  pos = np.stack([block_order(rows), block_order(cols)], axis=-1)
  return np.tile(pos, (t, 1)).astype(np.int32)


def raster_to_block_index(h: int, w: int, m: int) -> np.ndarray:
  """[h, w] array: the merge-block-order index of the patch at raster (row, col)."""
  r = np.arange(h)[:, None]
  c = np.arange(w)[None, :]
  return ((r // m) * (w // m) + c // m) * (m * m) + (r % m) * m + (c % m)


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out, in] weights of PyTorch's bilinear interpolate, align_corners=False, no
  antialias (docs/design.md §1.2: `jax.image.resize` would antialias when downscaling)."""
  scale = in_size / out_size
  mat = np.zeros((out_size, in_size), np.float64)
  for o in range(out_size):
    src = max((o + 0.5) * scale - 0.5, 0.0)
    i0 = min(int(np.floor(src)), in_size - 1)
    i1 = min(i0 + 1, in_size - 1)
    l1 = src - i0
    mat[o, i0] += 1.0 - l1
    mat[o, i1] += l1
  return mat


def merge_plan(t: int, h: int, w: int, m: int):
  """Merge resize of one item as a gather: (index int32 [n, 4], weight float32 [n, 4]),
  n = t*h*w/m^2 output tokens in raster order per frame; `index` counts patches from the
  item's first patch. Unused taps have weight 0 (and index 0)."""
  _check_grid(h, w, m)
  ho, wo = h // m, w // m
  wr, wc = bilinear_matrix(h, ho), bilinear_matrix(w, wo)
  blk = raster_to_block_index(h, w, m)
  index = np.zeros((t * ho * wo, MAX_MERGE_TAPS), np.int32)
  weight = np.zeros((t * ho * wo, MAX_MERGE_TAPS), np.float32)
  j = 0
  for f in range(t):
    for r in range(ho):
      rs = np.nonzero(wr[r])[0]
      for c in range(wo):
        cs = np.nonzero(wc[c])[0]
        k = 0
        for rr in rs:
          for cc in cs:
            index[j, k] = f * h * w + blk[rr, cc]
            weight[j, k] = wr[r, rr] * wc[c, cc]
            k += 1
        j += 1
  return index, weight


def _check_grid(h: int, w: int, m: int):
  if m < 1 or h % m or w % m:
    raise ValueError(f"grid {h}x{w} patches is not divisible by merge size {m}")


def pack_items(grid_sizes: Sequence[Sequence[int]], merge_sizes: Sequence[int],
               max_patches: int | None = None, max_tokens: int | None = None):
  """Layout of several items packed into one row of patches.

  Returns a dict of NumPy arrays (no batch axis):
    patch_segment_ids [P] int32   1, 2, ... one per frame; 0 = padding
    patch_positions   [P, 2] int32
    merge_index       [V, 4] int32 (into the row's patches)
    merge_weight      [V, 4] float32
    token_segment_ids [V] int32   frame segment of each output token; 0 = padding
  P = max_patches (default: exact), V = max_tokens (default: exact).
  """
  seg, pos, idx, wts = [], [], [], []
  offset, segment = 0, 0
  for (t, h, w), m in zip(grid_sizes, merge_sizes):
    t, h, w, m = int(t), int(h), int(w), int(m)
    n = t * h * w
    seg.append(np.repeat(np.arange(segment + 1, segment + t + 1, dtype=np.int32), h * w))
    segment += t
    pos.append(patch_positions(t, h, w, m))
    i, wt = merge_plan(t, h, w, m)
    idx.append(i + offset)
    wts.append(wt)
    offset += n
  seg = np.concatenate(seg) if seg else np.zeros((0,), np.int32)
  pos = np.concatenate(pos) if pos else np.zeros((0, 2), np.int32)
  idx = np.concatenate(idx) if idx else np.zeros((0, MAX_MERGE_TAPS), np.int32)
  wts = np.concatenate(wts) if wts else np.zeros((0, MAX_MERGE_TAPS), np.float32)
  n_p, n_v = len(seg), len(idx)
  P = n_p if max_patches is None else max_patches
  V = n_v if max_tokens is None else max_tokens
  if n_p > P or n_v > V:
    raise ValueError(f"{n_p} patches / {n_v} visual tokens do not fit in "
                     f"max_patches={P} / max_tokens={V}")
  return {
      "patch_segment_ids": np.pad(seg, (0, P - n_p)),
      "patch_positions": np.pad(pos, ((0, P - n_p), (0, 0))),
      "merge_index": np.pad(idx, ((0, V - n_v), (0, 0))),
      "merge_weight": np.pad(wts, ((0, V - n_v), (0, 0))),
      "token_segment_ids": np.pad(seg[idx[:, 0]] if n_v else idx[:, 0], (0, V - n_v)),
  }
