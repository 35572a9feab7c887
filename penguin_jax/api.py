"""`encode_images`: the release's calling convention for the vision encoder."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from penguin_jax.encoder import PenguinEncoder, merge
from penguin_jax.patches import pack_items


@functools.partial(jax.jit, static_argnums=0)
def _encode(model, params, patches, seg, pos, index, weight):
  feats = model.apply({"params": params}, patches, seg, pos)
  return merge(feats, index, weight)


def encode_images(model: PenguinEncoder, params, pixel_values, grid_sizes, merge_sizes):
  """pixel_values [N, C*14*14] in the release's patch order; grid_sizes [n, 3] (t, h, w)
  in patches; merge_sizes [n]. Returns merged features [sum t*h*w/m^2, hidden] (NumPy),
  as the release's `PenguinVLVisionEncoderModel.forward`. The teacher (`ViTTeacher`,
  VL3-SigLIP-NaViT) takes the same call and returns its merged features, as
  transformers' `VideoLlama3VisionModel.forward`."""
  pixel_values = np.asarray(pixel_values, np.float32)
  grid_sizes = np.asarray(grid_sizes).reshape(-1, 3)
  merge_sizes = np.asarray(merge_sizes).reshape(-1)
  if len(merge_sizes) != len(grid_sizes):
    raise ValueError(f"{len(grid_sizes)} grid sizes but {len(merge_sizes)} merge sizes")
  n = int(np.sum(np.prod(grid_sizes, axis=1)))
  if pixel_values.shape != (n, model.cfg.patch_dim):
    raise ValueError(f"pixel_values has shape {pixel_values.shape}; grid_sizes need "
                     f"({n}, {model.cfg.patch_dim})")
  lay = pack_items(grid_sizes.tolist(), merge_sizes.tolist())
  out = _encode(model, params, jnp.asarray(pixel_values)[None],
                jnp.asarray(lay["patch_segment_ids"])[None],
                jnp.asarray(lay["patch_positions"])[None],
                jnp.asarray(lay["merge_index"])[None], jnp.asarray(lay["merge_weight"])[None])
  return np.asarray(out[0])
