"""The frozen teacher of stage 1a's reconstruction losses: VL3-SigLIP-NaViT (docs/design.md §1.6).

VideoLLaMA3's vision encoder, as the release distils from it: a SigLIP-so400m-sized ViT
(Conv2d patch embedding, no absolute positions, 27 pre-norm LayerNorm blocks with biased
q/k/v/out projections and a tanh-GELU MLP, post-layernorm) with its own 2D RoPE
(`teacher_rope_2d`: a true [row, col, row, col] rotation, not the student's quirk), the
same per-frame bidirectional attention as the student and the same merge. Weights load
with `penguin_jax.from_pretrained` from transformers' `VideoLlama3VisionModel` layout or
the hub checkpoint's remote-code one (hf.py).

Frozen: stage 1a calls it outside the differentiated function, so it keeps no activations
for a backward pass and has no optimizer state. `scan_layers` stacks its blocks under
`layers/layers` (one traced block: a 27-layer teacher compiles as fast as a 1-layer one);
rematerialisation, which trades activation memory for recomputation in a backward pass,
has nothing to do here and is not offered.

Interface: the module is called as
    teacher(patches [b, P, C*14*14], patch_segment_ids [b, P], patch_positions [b, P, 2])
        -> per-patch features [b, P, teacher_hidden]
over the *same* packed patches as the student. `teacher_targets` merges them with the
student's merge plan and stops gradients, so student and teacher tokens line up 1:1.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from penguin_jax.model_config import TeacherConfig  # noqa: F401  (re-exported)
from penguin_jax.encoder import merge
from penguin_jax.layers import Linear, apply_rope, attention


def teacher_rope_2d(positions_2d, head_dim: int, theta: float):
  """VL3-SigLIP-NaViT's 2D RoPE (docs/design.md §1.6). positions_2d [b, s, 2] (row, col) ->
  cos, sin [b, s, head_dim] laid out [row * f, col * f, row * f, col * f] with
  f[k] = theta^(-2k / (head_dim/2)), k < head_dim/4; with rotate-half, channel i pairs with
  i + head_dim/2 under the *same* angle: a true rotation by the row angle on the first
  quarter's pairs and by the column angle on the second's. Float32."""
  half = head_dim // 2
  f = 1.0 / theta ** (jnp.arange(0, half, 2, dtype=jnp.float32) / half)   # [head_dim/4]
  row = positions_2d[..., 0].astype(jnp.float32)[..., None] * f
  col = positions_2d[..., 1].astype(jnp.float32)[..., None] * f
  ang = jnp.concatenate([row, col, row, col], axis=-1)                    # [b, s, head_dim]
  return jnp.cos(ang), jnp.sin(ang)


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
    return x + dense(c.hidden_size, "fc2", ("mlp", "teacher_embed"))(h), None


class _ViTLayers(nn.Module):
  """The `num_layers` blocks: params `layers_{i}`, or stacked on a leading `layers` axis
  under `layers` (nn.scan) with `cfg.scan_layers`."""
  cfg: TeacherConfig

  @nn.compact
  def __call__(self, x, cos, sin, seg):
    c = self.cfg
    if c.scan_layers:
      stack = nn.scan(_ViTBlock, variable_axes={"params": 0}, split_rngs={"params": True},
                      in_axes=(nn.broadcast, nn.broadcast, nn.broadcast), length=c.num_layers,
                      metadata_params={nn.PARTITION_NAME: "layers"})
      return stack(c, name="layers")(x, cos, sin, seg)[0]
    for i in range(c.num_layers):
      x, _ = _ViTBlock(c, name=f"layers_{i}")(x, cos, sin, seg)
    return x


class ViTTeacher(nn.Module):
  cfg: TeacherConfig

  @nn.compact
  def __call__(self, patches, patch_segment_ids, patch_positions):
    c = self.cfg
    x = Linear(c.hidden_size, ("patch", "teacher_embed"), use_bias=True, dtype=c.dtype,
               param_dtype=c.param_dtype, name="patch_embedding")(patches)
    cos, sin = teacher_rope_2d(patch_positions, c.head_dim, c.rope_theta)  # [b, P, head_dim]
    x = _ViTLayers(c, name="layers")(x, cos, sin, patch_segment_ids)       # [b, P, hidden]
    return nn.LayerNorm(c.layer_norm_eps, dtype=c.dtype, param_dtype=c.param_dtype,
                        name="post_layernorm")(x)


def teacher_targets(teacher: nn.Module, teacher_params, batch) -> jax.Array:
  """Merged, gradient-free teacher features [b, V, teacher_hidden] for a VLM batch."""
  feats = teacher.apply({"params": teacher_params}, batch["patches"],
                        batch["patch_segment_ids"], batch["patch_positions"])
  return jax.lax.stop_gradient(merge(feats, batch["merge_index"], batch["merge_weight"]))
