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

`hardware` adds what the step recomputes: with remat policy "full" or "offload" the
forward of the layer stacks runs again in the backward pass (x 4/3 for trainable towers;
"dots" policies save the matmuls and recompute little).
MFU = model FLOPs per second / (devices x peak FLOP/s per device).
"""
from __future__ import annotations

import jax
import numpy as np

from penguin_jax.train import hardware

RECOMPUTE_ALL = ("full", "offload")   # remat policies that save nothing inside a layer


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
               frame_patches: int | None = None) -> dict:
  """FLOPs of one step over `rows` rows. counts: parameters per top-level module
  (`llm_body` = the LLM without its embedding, `teacher`; `MODULE_adapters` for LoRA).
  `trainable`: the modules trained in full; `adapted`: those with LoRA adapters (their
  base frozen: 4N, the gradient passes through it; the adapters 6N). Returns {"encoder":
  {"matmul", "attention"}, "projector", "llm", "lm_head", "adapters", "teacher": {...},
  "model": total, "hardware": total with remat recompute}."""
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
  recompute = 0.0
  for name, c, m in (("encoder", enc, m_enc), ("llm", llm, m_llm)):
    if c.remat_policy in RECOMPUTE_ALL and m > 1:   # the layers' forward runs again
      recompute += (out[name]["matmul"] + out[name]["attention"]) / m
  out["model"] = model
  out["hardware"] = model + recompute
  return out
