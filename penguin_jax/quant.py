"""Quantized training (`config.model.quant`): the towers' linear layers in int8 or fp8.

The q/k/v/o and gate/up/down projections of the vision encoder and the LLM run their
matmuls with both operands quantized, in the forward pass and in both backward matmuls
(Qwix's quantized training, `QtProvider`: per-channel absmax scales computed on the fly,
no state; the weights stay float32 masters). The projector, the LM head, attention, norms
and the teacher stay in the compute dtype. `layers.Linear` calls `jax.lax.dot_general`,
the function Qwix intercepts.

  int8  TPU v5e / v6e run int8 matmuls at twice their bf16 rate (launch.aot counts the
        quantized FLOPs at `hardware.Chip.int8_flops`)
  fp8   float8_e4m3fn, for GPUs with fp8 units (H100 / H200)
"""
from __future__ import annotations

import qwix

QTYPES = {"none": None, "int8": "int8", "fp8": "float8_e4m3fn"}
# The linear layers of the encoder's and the LLM's Qwen3 layers, by module path
# (vision_encoder/.../self_attn/q_proj, llm/.../mlp/down_proj; scanned or not).
LINEARS = r"(vision_encoder|llm)/.*/(q|k|v|o|gate|up|down)_proj"


def check(quant: str) -> str:
  if quant not in QTYPES:
    raise ValueError(f"config.model.quant={quant!r}: use one of {', '.join(QTYPES)}")
  return quant


def rules(quant: str) -> list:
  qtype = QTYPES[check(quant)]
  return [qwix.QtRule(module_path=LINEARS, weight_qtype=qtype, act_qtype=qtype,
                      bwd_qtype=qtype)]


def quantize(model, quant: str):
  """`model` (a PenguinVL) whose __call__ runs the towers' linears quantized; the same
  parameters. "none": `model` itself."""
  if check(quant) == "none":
    return model
  return qwix.quantize_model(model, qwix.QtProvider(rules(quant)))
