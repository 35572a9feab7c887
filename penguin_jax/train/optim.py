"""Optimisation (docs/design.md §3): AdamW, weight decay 0, cosine decay with 3% warm-up starting at
0.1x peak and ending at 0.1x peak, per-module learning rates, frozen modules.

Modules are the top-level parameter groups of Penguin-VL: `vision_encoder`,
`vision_projector`, `llm`, `vision_distill_layer`. A frozen module gets
`optax.set_to_zero()` and so carries no optimizer state.
"""
from __future__ import annotations

from typing import Mapping

import jax
import optax
from flax import traverse_util


def schedule(peak: float, total_steps: int, warmup_frac: float = 0.03,
             init_ratio: float = 0.1, end_ratio: float = 0.1) -> optax.Schedule:
  """Linear warm-up from init_ratio*peak to peak over warmup_frac of the steps, then cosine
  decay to end_ratio*peak."""
  warmup = max(int(round(total_steps * warmup_frac)), 1)
  return optax.warmup_cosine_decay_schedule(
      init_value=peak * init_ratio, peak_value=peak, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1), end_value=peak * end_ratio)


FROZEN = "frozen"


def leaf_labels(params, trains) -> dict:
  """Each leaf's label: its top-level module's name where it trains (`trains(path)`),
  else "frozen" (no optimizer state). Boxed leaves (logical-axis metadata) are leaves."""
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({p: p[0] if trains(p) else FROZEN for p in flat})


def make_optimizer(params, learning_rates: Mapping[str, float], total_steps: int, *,
                   trainable=None, warmup_frac: float = 0.03, weight_decay: float = 0.0,
                   b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                   grad_clip: float | None = 1.0):
  """AdamW per module. `learning_rates`: peak LR per module name; `trainable`: the module
  names to train (default: those with a learning rate), or a function of a leaf's path
  (LoRA: only the adapters of a module train). `params` may be abstract or boxed (only
  the structure is read). Returns (optimizer, schedules). Gradient accumulation is the
  train step's (`step.make_train_step(grad_accum=)`)."""
  names = list(params)
  if trainable is None:
    trainable = set(learning_rates)
  trains = trainable if callable(trainable) else (lambda p, t=set(trainable): p[0] in t)
  modules = {p[0] for p in traverse_util.flatten_dict(params) if trains(p)}
  unknown = (set(learning_rates) | (set() if callable(trainable) else set(trainable))) - set(names)
  if unknown:
    raise ValueError(f"learning rates / trainable name modules {sorted(unknown)} that the "
                     f"model does not have; modules: {names}")
  transforms, schedules = {FROZEN: optax.set_to_zero()}, {}
  for n in sorted(modules):
    if n not in learning_rates:
      raise ValueError(f"module {n!r} is trainable but has no learning rate")
    schedules[n] = schedule(learning_rates[n], total_steps, warmup_frac)
    transforms[n] = optax.adamw(schedules[n], b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
  labels = lambda p: leaf_labels(p, trains)
  opt = optax.multi_transform(transforms, labels)
  if grad_clip:   # the global norm of the trainable leaves (a frozen int8 / nf4 base has none)
    trained = lambda p: jax.tree.map(lambda l: l != FROZEN, labels(p))
    opt = optax.chain(optax.masked(optax.clip_by_global_norm(grad_clip), trained), opt)
  return opt, schedules
