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


def schedule(peak: float, total_steps: int, warmup_frac: float = 0.03,
             init_ratio: float = 0.1, end_ratio: float = 0.1) -> optax.Schedule:
  """Linear warm-up from init_ratio*peak to peak over warmup_frac of the steps, then cosine
  decay to end_ratio*peak."""
  warmup = max(int(round(total_steps * warmup_frac)), 1)
  return optax.warmup_cosine_decay_schedule(
      init_value=peak * init_ratio, peak_value=peak, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1), end_value=peak * end_ratio)


def module_labels(params) -> dict:
  """Each top-level module's name as the label of all its leaves."""
  return {k: jax.tree.map(lambda _: k, v) for k, v in params.items()}


def make_optimizer(params, learning_rates: Mapping[str, float], total_steps: int, *,
                   trainable=None, warmup_frac: float = 0.03, weight_decay: float = 0.0,
                   b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                   grad_clip: float | None = 1.0):
  """AdamW per module. `learning_rates`: peak LR per module name; `trainable`: module
  names to train (default: those with a learning rate). `params` may be abstract or
  boxed (only the top-level names are read). Returns (optimizer, schedules). Gradient
  accumulation is the train step's (`step.make_train_step(grad_accum=)`)."""
  names = list(params)
  trainable = set(trainable if trainable is not None else learning_rates)
  unknown = (set(learning_rates) | trainable) - set(names)
  if unknown:
    raise ValueError(f"learning rates / trainable name modules {sorted(unknown)} that the "
                     f"model does not have; modules: {names}")
  transforms, schedules = {}, {}
  for n in names:
    if n in trainable:
      if n not in learning_rates:
        raise ValueError(f"module {n!r} is trainable but has no learning rate")
      schedules[n] = schedule(learning_rates[n], total_steps, warmup_frac)
      transforms[n] = optax.adamw(schedules[n], b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    else:
      transforms[n] = optax.set_to_zero()
  opt = optax.multi_transform(transforms, module_labels)
  if grad_clip:
    opt = optax.chain(optax.clip_by_global_norm(grad_clip), opt)
  return opt, schedules
