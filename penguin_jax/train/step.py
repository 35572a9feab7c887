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
from penguin_jax.teacher import teacher_targets
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


def make_train_step(model: PenguinVL, optimizer: optax.GradientTransformation, *,
                    teacher=None, **loss_kw):
  """(state, batch[, teacher_params]) -> (state, metrics); jit it with the shardings you
  need. `teacher`: a frozen teacher module (stage 1a); its merged features become the
  reconstruction targets. A non-finite loss or gradient leaves params and optimizer state
  unchanged and sets metrics["skipped"] = 1."""
  def step(state: TrainState, batch, teacher_params=None):
    kw = dict(loss_kw)
    if teacher is not None:
      kw["teacher_features"] = teacher_targets(teacher, teacher_params, batch)
    grad_fn = jax.value_and_grad(functools.partial(vlm_loss, model=model, **kw), has_aux=True)
    (loss, metrics), grads = grad_fn(state.params, batch)
    grad_norm = optax.tree.norm(grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
    metrics["grad_norm"] = grad_norm
    metrics["skipped"] = (~ok).astype(jnp.int32)
    return TrainState(state.step + 1,       # batches consumed, skipped ones included
                      keep(params, state.params), keep(opt_state, state.opt_state)), metrics
  return step
