"""Building blocks shared by the Qwen3 decoder and the Penguin-Encoder.

* `RMSNorm`                   Qwen3's weight-only RMSNorm (DESIGN 1.1).
* `rope_1d`, `rope_2d`        rotary tables: the LLM's 1D RoPE and the release's 2D variant
                              for patches (DESIGN 1.2, reproduced exactly, quirk included).
* `attention`                 one function, three backends: "xla" (portable), "cudnn"
                              (`jax.nn.dot_product_attention`, flash on NVIDIA GPUs),
                              "splash" (Pallas splash attention with segment ids, TPU).
* `Attention`, `MLP`, `DecoderLayer`, `LayerStack`
                              the Qwen3 layer (GQA, q/k norm, SwiGLU), causal for the LLM and
                              bidirectional for the encoder, optionally scanned and rematted.

Shapes use: b batch, s query length, t key length, h query heads, k kv heads, d head_dim,
e hidden (embed), m mlp.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from penguin_jax.configs import TransformerConfig

Dtype = jnp.dtype
_NEG_INF = -0.7 * float(np.finfo(np.float32).max)  # finite: fully-masked (padding) rows stay finite

default_kernel_init = nn.initializers.normal(stddev=0.02)  # Qwen3 initializer_range


def _p(init, names):
  return nn.with_logical_partitioning(init, names)


class RMSNorm(nn.Module):
  """y = x / sqrt(mean(x^2) + eps) * weight, computed in float32 (Qwen3RMSNorm)."""
  eps: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  axis_name: str = "norm"

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", _p(nn.initializers.ones, (self.axis_name,)),
                       (x.shape[-1],), self.param_dtype)
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
    return scale.astype(self.dtype) * xf.astype(self.dtype)


class Linear(nn.Module):
  """y = x @ kernel (+ bias), contracting the trailing `axis` dims of x.

  Kernel shape = (contracted dims of x) + features, created at that shape so its logical
  axis names (`kernel_axes`, one per kernel dim) always match (flax's DenseGeneral builds
  a flattened kernel first). The bias takes the last len(features) names. The product is a
  plain 2D matmul ([tokens, in] @ [in, out]): XLA:CPU runs the backward pass of that form
  about twice as fast as a rank-3 dot_general; on TPU/GPU the reshapes are free.
  """
  features: int | tuple
  kernel_axes: tuple
  axis: int | tuple = -1
  use_bias: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: object = default_kernel_init

  @nn.compact
  def __call__(self, x):
    feats = (self.features,) if isinstance(self.features, int) else tuple(self.features)
    n_in = 1 if isinstance(self.axis, int) else len(self.axis)
    axis = (self.axis,) if isinstance(self.axis, int) else tuple(self.axis)
    if sorted(a % x.ndim for a in axis) != list(range(x.ndim - n_in, x.ndim)):
      raise ValueError(f"{self.name}: Linear contracts trailing axes only, got {self.axis}")
    in_shape = x.shape[x.ndim - n_in:]
    shape = tuple(in_shape) + feats
    if len(self.kernel_axes) != len(shape):
      raise ValueError(f"{self.name}: kernel {shape} needs {len(shape)} axis names, "
                       f"got {self.kernel_axes}")
    kernel = self.param("kernel", _p(self.kernel_init, self.kernel_axes), shape,
                        self.param_dtype).astype(self.dtype)
    n_out = int(np.prod(feats))
    y = x.astype(self.dtype).reshape(-1, int(np.prod(in_shape))) @ kernel.reshape(-1, n_out)
    y = y.reshape(x.shape[:x.ndim - n_in] + feats)
    if self.use_bias:
      bias = self.param("bias", _p(nn.initializers.zeros, self.kernel_axes[n_in:]),
                        feats, self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y


# --------------------------------------------------------------------------- RoPE
def inv_freq(head_dim: int, theta: float) -> jnp.ndarray:
  """inv_freq[i] = theta^(-2i/head_dim), i < head_dim/2 (DESIGN 1.1)."""
  return 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))


def rope_1d(positions, head_dim: int, theta: float):
  """cos, sin tables [b, s, d] for integer positions [b, s] (rotate-half layout)."""
  ang = positions.astype(jnp.float32)[..., None] * inv_freq(head_dim, theta)  # [b, s, d/2]
  ang = jnp.concatenate([ang, ang], axis=-1)                                  # [b, s, d]
  return jnp.cos(ang), jnp.sin(ang)


def rope_2d(positions_2d, head_dim: int, theta: float):
  """The release's 2D RoPE for patches (DESIGN 1.2), reproduced exactly.

  positions_2d: [b, s, 2] (row, col) of each patch. Returns cos, sin [b, s, d] with
  cos = [cos(row * f), cos(col * f)]: the first half of head_dim is driven by the row, the
  second half by the column, each with all d/2 frequencies. Used with the usual rotate-half
  formula this pairs channel i (row angle) with channel i + d/2 (column angle), which is not
  a true rotation when row != col. The released checkpoints were trained with it: keep it.
  """
  f = inv_freq(head_dim, theta)                                   # [d/2]
  row = positions_2d[..., 0].astype(jnp.float32)[..., None] * f   # [b, s, d/2]
  col = positions_2d[..., 1].astype(jnp.float32)[..., None] * f   # [b, s, d/2]
  ang = jnp.concatenate([row, col], axis=-1)                      # [b, s, d]
  return jnp.cos(ang), jnp.sin(ang)


def rotate_half(x):
  x1, x2 = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([-x2, x1], axis=-1)


def apply_rope(x, cos, sin):
  """x [b, s, heads, d]; cos, sin [b, s, d]. Rotation in float32, result in x.dtype."""
  cos = cos[:, :, None, :]
  sin = sin[:, :, None, :]
  xf = x.astype(jnp.float32)
  return (xf * cos + rotate_half(xf) * sin).astype(x.dtype)


# --------------------------------------------------------------------------- attention
def attention_mask(q_segment_ids, kv_segment_ids, causal: bool, q_offset=0):
  """Boolean mask [b, s, t]: same segment, and (if causal) key index <= query index.

  Segment ids are per token; 0 marks padding (padding attends to padding only, so its
  output is finite and ignored). `q_offset` shifts query indices (KV-cache decoding).
  """
  mask = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
  if causal:
    s, t = q_segment_ids.shape[1], kv_segment_ids.shape[1]
    q_idx = jnp.arange(s)[:, None] + q_offset
    kv_idx = jnp.arange(t)[None, :]
    mask = mask & (kv_idx <= q_idx)[None]
  return mask


# Causal block skipping of the xla path: query blocks of at least this many tokens, at
# most XLA_CAUSAL_MAX_BLOCKS of them (bounded program size at long sequence lengths).
XLA_CAUSAL_BLOCK = 128
XLA_CAUSAL_MAX_BLOCKS = 8


def _attention_xla(q, k, v, mask):
  """Plain einsum attention with GQA. q [b,s,h,d], k/v [b,t,k,d], mask [b,s,t].

  Queries of one kv group are laid out as one [g*s, d] matrix per (batch, kv head), so
  both products are batched 2D matmuls (about 20% faster on XLA:CPU than a 5D einsum).
  """
  b, s, h, d = q.shape
  t, kvh = k.shape[1], k.shape[2]
  g = h // kvh
  qt = (q * (1.0 / np.sqrt(d))).astype(q.dtype)
  qt = qt.reshape(b, s, kvh, g, d).transpose(0, 2, 3, 1, 4).reshape(b, kvh, g * s, d)
  kt, vt = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)         # [b, k, t, d]
  logits = jnp.einsum("bkqd,bktd->bkqt", qt, kt, preferred_element_type=jnp.float32)
  logits = logits.reshape(b, kvh, g, s, t)
  logits = jnp.where(mask[:, None, None], logits, _NEG_INF)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)           # [b, k, g, s, t]
  out = jnp.einsum("bkqt,bktd->bkqd", probs.reshape(b, kvh, g * s, t), vt)
  return out.reshape(b, kvh, g, s, d).transpose(0, 3, 1, 2, 4).reshape(b, s, h, d)


def _attention_cudnn(q, k, v, mask):
  """`jax.nn.dot_product_attention`: cuDNN flash attention on NVIDIA GPUs; elsewhere the
  same call runs JAX's own XLA implementation (that is what the CPU tests exercise)."""
  impl = "cudnn" if jax.default_backend() == "gpu" else None
  return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], implementation=impl)


def _attention_splash(q, k, v, q_segment_ids, kv_segment_ids, causal, block_size):
  """Pallas splash attention (TPU) with segment ids; interpret mode off-TPU (tests).

  GQA: one multi-query kernel per kv head (vmapped), as MaxText does.
  """
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
  b, s, h, d = q.shape
  t, kvh = k.shape[1], k.shape[2]
  g = h // kvh
  bq, bkv = min(block_size, s), min(block_size, t)
  if s % bq or t % bkv:
    raise ValueError(f"splash attention: sequence lengths ({s}, {t}) must be multiples of "
                     f"splash_block_size={block_size}; pad the batch or change the block size")
  base = sm.CausalMask((s, t)) if causal else sm.FullMask((s, t))
  kernel = sk.make_splash_mqa(
      sm.MultiHeadMask([base] * g),
      block_sizes=sk.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv,
                                block_q_dkv=bq, block_kv_dkv=bkv, block_kv_dkv_compute=bkv,
                                block_q_dq=bq, block_kv_dq=bkv),
      head_shards=1, q_seq_shards=1, interpret=jax.default_backend() != "tpu")
  qs = (q / np.sqrt(d)).astype(q.dtype)
  qs = qs.reshape(b, s, kvh, g, d).transpose(0, 2, 3, 1, 4)       # [b, k, g, s, d]
  ks = k.transpose(0, 2, 1, 3)                                       # [b, k, t, d]
  vs = v.transpose(0, 2, 1, 3)

  def one(qb, kb, vb, qseg, kvseg):  # qb [k, g, s, d], kb/vb [k, t, d]
    seg = sk.SegmentIds(q=qseg, kv=kvseg)
    return jax.vmap(lambda qq, kk, vv: kernel(qq, kk, vv, segment_ids=seg))(qb, kb, vb)

  out = jax.vmap(one)(qs, ks, vs, q_segment_ids.astype(jnp.int32),
                      kv_segment_ids.astype(jnp.int32))             # [b, k, g, s, d]
  return out.transpose(0, 3, 1, 2, 4).reshape(b, s, h, d)


def _per_shard(fn, q, k, v, q_segment_ids, kv_segment_ids):
  """Run a Pallas kernel per device under the active mesh (a custom call cannot be
  partitioned by the compiler): batch split over the `batch` rule's mesh axes, heads
  over the `act_heads` / `act_kv_heads` ones. Without a mesh: a plain call."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty:
    return fn(q, k, v, q_segment_ids, kv_segment_ids)
  spec = lambda names: jax.sharding.PartitionSpec(*nn.logical_to_mesh_axes(names))
  q_spec = spec(("batch", "length", "act_heads", "kv"))
  kv_spec = spec(("batch", "length", "act_kv_heads", "kv"))
  seg_spec = spec(("batch", "length"))
  return jax.shard_map(fn, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec, seg_spec, seg_spec),
                       out_specs=q_spec, check_vma=False)(q, k, v, q_segment_ids, kv_segment_ids)


def attention(q, k, v, *, q_segment_ids, kv_segment_ids, causal: bool,
              implementation: str = "xla", q_offset=0, splash_block_size: int = 512):
  """Scaled dot-product attention with packed-row segments and GQA.

  q [b, s, h, d]; k, v [b, t, k, d]; segment ids [b, s] / [b, t] (0 = padding).
  Returns [b, s, h, d]. All backends compute the same function (tests check it).
  """
  if implementation == "splash":  # (KV-cache decoding always asks for "xla")
    fn = functools.partial(_attention_splash, causal=causal, block_size=splash_block_size)
    return _per_shard(fn, q, k, v, q_segment_ids, kv_segment_ids)
  if implementation == "cudnn":
    return _attention_cudnn(q, k, v, attention_mask(q_segment_ids, kv_segment_ids, causal, q_offset))
  if implementation == "xla":
    s, t = q.shape[1], k.shape[1]
    c = max(XLA_CAUSAL_BLOCK, s // XLA_CAUSAL_MAX_BLOCKS)
    if causal and s == t and s % c == 0 and s > c and isinstance(q_offset, int) and q_offset == 0:
      # Causal block skipping: query block i only meets keys [0, (i+1)c); 4 blocks do 5/8
      # of the work, 8 blocks 9/16, with the same result.
      outs = []
      for i in range(s // c):
        qs, e = slice(i * c, (i + 1) * c), (i + 1) * c
        m = attention_mask(q_segment_ids[:, qs], kv_segment_ids[:, :e], True, q_offset=i * c)
        outs.append(_attention_xla(q[:, qs], k[:, :e], v[:, :e], m))
      return jnp.concatenate(outs, axis=1)
    return _attention_xla(q, k, v, attention_mask(q_segment_ids, kv_segment_ids, causal, q_offset))
  raise ValueError(f"unknown attention implementation {implementation!r}: "
                   "use 'xla', 'cudnn' or 'splash'")


# --------------------------------------------------------------------------- modules
class Attention(nn.Module):
  """Qwen3 self-attention: GQA, no biases, per-head RMSNorm on q and k before RoPE."""
  cfg: TransformerConfig
  causal: bool = True
  decode: bool = False

  @nn.compact
  def __call__(self, x, cos, sin, segment_ids):
    cfg = self.cfg
    dense = functools.partial(Linear, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    q = dense((cfg.num_heads, cfg.head_dim), ("embed", "heads", "kv"), name="q_proj")(x)
    k = dense((cfg.num_kv_heads, cfg.head_dim), ("embed", "kv_heads", "kv"), name="k_proj")(x)
    v = dense((cfg.num_kv_heads, cfg.head_dim), ("embed", "kv_heads", "kv"), name="v_proj")(x)
    norm = functools.partial(RMSNorm, eps=cfg.rms_norm_eps, dtype=cfg.dtype,
                             param_dtype=cfg.param_dtype)
    q = norm(name="q_norm")(q)                                      # [b, s, h, d]
    k = norm(name="k_norm")(k)                                      # [b, s, k, d]
    q = apply_rope(q, cos, sin)
    k = apply_rope(k, cos, sin)
    q = nn.with_logical_constraint(q, ("batch", "length", "act_heads", "kv"))
    k = nn.with_logical_constraint(k, ("batch", "length", "act_kv_heads", "kv"))
    v = nn.with_logical_constraint(v, ("batch", "length", "act_kv_heads", "kv"))

    if self.decode:
      out = self._decode_attention(q, k, v)
    else:
      out = attention(q, k, v, q_segment_ids=segment_ids, kv_segment_ids=segment_ids,
                      causal=self.causal, implementation=cfg.attention,
                      splash_block_size=cfg.splash_block_size)
    out = nn.with_logical_constraint(out, ("batch", "length", "act_heads", "kv"))
    return dense(cfg.hidden_size, ("heads", "kv", "embed"), axis=(-2, -1), name="o_proj")(out)

  def _decode_attention(self, q, k, v):
    """KV-cache path: write the new keys/values at `cache_index`, attend to the filled
    prefix. The cache's length is fixed when it is created (see generate.init_cache)."""
    initialized = self.has_variable("cache", "cached_key")
    ck = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
    cv = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
    ci = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
    if not initialized:  # creating the cache (init): plain causal attention
      seg = jnp.ones(q.shape[:2], jnp.int32)
      return attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg, causal=True)
    idx = ci.value
    s = q.shape[1]
    ck.value = jax.lax.dynamic_update_slice(ck.value, k.astype(ck.value.dtype), (0, idx, 0, 0))
    cv.value = jax.lax.dynamic_update_slice(cv.value, v.astype(cv.value.dtype), (0, idx, 0, 0))
    ci.value = idx + s
    b, t = ck.value.shape[:2]
    kv_valid = (jnp.arange(t)[None, :] < idx + s).astype(jnp.int32)
    kv_valid = jnp.broadcast_to(kv_valid, (b, t))
    q_seg = jnp.ones((b, s), jnp.int32)
    return attention(q, ck.value, cv.value, q_segment_ids=q_seg, kv_segment_ids=kv_valid,
                     causal=True, q_offset=idx, implementation="xla")


class MLP(nn.Module):
  """SwiGLU: down(silu(gate(x)) * up(x))."""
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    dense = functools.partial(Linear, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    gate = dense(cfg.intermediate_size, ("embed", "mlp"), name="gate_proj")(x)
    up = dense(cfg.intermediate_size, ("embed", "mlp"), name="up_proj")(x)
    h = nn.with_logical_constraint(nn.silu(gate) * up, ("batch", "length", "act_mlp"))
    return dense(cfg.hidden_size, ("mlp", "embed"), name="down_proj")(h)


class DecoderLayer(nn.Module):
  """Pre-norm Qwen3 layer. `causal=False` makes it the encoder's bidirectional layer.
  Returns (x, None) so the same class can be scanned."""
  cfg: TransformerConfig
  causal: bool = True
  decode: bool = False

  @nn.compact
  def __call__(self, x, cos, sin, segment_ids):
    cfg = self.cfg
    norm = functools.partial(RMSNorm, eps=cfg.rms_norm_eps, dtype=cfg.dtype,
                             param_dtype=cfg.param_dtype)
    x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))
    h = Attention(cfg, self.causal, self.decode, name="self_attn")(
        norm(name="input_layernorm")(x), cos, sin, segment_ids)
    x = x + h
    h = MLP(cfg, name="mlp")(norm(name="post_attention_layernorm")(x))
    return x + h, None


REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class LayerStack(nn.Module):
  """`num_layers` DecoderLayers: a Python loop (params `layers_{i}`) or `nn.scan`
  (params `layers`, with a leading `layers` axis), each optionally rematerialised."""
  cfg: TransformerConfig
  causal: bool = True
  decode: bool = False

  @nn.compact
  def __call__(self, x, cos, sin, segment_ids):
    cfg = self.cfg
    layer_cls = DecoderLayer
    if cfg.remat_policy != "none":
      if cfg.remat_policy not in REMAT_POLICIES:
        raise ValueError(f"remat_policy {cfg.remat_policy!r} not in "
                         f"{['none', *REMAT_POLICIES]}")
      layer_cls = nn.remat(DecoderLayer, policy=REMAT_POLICIES[cfg.remat_policy],
                           prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:
      scanned = nn.scan(layer_cls, variable_axes={"params": 0, "cache": 0},
                        split_rngs={"params": True},
                        in_axes=(nn.broadcast, nn.broadcast, nn.broadcast),
                        length=cfg.num_layers,
                        metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = scanned(cfg, self.causal, self.decode, name="layers")(x, cos, sin, segment_ids)
      return x
    for i in range(cfg.num_layers):
      x, _ = layer_cls(cfg, self.causal, self.decode, name=f"layers_{i}")(x, cos, sin, segment_ids)
    return x
