"""Model FLOPs per step and MFU.

FLOPs of a matmul-dominated network ~ 2 * params * tokens forward. Per module and token:
  trainable                       6 N  (forward 2N, backward to activations 2N, to weights 2N)
  frozen, gradients flow through  4 N  (the LLM of stage 1: the encoder's gradient passes it)
  frozen, no gradient             2 N  (the teacher)
plus attention scores: forward 4 * layers * heads * head_dim * context per token, times
3 (or 2 / 1 as above). Tokens: the LLM sees every slot of the batch (padding included,
static shapes); the encoder and teacher see every patch slot. Embedding tables are not
counted (a gather), the LM head is (as computed on `label_positions` slots).
MFU = model FLOPs per second / (devices * peak FLOP/s per device).
"""
from __future__ import annotations

import jax

# bf16 dense peak FLOP/s per device (vendor figures).
PEAK_FLOPS = {"TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
              "TPU v6 lite": 918e12, "TPU v6e": 918e12, "NVIDIA H100": 989e12,
              "NVIDIA H200": 989e12, "NVIDIA A100": 312e12}


def peak_flops_per_device(override: float = 0.0) -> float:
  if override:
    return override
  kind = jax.devices()[0].device_kind
  for k, v in PEAK_FLOPS.items():
    if kind.startswith(k):
      return v
  return 0.0  # unknown (e.g. CPU): MFU not reported


def _tower(params_count: int, layers: int, heads: int, head_dim: int, context: int, tokens: int,
           mult: int) -> float:
  attn = 4 * layers * heads * head_dim * context
  return mult / 2 * (2 * params_count + attn) * tokens


def step_flops(counts: dict, cfg, batch_shape: dict, trainable, teacher_cfg=None,
               teacher_params: int = 0, label_positions: int | None = None) -> float:
  """counts: parameter count per top-level module (embedding excluded for the LLM)."""
  b, s = batch_shape["tokens"]
  p = batch_shape["patches"][1]
  mult = lambda m: 6 if m in trainable else 4
  enc, llm = cfg.encoder, cfg.llm
  f = _tower(counts.get("vision_encoder", 0), enc.num_layers, enc.num_heads, enc.head_dim,
             p, b * p, mult("vision_encoder"))
  f += _tower(counts.get("vision_projector", 0), 0, 0, 0, 0, b * batch_shape["visual"][1],
              mult("vision_projector"))
  f += _tower(counts.get("llm_body", 0), llm.num_layers, llm.num_heads, llm.head_dim, s, b * s,
              mult("llm"))
  head = llm.hidden_size * llm.vocab_size
  f += mult("llm") * head * b * (label_positions or s)
  if teacher_cfg is not None:
    f += _tower(teacher_params, teacher_cfg.num_layers, teacher_cfg.num_heads,
                teacher_cfg.head_dim, p, b * p, 2)
  return float(f)
