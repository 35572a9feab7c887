"""The VLM training loss and step: encoder -> merge -> projector -> scatter -> Qwen3 ->
next-token cross-entropy on label tokens (+ reconstruction losses in stage 1a)."""
from __future__ import annotations

import functools
from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp
import optax

from penguin_jax import losses
from penguin_jax.vlm import PenguinVL

MODEL_INPUTS = ("input_ids", "segment_ids", "positions", "patches", "patch_segment_ids",
                "patch_positions", "merge_index", "merge_weight", "visual_positions")


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def vlm_loss(params, batch, *, model: PenguinVL, scope: str = "batch",
             max_label_tokens: Optional[int] = None, chunk_size: int = 1024,
             teacher_features=None, reconstruction_weight: float = 0.0,
             relation_scope: str = "image"):
  """Scalar loss and metrics for one batch (see vlm.py for the batch's arrays;
  `labels` [b, s] with -100 = ignore). `teacher_features` [b, V, teacher_e] turns on the
  reconstruction losses (DESIGN 1.4), weighted by `reconstruction_weight`."""
  inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
  hidden, merged = model.apply({"params": params}, **inputs, return_hidden=True)
  head = lambda h: model.apply({"params": params}, h, method=PenguinVL.logits)
  seg = batch.get("segment_ids")
  if seg is None:
    seg = jnp.ones_like(batch["labels"])
  loss, metrics = losses.lm_loss(hidden, batch["labels"], seg, head, scope=scope,
                                 chunk_size=chunk_size, max_label_tokens=max_label_tokens)
  metrics = {"lm_loss": loss, **metrics}
  if teacher_features is not None:
    student = model.apply({"params": params}, merged, method=PenguinVL.distill)
    tok_seg = batch["token_segment_ids"]
    rec, parts = losses.reconstruction_loss(student, teacher_features, tok_seg,
                                            relation_scope=relation_scope)
    loss = loss + reconstruction_weight * rec
    metrics.update(parts)
  metrics["loss"] = loss
  return loss, metrics


def make_train_step(model: PenguinVL, optimizer: optax.GradientTransformation, **loss_kw):
  """(state, batch) -> (state, metrics); jit it with the shardings you need."""
  def step(state: TrainState, batch):
    grad_fn = jax.value_and_grad(functools.partial(vlm_loss, model=model, **loss_kw),
                                 has_aux=True)
    (_, metrics), grads = grad_fn(state.params, batch)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics["grad_norm"] = optax.tree.norm(grads)
    return TrainState(state.step + 1, params, opt_state), metrics
  return step
