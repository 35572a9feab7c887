"""Held-out loss: the run's own eval step (its losses, no gradient) over held-out batches.

* During training (`make_evaluator`, `config.eval`): every `eval.every` steps, the first
  `eval.batches` batches of the split `eval.split`, read by a fresh pipeline each time (the
  same batches every time; the training data's order and state are untouched). Several
  held-out sources (`eval.split="val,penguin_vl/video:val"`): each reported apart, its
  figures named SOURCE/metric.
* Once over a whole source (`held_out_loss`, `launch.eval`): one pass, the last batch
  filled with empty rows.

The figures (`eval_summary`): losses averaged over batches, token counts summed, and the
per-token `accuracy` (label tokens whose arg max is the label).
"""
from __future__ import annotations

import logging
import time

import jax

from penguin_jax.sharding import make_mesh
from penguin_jax.train import data as data_lib, program as program_lib
from penguin_jax.train.feed import DataFeed

log = logging.getLogger("train")


def eval_summary(total: dict, batches: int) -> dict:
  """Summed eval-step metrics of `batches` held-out batches (host values) -> the figures."""
  out = {k: int(v) if "tokens" in k else float(v) / batches for k, v in sorted(total.items())}
  out["accuracy"] = out.get("correct_tokens", 0) / max(out.get("label_tokens", 0), 1)
  return out


def make_evaluator(cfg, program, workdir: str, tokenizer):
  """-> evaluate(params, teacher_params, step) -> {metric: value} for `config.eval`."""
  sources = data_lib.eval_sources(cfg, workdir)
  ecfg = cfg.copy_and_resolve_references()
  ecfg.data.workers = 0                        # a few batches: no worker processes
  log.info("held-out loss every %d steps over %d batches of %s", cfg.eval.every,
           cfg.eval.batches, ", ".join(repr(s) for _, s in sources))

  def one(source, params, teacher_params, step):
    feed = DataFeed(source, tokenizer, ecfg, program.abstract_batch)
    total = None
    for _ in range(cfg.eval.batches):
      m = program.eval_step(params, feed.next()[0], teacher_params, step)
      total = m if total is None else jax.tree.map(lambda a, b: a + b, total, m)
    return eval_summary(jax.device_get(total), cfg.eval.batches)

  def evaluate(params, teacher_params, step):
    if len(sources) == 1:
      return one(sources[0][1], params, teacher_params, step)
    return {f"{name}/{k}": v for name, src in sources
            for k, v in one(src, params, teacher_params, step).items()}
  return evaluate


def held_out_loss(program, params, teacher, source, tokenizer, cfg, step: int, log_fn=print):
  """-> (figures, the samples skipped by reason): the eval step over one pass of `source`."""
  feed = DataFeed(source, tokenizer, cfg, program.abstract_batch, one_pass=True)
  total, batches, t = None, 0, time.perf_counter()
  with program.context():
    while True:
      try:
        batch, _ = feed.next()
      except StopIteration:
        break
      m = program.eval_step(params, batch, teacher, step)
      total = m if total is None else jax.tree.map(lambda a, b: a + b, total, m)
      batches += 1
  if not batches:
    raise ValueError("no held-out batch: every sample was skipped (named above)")
  out = {**eval_summary(jax.device_get(total), batches), "batches": batches}
  log_fn(f"held-out loss {out['loss']:.4f}, per-token accuracy {out['accuracy']:.4f} "
         f"({out['label_tokens']} label tokens, {batches} batches, "
         f"{time.perf_counter() - t:.1f} s)")
  return out, dict(feed.skipped)


def eval_program(run_cfg, image_token_id: int, fsdp: int = 1, tensor: int = 1):
  """A run's training program on this host's devices for evaluation: the run's shapes,
  `fsdp` x `tensor` model parallelism, data parallel over as many more devices as divide
  the run's global batch; no worker processes."""
  cfg = run_cfg.copy_and_resolve_references()
  cfg.data.workers = 0
  if cfg.model.remat_policy == "auto":  # no backward pass: nothing to choose
    cfg.model.remat_policy = "none"
  data = max(d for d in range(1, len(jax.devices()) // (fsdp * tensor) + 1)
             if cfg.data.global_batch % (d * fsdp) == 0)
  cfg.mesh.update(data=data, fsdp=fsdp, tensor=tensor)
  mesh = make_mesh(data, fsdp, tensor, devices=jax.devices()[:data * fsdp * tensor])
  return program_lib.build(cfg, mesh, image_token_id=image_token_id)
