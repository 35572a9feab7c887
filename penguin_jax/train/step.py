"""The VLM training loss and step: encoder -> merge -> projector -> scatter -> Qwen3 ->
next-token cross-entropy on label tokens (+ reconstruction losses in stage 1a).

Gradient accumulation happens inside the step (as MaxText does): the step receives the
whole global batch, splits it into `grad_accum` micro-batches and scans over them. Every
micro-batch divides its losses by the *global* batch's counts (label tokens, sequences,
visual tokens, relation pairs: `loss_normalizers`, a function of the data alone), so the
summed loss and gradient are exactly those of one step over the global batch.
"""
from __future__ import annotations

import functools
from typing import Any, Optional

import flax
import jax
from flax import traverse_util
import jax.numpy as jnp
import optax
from flax import linen as nn

from penguin_jax import losses
from penguin_jax.losses import LossConfig
from penguin_jax.teacher import teacher_targets
from penguin_jax.vlm import PenguinVL

MODEL_INPUTS = ("input_ids", "segment_ids", "positions", "patches", "patch_segment_ids",
                "patch_positions", "merge_index", "merge_weight", "visual_positions")


@flax.struct.dataclass
class TrainState:
  step: jax.Array                 # optimizer steps taken (skipped ones included)
  params: Any
  opt_state: Any
  nonfinite_in_a_row: Any = 0     # consecutive steps whose update was skipped
  skipped_total: Any = 0          # all skipped updates (the trainer reads these on log steps)


def _segments(batch):
  seg = batch.get("segment_ids")
  return jnp.ones_like(batch["labels"]) if seg is None else seg


def loss_normalizers(batch, loss: LossConfig, reconstruction: bool = False,
                     relation_local_rows: Optional[int] = None) -> dict:
  """The denominators of the batch's losses (see the module docstring)."""
  out = {"lm": losses.lm_normalizer(batch["labels"], _segments(batch), loss.scope,
                                    loss.max_label_tokens or None)}
  if reconstruction:
    out["reconstruction"] = losses.reconstruction_normalizers(
        batch["token_segment_ids"], loss.relation_scope, relation_local_rows)
  return out


def vlm_loss(params, batch, *, model: PenguinVL, loss: LossConfig = LossConfig(),
             teacher_features=None, reconstruction_weight: float = 0.0,
             relation_local_rows: Optional[int] = None, normalizers: Optional[dict] = None,
             rngs: Optional[dict] = None):
  """Scalar loss and metrics for one batch (see vlm.py for the batch's arrays;
  `labels` [b, s] with -100 = ignore). `teacher_features` [b, V, teacher_e] turns on the
  reconstruction losses (docs/design.md §1.4), weighted by `reconstruction_weight`;
  `relation_local_rows`: the rows of one chip's local batch (relation scope "batch").
  `normalizers`: `loss_normalizers` of the global batch when this is a micro-batch."""
  n = normalizers or {}
  inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
  hidden, merged = model.apply({"params": params}, **inputs, return_hidden=True, rngs=rngs)
  kernel = model.apply({"params": params}, method=PenguinVL.head_kernel)      # [e, vocab]
  with jax.named_scope("lm_head_loss"):
    total, metrics = losses.lm_loss(hidden, batch["labels"], _segments(batch), kernel,
                                    scope=loss.scope, chunk_size=loss.chunk_size,
                                    max_label_tokens=loss.max_label_tokens or None,
                                    denominator=n.get("lm"))
  metrics = {"lm_loss": total, **metrics}
  if teacher_features is not None:
    student = model.apply({"params": params}, merged, method=PenguinVL.distill)
    with jax.named_scope("reconstruction_loss"):
      rec, parts = losses.reconstruction_loss(student, teacher_features,
                                              batch["token_segment_ids"],
                                              relation_scope=loss.relation_scope,
                                              normalizers=n.get("reconstruction"),
                                              local_rows=relation_local_rows)
    total = total + reconstruction_weight * rec
    metrics.update(parts)
  metrics["loss"] = total
  return total, metrics


def split_micro_batches(batch: dict, k: int) -> dict:
  """[rows, ...] -> [k, rows/k, ...]: micro-batch i takes rows i, i+k, i+2k, ... so each
  device keeps its own rows (no data moves; rows are split over devices in blocks)."""
  def split(x):
    rows = x.shape[0]
    if rows % k:
      raise ValueError(f"a batch of {rows} rows does not split into {k} micro-batches")
    y = jnp.swapaxes(x.reshape(rows // k, k, *x.shape[1:]), 0, 1)
    return nn.with_logical_constraint(y, (None, "batch") + (None,) * (x.ndim - 1))
  return jax.tree.map(split, batch)


def _replicated(tree):
  """Every device holds all of `tree` (one all-gather per array, here)."""
  return jax.tree.map(lambda x: nn.with_logical_constraint(x, (None,) * x.ndim), tree)


def _batch_losses(model: PenguinVL, loss: LossConfig, teacher, teacher_features,
                  reconstruction_weight, relation_local_rows):
  """What the train and eval steps share: -> (kwargs(batch, teacher_params, normalizers,
  step) -> `vlm_loss` keywords, the teacher's targets computed there, outside any
  differentiated function; global_normalizers(micro) -> `loss_normalizers` of the whole
  batch from its micro-batches [k, rows/k, ...])."""
  reconstruction = teacher is not None or teacher_features is not None
  weight = loss.reconstruction_weight if reconstruction_weight is None else reconstruction_weight

  def kwargs(batch, teacher_params, normalizers, step):
    kw = dict(model=model, loss=loss, normalizers=normalizers, teacher_features=teacher_features,
              relation_local_rows=relation_local_rows,
              reconstruction_weight=weight(step) if callable(weight) else weight)
    if teacher is not None:
      with jax.named_scope("teacher"):
        kw["teacher_features"] = teacher_targets(teacher, teacher_params, batch)
    return kw

  def global_normalizers(micro):
    per_micro = jax.vmap(lambda b: loss_normalizers(b, loss, reconstruction,
                                                    relation_local_rows))(micro)
    return jax.tree.map(lambda x: jnp.sum(x, axis=0), per_micro)
  return kwargs, global_normalizers


def make_train_step(model: PenguinVL, optimizer: optax.GradientTransformation,
                    loss: LossConfig = LossConfig(), *, teacher=None, teacher_features=None,
                    reconstruction_weight=None, relation_local_rows: Optional[int] = None,
                    grad_accum: int = 1, trainable=None, dropout_seed: Optional[int] = None,
                    opt_state_device=None):
  """(state, batch[, teacher_params]) -> (state, metrics); jit it with the shardings you
  need. `teacher`: a frozen teacher module (stage 1a); its merged features become the
  reconstruction targets (computed under stop_gradient, outside the differentiated
  function); with micro-batches its parameters are gathered once per step and kept
  whole on every chip for the loop (bf16 VL3-SigLIP-NaViT: 0.77 GiB), instead of being
  all-gathered again in every micro-batch. `grad_accum`: micro-batches per step (see the
  module docstring).
  `trainable`: the top-level modules to differentiate (default all), or a function of a
  parameter leaf's path (LoRA: a module's adapters, not its base); the other leaves are
  constants of the step (the LLM of stage 1 passes gradients through, but its weight
  gradients are never computed): the optimizer sees zeros for them and the update never
  touches them. A non-finite loss or gradient leaves params and optimizer state
  unchanged and sets metrics["skipped"] = 1.
  `dropout_seed`: the LoRA adapters' dropout, with an rng of (seed, step, micro-batch).
  `teacher_features`: fixed reconstruction targets instead of a teacher (tests).
  `reconstruction_weight`: a number or a schedule, step -> weight (default
  `loss.reconstruction_weight`; the program passes `loss.reconstruction_schedule`).
  `opt_state_device`: the optimizer state's shardings on the chips, where the state lives
  in host memory between steps (optim.offload_opt_state): fetched for the update, the new
  state written back by the caller's out_shardings."""
  loss_kwargs, global_normalizers = _batch_losses(model, loss, teacher, teacher_features,
                                                  reconstruction_weight, relation_local_rows)

  trains = _trains_fn(trainable)

  def loss_and_grads(params, batch, teacher_params, normalizers, step, micro=0):
    """(loss, metrics), gradients of the trainable leaves (a flat dict by path)."""
    kw = loss_kwargs(batch, teacher_params, normalizers, step)
    if dropout_seed is not None:
      kw["rngs"] = {"dropout": jax.random.fold_in(
          jax.random.fold_in(jax.random.PRNGKey(dropout_seed), step), micro)}
    fn = functools.partial(vlm_loss, **kw)
    train, frozen = _split(params, trains)
    frozen = jax.lax.stop_gradient(frozen)
    return jax.value_and_grad(lambda t, b: fn(_join(frozen, t), b), has_aux=True)(train, batch)

  def step(state: TrainState, batch, teacher_params=None):
    if grad_accum == 1:
      (loss, metrics), grads = loss_and_grads(state.params, batch, teacher_params, None, state.step)
    else:
      if teacher_params is not None:   # gathered once per step, not once per micro-batch
        with jax.named_scope("teacher"):
          teacher_params = _replicated(teacher_params)
      micro = split_micro_batches(batch, grad_accum)
      normalizers = global_normalizers(micro)

      def body(acc, xs):
        i, mb = xs
        (_, metrics), grads = loss_and_grads(state.params, mb, teacher_params, normalizers,
                                             state.step, i)
        return jax.tree.map(lambda a, g: a + g.astype(jnp.float32), acc, grads), metrics

      zero = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32),
                          _split(state.params, trains)[0])
      grads, metrics = jax.lax.scan(body, zero, (jnp.arange(grad_accum), micro))
      metrics = jax.tree.map(lambda m: jnp.sum(m, axis=0), metrics)  # shares of the global loss
      loss = metrics["loss"]
    with jax.named_scope("optimizer"):
      grad_norm = optax.tree.norm(grads)
      ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
      train, frozen = _split(state.params, trains)
      full = _join(jax.tree.map(jnp.zeros_like, frozen), grads)   # frozen: zeros (ignored)
      old_opt = state.opt_state
      if opt_state_device is not None:        # host -> chips for the update
        old_opt = jax.device_put(old_opt, opt_state_device)
      updates, opt_state = optimizer.update(full, old_opt, state.params)
      updates, _ = _split(updates, trains)
      params = _join(frozen, optax.apply_updates(train, updates))   # frozen leaves untouched
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
    skipped = (~ok).astype(jnp.int32)
    new = TrainState(state.step + 1, keep(params, state.params), keep(opt_state, old_opt),
                     nonfinite_in_a_row=(state.nonfinite_in_a_row + 1) * skipped,
                     skipped_total=state.skipped_total + skipped)
    metrics.update(grad_norm=grad_norm, skipped=skipped,
                   nonfinite_in_a_row=new.nonfinite_in_a_row, skipped_total=new.skipped_total)
    return new, metrics
  return step


def _trains_fn(trainable):
  """`trainable` (None: all; module names; or a function of a leaf's path) -> path -> bool."""
  if trainable is None:
    return lambda path: True
  if callable(trainable):
    return trainable
  return lambda path, names=frozenset(trainable): path[0] in names


def _split(params, trains) -> tuple[dict, dict]:
  """A nested parameter tree -> (trainable leaves, frozen leaves), flat dicts by path."""
  flat = traverse_util.flatten_dict(params)
  return ({p: x for p, x in flat.items() if trains(p)},
          {p: x for p, x in flat.items() if not trains(p)})


def _join(*flats) -> dict:
  """Flat dicts by path -> one nested tree."""
  return traverse_util.unflatten_dict({p: x for f in flats for p, x in f.items()})


def make_eval_step(model: PenguinVL, loss: LossConfig = LossConfig(), *, teacher=None,
                   reconstruction_weight=None, relation_local_rows: Optional[int] = None,
                   grad_accum: int = 1):
  """(params, batch, teacher_params, step) -> metrics: the losses of `vlm_loss` on a
  held-out batch, no gradient, in the train step's micro-batches (so that it fits where
  the step fits) and with the whole batch's normalizers, as the train step computes them."""
  loss_kwargs, global_normalizers = _batch_losses(model, loss, teacher, None,
                                                  reconstruction_weight, relation_local_rows)

  def metrics_of(params, batch, teacher_params, normalizers, step):
    return vlm_loss(params, batch, **loss_kwargs(batch, teacher_params, normalizers, step))[1]

  def eval_step(params, batch, teacher_params=None, step=0):
    if grad_accum == 1:
      return metrics_of(params, batch, teacher_params, None, step)
    micro = split_micro_batches(batch, grad_accum)
    normalizers = global_normalizers(micro)
    per = jax.lax.map(lambda mb: metrics_of(params, mb, teacher_params, normalizers, step), micro)
    return jax.tree.map(lambda m: jnp.sum(m, axis=0), per)   # shares of the batch's losses
  return eval_step
