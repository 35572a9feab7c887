"""Model FLOPs per step, by module and kind, and MFU.

A matmul with N weights costs 2N FLOPs per token forward. Per module and token:
  trainable                       6N  (forward 2N, backward to activations 2N, to weights 2N)
  frozen, gradients flow through  4N  (the LLM of stage 1: the encoder's gradient passes it)
  frozen, no gradient             2N  (the teacher)
Attention scores and values cost 4 * heads * head_dim FLOPs per query-key pair and layer
forward, times the same 3 / 2 / 1. Pairs are counted where the model attends:
  encoder  every image / video frame is its own bidirectional segment: sum over frames
           of patches^2 (`segment_pairs` of the batch; without a batch, the layout the
           AOT report assumes: rows filled with frames of `frame_patches` patches);
  LLM      causal within each packed sequence: sum over sequences of n(n+1)/2 (without
           a batch: one sequence per row, the usual causal s(s+1)/2).
Tokens: the LLM sees every slot of the row (static shapes), the encoder and teacher every
patch slot, the projector every visual-token slot, the LM head every label slot
(`loss.max_label_tokens`) or every position. Embedding lookups are not counted (gathers).

`hardware` adds what the step recomputes under the towers' remat policy
(layers.REMAT_POLICIES): the fractions of a layer's forward matmul and attention FLOPs that
its backward pass computes again (`recompute_fractions`: counted in the jaxpr of the
layer's gradient, not assumed; "full" recomputes the whole forward, x 4/3 for a trainable
tower, "minimal" none of its matmuls).
MFU = model FLOPs per second / (devices x peak FLOP/s per device).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from penguin_jax import layers
from penguin_jax.model_config import TransformerConfig
from penguin_jax.train import hardware


def peak_flops_per_device(override: float = 0.0, device_kind: str | None = None) -> float:
  """bf16 peak FLOP/s of one device (`hardware.py`'s table); 0.0 if unknown (CPU)."""
  if override:
    return override
  return hardware.peak_flops(device_kind or jax.devices()[0].device_kind)


def segment_pairs(segment_ids, causal: bool = False) -> int:
  """Query-key pairs that attention computes over packed rows [rows, n] (id 0 = padding,
  not counted): sum of n^2 per segment, or n(n+1)/2 when causal."""
  seg = np.asarray(segment_ids)
  total = 0
  for row in seg.reshape(-1, seg.shape[-1]):
    _, n = np.unique(row[row > 0], return_counts=True)
    n = n.astype(np.int64)
    total += int(np.sum(n * (n + 1) // 2 if causal else n * n))
  return total


def step_flops(counts: dict, cfg, teacher_cfg=None, *, rows: int, seq_len: int, patches: int,
               visual_tokens: int, trainable, adapted=(), label_positions: int | None = None,
               encoder_pairs: int | None = None, llm_pairs: int | None = None,
               frame_patches: int | None = None, attention: str = "xla") -> dict:
  """FLOPs of one step over `rows` rows. counts: parameters per top-level module
  (`llm_body` = the LLM without its embedding, `teacher`; `MODULE_adapters` for LoRA).
  `trainable`: the modules trained in full; `adapted`: those with LoRA adapters (their
  base frozen: 4N, the gradient passes through it; the adapters 6N). Returns {"encoder":
  {"matmul", "attention"}, "projector", "llm", "lm_head", "adapters", "teacher": {...},
  "model": total, "recompute", "hardware": total with remat recompute, "tower_linears":
  the encoder's and LLM's linear-layer FLOPs with their recompute}. `attention`: the
  implementation the step uses (layers.resolve_attention), for the recompute."""
  enc, llm = cfg.encoder, cfg.llm
  if encoder_pairs is None:
    n = max(1, min(frame_patches or patches, patches))
    encoder_pairs = rows * (patches // n * n * n + (patches % n) ** 2)
  if llm_pairs is None:
    llm_pairs = rows * seq_len * (seq_len + 1) // 2
  attn = lambda c, pairs: 4 * c.num_layers * c.num_heads * c.head_dim * pairs  # forward

  # 3: trains; 2: frozen but a trainable module upstream needs the gradient through it
  # (the LLM of stage 1); 1: forward only. Upstream order: encoder -> projector -> LLM.
  t, a = set(trainable), set(adapted)
  grad = lambda module, upstream: 3 if module in t else (2 if module in a or upstream else 1)
  m_enc = grad("vision_encoder", False)
  m_proj = grad("vision_projector", m_enc > 1)
  m_llm = grad("llm", m_proj > 1)
  out = {
      "encoder": {"matmul": m_enc * 2.0 * counts.get("vision_encoder", 0) * rows * patches,
                  "attention": m_enc * float(attn(enc, encoder_pairs))},
      "projector": {"matmul": m_proj * 2.0 * counts.get("vision_projector", 0) * rows * visual_tokens,
                    "attention": 0.0},
      "llm": {"matmul": m_llm * 2.0 * counts.get("llm_body", 0) * rows * seq_len,
              "attention": m_llm * float(attn(llm, llm_pairs))},
      "lm_head": {"matmul": m_llm * 2.0 * llm.hidden_size * llm.vocab_size * rows
                  * (label_positions or seq_len), "attention": 0.0},
  }
  tokens = {"vision_encoder": rows * patches, "vision_projector": rows * visual_tokens,
            "llm": rows * seq_len}
  if a:
    out["adapters"] = {"matmul": sum(3 * 2.0 * counts.get(f"{m}_adapters", 0) * tokens[m]
                                     for m in a), "attention": 0.0}
  if "vision_distill_layer" in counts:
    out["distill"] = {"matmul": 3 * 2.0 * counts["vision_distill_layer"] * rows * visual_tokens,
                      "attention": 0.0}
  if teacher_cfg is not None:
    tc = teacher_cfg
    out["teacher"] = {"matmul": 2.0 * counts.get("teacher", 0) * rows * patches,
                      "attention": float(attn(tc, encoder_pairs))}
  model = sum(v["matmul"] + v["attention"] for v in out.values())
  recompute, linears = 0.0, 0.0
  for name, c, m in (("encoder", enc, m_enc), ("llm", llm, m_llm)):
    linears += out[name]["matmul"]
    if m > 1:                                         # a backward pass runs through it
      f_mm, f_att = recompute_fractions(c, causal=name == "llm", attention=attention)
      recompute += (f_mm * out[name]["matmul"] + f_att * out[name]["attention"]) / m
      linears += f_mm * out[name]["matmul"] / m
  out["model"] = model
  out["recompute"] = recompute
  out["tower_linears"] = linears     # what model.quant runs quantized (recompute included)
  out["hardware"] = model + recompute
  return out


def _dot_flops(jaxpr) -> int:
  """FLOPs of the dot_generals in a jaxpr and the jaxprs inside it (2 x output elements x
  contracted size each)."""
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      (lhs_contract, _), _ = eqn.params["dimension_numbers"]
      shape = eqn.invars[0].aval.shape
      total += 2 * int(np.prod(eqn.outvars[0].aval.shape)) * int(
          np.prod([shape[i] for i in lhs_contract]))
    for sub in jax.core.jaxprs_in_params(eqn.params):
      total += _dot_flops(sub)
  return total


def recompute_fractions(tower, causal: bool = True,
                        attention: str = "xla") -> tuple[float, float]:
  """(matmul, attention): the fractions of one layer's forward matmul and attention
  FLOPs that its backward pass computes again under `tower.remat_policy`. Counted, not
  assumed: the dot FLOPs of the jaxpr of one layer's gradient with the policy minus
  without remat, at two sequence lengths (matmuls grow with the length, attention with
  its square), over the forward's, with XLA's attention. A fused attention kernel
  (`attention` "splash", "cudnn") keeps residuals that carry no name (its softmax
  statistics): under any remat policy its forward runs again (attention fraction 1)."""
  if tower.remat_policy == "none":
    return 0.0, 0.0
  sizes = {f.name: getattr(tower, f.name) for f in dataclasses.fields(tower)
           if f.name in ("hidden_size", "intermediate_size", "num_heads", "num_kv_heads",
                         "head_dim")}
  f_mm, f_att = _fractions(tuple(sorted(sizes.items())), tower.remat_policy, causal)
  return f_mm, (f_att if attention == "xla" else 1.0)


@functools.lru_cache(maxsize=None)
def _fractions(sizes: tuple, policy: str, causal: bool) -> tuple[float, float]:

  def grad_flops(remat: str, seq: int) -> tuple[int, int]:
    """(dot FLOPs of the gradient of one layer, of its forward) at length `seq`."""
    cfg = TransformerConfig(**dict(sizes), num_layers=1, remat_policy=remat, attention="xla")
    stack = layers.LayerStack(cfg, causal=causal)
    x = jax.ShapeDtypeStruct((1, seq, cfg.hidden_size), jnp.float32)
    rope = jax.ShapeDtypeStruct((1, seq, cfg.head_dim), jnp.float32)
    seg = jax.ShapeDtypeStruct((1, seq), jnp.int32)
    params = jax.eval_shape(lambda: stack.init(jax.random.key(0), jnp.zeros(x.shape),
                                               jnp.ones(rope.shape), jnp.zeros(rope.shape),
                                               jnp.ones(seg.shape, jnp.int32)))
    loss = lambda p, h, c, s, g: stack.apply(p, h, c, s, g).sum()
    backward = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(params, x, rope, rope, seg)
    forward = jax.make_jaxpr(loss)(params, x, rope, rope, seg)
    return _dot_flops(backward.jaxpr), _dot_flops(forward.jaxpr)

  # D(s) = a s + b s^2 (recomputed), F(s) = af s + bf s^2 (forward), from s and 2s
  s1, s2 = 16, 32
  (r1, f1), (r2, f2) = grad_flops(policy, s1), grad_flops(policy, s2)
  n1, n2 = grad_flops("none", s1)[0], grad_flops("none", s2)[0]
  d1, d2 = r1 - n1, r2 - n2
  split = lambda v1, v2: ((4 * v1 - v2) / (2 * s1), (v2 - 2 * v1) / (2 * s1 * s1))
  (a, b), (af, bf) = split(d1, d2), split(f1, f2)
  return a / af, b / bf
