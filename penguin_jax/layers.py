"""Building blocks shared by the Qwen3 decoder and the Penguin-Encoder.

* `RMSNorm`                   Qwen3's weight-only RMSNorm (docs/design.md §1.1).
* `rope_1d`, `rope_2d`        rotary tables: the LLM's 1D RoPE and the release's 2D variant
                              for patches (docs/design.md §1.2, reproduced exactly, quirk included).
* `attention`                 one function, three backends: "xla" (portable), "cudnn"
                              (`jax.nn.dot_product_attention`, flash on NVIDIA GPUs),
                              "splash" (Pallas splash attention with segment ids, TPU,
                              blocks between segments skipped); "auto" picks one for
                              the platform being compiled for.
* `Attention`, `MLP`, `DecoderLayer`, `LayerStack`
                              the Qwen3 layer (GQA, q/k norm, SwiGLU), causal for the LLM and
                              bidirectional for the encoder, optionally scanned and rematted.

Shapes use: b batch, s query length, t key length, h query heads, k kv heads, d head_dim,
e hidden (embed), m mlp.
"""
from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.ad_checkpoint import checkpoint_name
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

from penguin_jax import lora as lora_lib
from penguin_jax.model_config import TransformerConfig
from penguin_jax.sharding import per_device, target_platform

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

  `lora` (a `lora.LoraSpec`) adds the adapter: y += (alpha / r) dropout(x) A B with
  `lora_a` [in dims..., r] and `lora_b` [r, features...] (dropout only when the apply has
  a "dropout" rng: in training); with a quantized base (QLoRA) the kernel is stored as
  `kernel_q` / `kernel_scale` ([in, out] flattened; penguin_jax/lora.py) and dequantized
  for the product.
  """
  features: int | tuple
  kernel_axes: tuple
  axis: int | tuple = -1
  use_bias: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: object = default_kernel_init
  lora: Optional[lora_lib.LoraSpec] = None

  @nn.compact
  def __call__(self, x):
    feats = (self.features,) if isinstance(self.features, int) else tuple(self.features)
    n_in = 1 if isinstance(self.axis, int) else len(self.axis)
    axis = (self.axis,) if isinstance(self.axis, int) else tuple(self.axis)
    if sorted(a % x.ndim for a in axis) != list(range(x.ndim - n_in, x.ndim)):
      raise ValueError(f"{self.name}: Linear contracts trailing axes only, got {self.axis}")
    in_shape = tuple(x.shape[x.ndim - n_in:])
    shape = in_shape + feats
    if len(self.kernel_axes) != len(shape):
      raise ValueError(f"{self.name}: kernel {shape} needs {len(shape)} axis names, "
                       f"got {self.kernel_axes}")
    n_rows, n_out = int(np.prod(in_shape)), int(np.prod(feats))
    x2 = x.astype(self.dtype).reshape(-1, n_rows)
    spec = self.lora
    if spec is not None and spec.quant != "none":       # QLoRA: the frozen base, quantized
      q_shape, s_shape = lora_lib.quantized_shapes(n_rows, n_out, spec.quant)
      names = (self.kernel_axes[0], self.kernel_axes[n_in])
      q = self.param("kernel_q", _p(nn.initializers.zeros, names), q_shape,
                     jnp.int8 if spec.quant == "int8" else jnp.uint8)
      scale = self.param("kernel_scale", _p(nn.initializers.ones,
                                            (None if spec.quant == "int8" else names[0], names[1])),
                         s_shape, jnp.float32)
      kernel = lora_lib.dequantize(q, scale, spec.quant, self.dtype)
    else:
      kernel = self.param("kernel", _p(self.kernel_init, self.kernel_axes), shape,
                          self.param_dtype).astype(self.dtype).reshape(-1, n_out)
    y = jax.lax.dot_general(x2, kernel, (((1,), (0,)), ((), ())))   # (Qwix intercepts it)
    if spec is not None:
      a = self.param("lora_a", _p(_LORA_A_INIT(n_in), self.kernel_axes[:n_in] + ("lora_rank",)),
                     in_shape + (spec.rank,), jnp.float32)
      b = self.param("lora_b", _p(nn.initializers.zeros, ("lora_rank",) + self.kernel_axes[n_in:]),
                     (spec.rank,) + feats, jnp.float32)
      h = x2
      if spec.dropout > 0 and self.has_rng("dropout"):
        h = nn.Dropout(spec.dropout, deterministic=False)(h)
      y = y + (h @ a.reshape(n_rows, spec.rank).astype(self.dtype)) @ \
          (b.reshape(spec.rank, n_out) * spec.scale).astype(self.dtype)
    y = y.reshape(x.shape[:x.ndim - n_in] + feats)
    if self.use_bias:
      bias = self.param("bias", _p(nn.initializers.zeros, self.kernel_axes[n_in:]),
                        feats, self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y


# PEFT's lora_A init (kaiming_uniform, a = sqrt(5)): uniform in +-1/sqrt(fan_in), fan_in
# the product of the contracted dims.
_LORA_A_INIT = lambda n_in: nn.initializers.variance_scaling(
    1 / 3, "fan_in", "uniform", in_axis=tuple(range(n_in)), out_axis=-1)


# --------------------------------------------------------------------------- RoPE
def inv_freq(head_dim: int, theta: float) -> jnp.ndarray:
  """inv_freq[i] = theta^(-2i/head_dim), i < head_dim/2 (docs/design.md §1.1)."""
  return 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))


def rope_1d(positions, head_dim: int, theta: float):
  """cos, sin tables [b, s, d] for integer positions [b, s] (rotate-half layout)."""
  ang = positions.astype(jnp.float32)[..., None] * inv_freq(head_dim, theta)  # [b, s, d/2]
  ang = jnp.concatenate([ang, ang], axis=-1)                                  # [b, s, d]
  return jnp.cos(ang), jnp.sin(ang)


def rope_2d(positions_2d, head_dim: int, theta: float):
  """The release's 2D RoPE for patches (docs/design.md §1.2), reproduced exactly.

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
  impl = "cudnn" if target_platform() == "gpu" else None
  return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], implementation=impl)


def segment_block_overlap(segment_ids, block: int):
  """[s] segment ids -> [s/block, s/block] bool: may query block i and key block j hold a
  pair of the same segment? (Self-attention over one packed row.)

  Block ranges of nonzero ids are compared, which never misses a pair (two blocks that
  share an id have overlapping ranges) and is exact when every segment is one contiguous
  run, as in packed rows. Padding (id 0) only keeps the diagonal block: each padding
  query still sees itself (finite output); padding outputs are ignored anyway.
  """
  n = segment_ids.shape[0] // block
  sb = segment_ids.reshape(n, block).astype(jnp.int32)
  lo = jnp.min(jnp.where(sb > 0, sb, jnp.iinfo(jnp.int32).max), axis=1)   # [n]
  hi = jnp.max(jnp.where(sb > 0, sb, 0), axis=1)                         # [n]
  overlap = (lo[:, None] <= hi[None, :]) & (lo[None, :] <= hi[:, None])
  return overlap | jnp.eye(n, dtype=bool)


def _skip_blocks(info, overlap, dkv: bool):
  """A splash MaskInfo with the blocks that `overlap` rules out turned off (block_mask 0:
  the kernel neither computes them nor, with data_next forward-filled, fetches them).
  Layout: fwd / dq info is [heads, q block, grid step] with data_next = kv block; dkv info
  is [heads, grid step, kv block] with data_next = q block."""
  if info is None or info.block_mask is None:
    return info
  bm = info.block_mask.astype(jnp.int32)
  dn = info.data_next.astype(jnp.int32)
  if dkv:
    axis, run = 1, overlap[dn, jnp.arange(bm.shape[2])[None, None, :]]
  else:
    axis, run = 2, overlap[jnp.arange(bm.shape[1])[None, :, None], dn]
  run = run & (bm > 0)
  pos = jax.lax.broadcasted_iota(jnp.int32, bm.shape, axis)
  last = jax.lax.cummax(jnp.where(run, pos, -1), axis=axis)           # last step that runs
  first = jnp.argmax(run, axis=axis, keepdims=True).astype(jnp.int32)
  src = jnp.where(last < 0, first, last)
  return info._replace(block_mask=jnp.where(run, bm, 0).astype(info.block_mask.dtype),
                       data_next=jnp.take_along_axis(dn, src, axis).astype(info.data_next.dtype))


def _splash_block(n: int, block_size: int):
  """The largest block of at most `block_size` (halving down to 128) that divides n; n
  itself when n <= block_size; None if there is none."""
  if n <= block_size:
    return n
  b = block_size
  while b >= 128:
    if n % b == 0:
      return b
    b //= 2
  return None


def _attention_splash(q, k, v, q_segment_ids, kv_segment_ids, causal, block_size):
  """Pallas splash attention (TPU) with segment ids; interpret mode when the code is not
  traced for a TPU (`sharding.target_platform`: an AOT compile for a TPU topology on a CPU
  host lowers the real kernel).

  Blocks are skipped where no query and key share a segment (`segment_block_overlap`,
  per row, from the segment ids): a packed row of images costs the sum over its images of
  (patches)^2, not (row length)^2, and packed text sequences likewise.
  GQA: one multi-query kernel per kv head (vmapped), as MaxText does.
  """
  b, s, h, d = q.shape
  t, kvh = k.shape[1], k.shape[2]
  g = h // kvh
  bq, bkv = _splash_block(s, block_size), _splash_block(t, block_size)
  if bq is None or bkv is None:
    raise ValueError(f"splash attention: sequence lengths ({s}, {t}) must be multiples of "
                     f"128 (or at most splash_block_size={block_size}); pad the batch")
  base = sm.CausalMask((s, t)) if causal else sm.FullMask((s, t))
  kernel = sk.make_splash_mqa(
      sm.MultiHeadMask([base] * g),
      block_sizes=sk.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv,
                                block_q_dkv=bq, block_kv_dkv=bkv, block_kv_dkv_compute=bkv,
                                block_q_dq=bq, block_kv_dq=bkv),
      head_shards=1, q_seq_shards=1, interpret=target_platform() != "tpu")
  qs = (q / np.sqrt(d)).astype(q.dtype)
  qs = qs.reshape(b, s, kvh, g, d).transpose(0, 2, 3, 1, 4)       # [b, k, g, s, d]
  ks = k.transpose(0, 2, 1, 3)                                       # [b, k, t, d]
  vs = v.transpose(0, 2, 1, 3)

  def one(qb, kb, vb, qseg, kvseg):  # qb [k, g, s, d], kb/vb [k, t, d]
    kern = kernel
    if s == t and bq == bkv:  # self-attention: skip the blocks between segments
      ov = segment_block_overlap(qseg, bq)
      kern = sk.SplashAttentionKernel(_skip_blocks(kernel.fwd_mask_info, ov, False),
                                      _skip_blocks(kernel.dq_mask_info, ov, False),
                                      _skip_blocks(kernel.dkv_mask_info, ov, True),
                                      **kernel.kwargs)
    seg = sk.SegmentIds(q=qseg, kv=kvseg)
    return jax.vmap(lambda qq, kk, vv: kern(qq, kk, vv, segment_ids=seg))(qb, kb, vb)

  out = jax.vmap(one)(qs, ks, vs, q_segment_ids.astype(jnp.int32),
                      kv_segment_ids.astype(jnp.int32))             # [b, k, g, s, d]
  return out.transpose(0, 3, 1, 2, 4).reshape(b, s, h, d)


def resolve_attention(implementation: str) -> str:
  """"auto" -> the backend for the platform being compiled for (`sharding.target_platform`):
  splash on TPU, cudnn on GPU, xla elsewhere. Other names are returned unchanged."""
  if implementation != "auto":
    return implementation
  return {"tpu": "splash", "gpu": "cudnn"}.get(target_platform(), "xla")


def attention(q, k, v, *, q_segment_ids, kv_segment_ids, causal: bool,
              implementation: str = "xla", q_offset=0, splash_block_size: int = 512):
  """Scaled dot-product attention with packed-row segments and GQA.

  q [b, s, h, d]; k, v [b, t, k, d]; segment ids [b, s] / [b, t] (0 = padding).
  Returns [b, s, h, d]. All backends compute the same function (tests check it).
  """
  implementation = resolve_attention(implementation)
  if implementation == "splash":  # (KV-cache decoding always asks for "xla")
    # A custom call cannot be partitioned by the compiler: run it per device, batch over
    # the `batch` rule's mesh axes, heads over the `act_heads` / `act_kv_heads` ones.
    fn = functools.partial(_attention_splash, causal=causal, block_size=splash_block_size)
    q_names = ("batch", "length", "act_heads", "kv")
    kv_names = ("batch", "length", "act_kv_heads", "kv")
    seg_names = ("batch", "length")
    return per_device(fn, (q_names, kv_names, kv_names, seg_names, seg_names), q_names)(
        q, k, v, q_segment_ids, kv_segment_ids)
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
                   "use 'auto', 'xla', 'cudnn' or 'splash'")


# --------------------------------------------------------------------------- modules
class Attention(nn.Module):
  """Qwen3 self-attention: GQA, no biases, per-head RMSNorm on q and k before RoPE."""
  cfg: TransformerConfig
  causal: bool = True
  decode: bool = False

  @nn.compact
  def __call__(self, x, cos, sin, segment_ids):
    cfg = self.cfg
    dense = functools.partial(Linear, dtype=cfg.dtype, param_dtype=cfg.param_dtype, lora=cfg.lora)
    q = dense((cfg.num_heads, cfg.head_dim), ("embed", "heads", "kv"), name="q_proj")(x)
    k = dense((cfg.num_kv_heads, cfg.head_dim), ("embed", "kv_heads", "kv"), name="k_proj")(x)
    v = dense((cfg.num_kv_heads, cfg.head_dim), ("embed", "kv_heads", "kv"), name="v_proj")(x)
    q, k, v = (checkpoint_name(t, "qkv_proj") for t in (q, k, v))  # remat: REMAT_POLICIES
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
      out = self._decode_attention(q, k, v, segment_ids)
    else:
      out = attention(q, k, v, q_segment_ids=segment_ids, kv_segment_ids=segment_ids,
                      causal=self.causal, implementation=cfg.attention,
                      splash_block_size=cfg.splash_block_size)
    out = nn.with_logical_constraint(out, ("batch", "length", "act_heads", "kv"))
    out = checkpoint_name(out, "context")                           # [b, s, h, d]
    out = dense(cfg.hidden_size, ("heads", "kv", "embed"), axis=(-2, -1), name="o_proj")(out)
    return checkpoint_name(out, "out_proj")                         # [b, s, embed]

  def _decode_attention(self, q, k, v, segment_ids):
    """KV-cache path: write the new keys/values (and their segment ids) at `cache_index`,
    attend causally to the cache. Segment id 0 marks left padding of a shorter prompt in
    a batch: no real token attends to it; slots not yet written are after every query.
    The cache's length is fixed when it is created (see generate.init_cache)."""
    initialized = self.has_variable("cache", "cached_key")
    ck = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
    cv = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
    cs = self.variable("cache", "cached_segment", jnp.zeros, q.shape[:2], jnp.int32)
    ci = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
    if not initialized:  # creating the cache (init): plain causal attention
      seg = jnp.ones(q.shape[:2], jnp.int32)
      return attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg, causal=True)
    idx = ci.value
    ck.value = jax.lax.dynamic_update_slice(ck.value, k.astype(ck.value.dtype), (0, idx, 0, 0))
    cv.value = jax.lax.dynamic_update_slice(cv.value, v.astype(cv.value.dtype), (0, idx, 0, 0))
    cs.value = jax.lax.dynamic_update_slice(cs.value, segment_ids.astype(jnp.int32), (0, idx))
    ci.value = idx + q.shape[1]
    return attention(q, ck.value, cv.value, q_segment_ids=segment_ids, kv_segment_ids=cs.value,
                     causal=True, q_offset=idx, implementation="xla")


class MLP(nn.Module):
  """SwiGLU: down(silu(gate(x)) * up(x))."""
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    dense = functools.partial(Linear, dtype=cfg.dtype, param_dtype=cfg.param_dtype, lora=cfg.lora)
    gate = checkpoint_name(dense(cfg.intermediate_size, ("embed", "mlp"), name="gate_proj")(x),
                           "mlp_in")                                # [b, s, mlp]
    up = checkpoint_name(dense(cfg.intermediate_size, ("embed", "mlp"), name="up_proj")(x),
                         "mlp_in")
    h = nn.with_logical_constraint(nn.silu(gate) * up, ("batch", "length", "act_mlp"))
    return checkpoint_name(dense(cfg.hidden_size, ("mlp", "embed"), name="down_proj")(h),
                           "mlp_out")                               # [b, s, embed]


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
    residual = ("batch", "length", "act_embed")
    x = checkpoint_name(nn.with_logical_constraint(x, residual), "layer_input")
    h = Attention(cfg, self.causal, self.decode, name="self_attn")(
        norm(name="input_layernorm")(x), cos, sin, segment_ids)
    x = nn.with_logical_constraint(x + h, residual)
    h = MLP(cfg, name="mlp")(norm(name="post_attention_layernorm")(x))
    return nn.with_logical_constraint(x + h, residual), None


# Gradient checkpointing of a layer (docs/design.md §4): what the forward keeps for the
# backward pass, by the names above (checkpoint_name); everything else is recomputed.
#   layer_input  the layer's input (a scanned stack keeps it per layer in any policy)
#   qkv_proj     q, k, v after their projections          context   attention's output
#   out_proj     o_proj's output                           mlp_in    gate and up outputs
#   mlp_out      down_proj's output
# A policy saves some names in device memory and offloads some to host memory (fetched
# back for the backward pass: transfers over the host link, counted by launch.aot).
# MaxText's names for the same choices: save_qkv_proj, save_out_proj, minimal, offloaded.
REMAT_NAMED = {                     # policy -> (saved names, offloaded names)
    "full": ((), ()),
    "offload": ((), ("layer_input",)),
    "save_qkv": (("qkv_proj",), ()),
    "save_attention": (("qkv_proj", "context", "out_proj"), ()),
    "minimal": (("qkv_proj", "context", "out_proj", "mlp_in"), ()),
    "offload_attention": ((), ("qkv_proj", "context", "out_proj")),
    "offload_minimal": ((), ("qkv_proj", "context", "out_proj", "mlp_in")),
}


def _named_policy(saved, offloaded):
  if not offloaded:
    return jax.checkpoint_policies.save_only_these_names(*saved)
  return jax.checkpoint_policies.save_and_offload_only_these_names(
      names_which_can_be_saved=list(saved), names_which_can_be_offloaded=list(offloaded),
      offload_src="device", offload_dst="pinned_host")


REMAT_POLICIES = {
    **{name: _named_policy(*names) for name, names in REMAT_NAMED.items()},
    # JAX's own: save every matmul output (with / without a batch dimension)
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}
REMAT_POLICIES["full"] = jax.checkpoint_policies.nothing_saveable


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
                        split_rngs={"params": True, "dropout": True},
                        in_axes=(nn.broadcast, nn.broadcast, nn.broadcast),
                        length=cfg.num_layers,
                        metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = scanned(cfg, self.causal, self.decode, name="layers")(x, cos, sin, segment_ids)
      return x
    for i in range(cfg.num_layers):
      x, _ = layer_cls(cfg, self.causal, self.decode, name=f"layers_{i}")(x, cos, sin, segment_ids)
    return x
