"""The frozen teacher vision encoder of stage 1a's reconstruction losses (DESIGN 1.4).

Interface: any Flax module called as
    teacher(patches [b, P, C*14*14], patch_segment_ids [b, P], patch_positions [b, P, 2])
        -> per-patch features [b, P, teacher_hidden]
over the *same* packed patches as the student. `teacher_targets` merges them with the
student's merge plan and stops gradients, so student and teacher tokens line up 1:1.

`ViTTeacher` is a SigLIP-style ViT (LayerNorm, biased attention, tanh-GELU MLP) with the
same per-frame bidirectional attention and 2D RoPE as the student; it stands in for the
release's VL3-SigLIP-NaViT (patch 14, hidden 1152), whose weight import is not written yet.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import linen as nn

from penguin_jax.encoder import merge
from penguin_jax.layers import Linear, apply_rope, attention, rope_2d


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
  hidden_size: int = 1152
  intermediate_size: int = 4304
  num_layers: int = 27
  num_heads: int = 16
  patch_size: int = 14
  num_channels: int = 3
  layer_norm_eps: float = 1e-6
  rope_theta: float = 10_000.0
  dtype: object = jnp.float32
  param_dtype: object = jnp.float32
  attention: str = "auto"           # layers.attention backend

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads


class _ViTBlock(nn.Module):
  cfg: TeacherConfig

  @nn.compact
  def __call__(self, x, cos, sin, seg):
    c = self.cfg
    ln = lambda name: nn.LayerNorm(c.layer_norm_eps, dtype=c.dtype, param_dtype=c.param_dtype, name=name)
    dense = lambda f, name, names, **kw: Linear(
        f, names, use_bias=True, dtype=c.dtype, param_dtype=c.param_dtype, name=name, **kw)
    h = ln("layer_norm1")(x)
    q = dense((c.num_heads, c.head_dim), "q_proj", ("teacher_embed", "heads", "kv"))(h)
    k = dense((c.num_heads, c.head_dim), "k_proj", ("teacher_embed", "heads", "kv"))(h)
    v = dense((c.num_heads, c.head_dim), "v_proj", ("teacher_embed", "heads", "kv"))(h)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    a = attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg, causal=False,
                  implementation=c.attention)
    x = x + dense(c.hidden_size, "out_proj", ("heads", "kv", "teacher_embed"), axis=(-2, -1))(a)
    h = ln("layer_norm2")(x)
    h = nn.gelu(dense(c.intermediate_size, "fc1", ("teacher_embed", "mlp"))(h), approximate=True)
    return x + dense(c.hidden_size, "fc2", ("mlp", "teacher_embed"))(h)


class ViTTeacher(nn.Module):
  cfg: TeacherConfig

  @nn.compact
  def __call__(self, patches, patch_segment_ids, patch_positions):
    c = self.cfg
    x = Linear(c.hidden_size, ("patch", "teacher_embed"), use_bias=True, dtype=c.dtype,
               param_dtype=c.param_dtype, name="patch_embedding")(patches)
    cos, sin = rope_2d(patch_positions, c.head_dim, c.rope_theta)
    for i in range(c.num_layers):
      x = _ViTBlock(c, name=f"layers_{i}")(x, cos, sin, patch_segment_ids)
    return nn.LayerNorm(c.layer_norm_eps, dtype=c.dtype, param_dtype=c.param_dtype,
                        name="post_layernorm")(x)


def teacher_targets(teacher: nn.Module, teacher_params, batch) -> jax.Array:
  """Merged, gradient-free teacher features [b, V, teacher_hidden] for a VLM batch."""
  feats = teacher.apply({"params": teacher_params}, batch["patches"],
                        batch["patch_segment_ids"], batch["patch_positions"])
  return jax.lax.stop_gradient(merge(feats, batch["merge_index"], batch["merge_weight"]))
