"""Penguin-Encoder: the vision encoder initialised from a text-only Qwen3 (docs/design.md §1.2).

patches [b, P, 3*14*14] -> patch embedding (the release's Conv2d(k=s=14), as a matmul on
flattened (channel, row, col) patches) -> Qwen3 layers made bidirectional, attention
restricted to each image / video frame (patch segment ids), 2D RoPE -> final norm.
`merge` then applies the bilinear merge resize planned on the host (`patches.merge_plan`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from penguin_jax.model_config import EncoderConfig
from penguin_jax.layers import LayerStack, Linear, RMSNorm, rope_2d


class PenguinEncoder(nn.Module):
  cfg: EncoderConfig

  @nn.compact
  def __call__(self, patches, patch_segment_ids, patch_positions):
    """patches [b, P, C*14*14]; patch_segment_ids [b, P] (one id per frame, 0 = padding);
    patch_positions [b, P, 2] (row, col). Returns final-normed features [b, P, e]."""
    cfg = self.cfg
    x = Linear(cfg.hidden_size, ("patch", "embed"), use_bias=True, dtype=cfg.dtype,
               param_dtype=cfg.param_dtype, name="patch_embedding",
               kernel_init=nn.initializers.lecun_normal())(patches)   # [b, P, e]
    cos, sin = rope_2d(patch_positions, cfg.head_dim, cfg.rope_theta)   # [b, P, d]
    x = LayerStack(cfg, causal=False, name="layers")(x, cos, sin, patch_segment_ids)
    return RMSNorm(cfg.rms_norm_eps, cfg.dtype, cfg.param_dtype, name="norm")(x)


def merge(features, merge_index, merge_weight):
  """Merge resize (docs/design.md §1.2) as a weighted gather.

  features [b, P, e]; merge_index, merge_weight [b, V, 4] from `patches.pack_items`.
  Returns [b, V, e]: for merge 1 a copy, for merge 2 the 2x2 average (exactly what the
  release's bilinear interpolate computes), padding slots zero.
  """
  gathered = jax.vmap(lambda f, i: f[i])(features, merge_index.astype(jnp.int32))
  # gathered: [b, V, 4, e]
  w = merge_weight.astype(jnp.float32)[..., None]
  return jnp.sum(gathered.astype(jnp.float32) * w, axis=2).astype(features.dtype)
