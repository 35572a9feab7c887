"""Training output: a console line every `log_every` steps, WORKDIR/metrics.jsonl and
TensorBoard events (process 0 writes files), and the profiler window.

Throughput and MFU count what the steps since the last log line actually processed:
tokens, visual tokens and, for the FLOPs, the attention pairs of the packed rows
(`flops.segment_pairs`). The train step is compiled before the loop, so no figure holds
compile time. `goodput`: the fraction of wall time since the process started spent in
training steps, i.e. not in start-up (setup, restore, compile), not waiting for data on
the host and not blocked on checkpoint writes. `data_skipped`: samples the pipelines
skipped so far, by reason (every process's and its data workers': counted from the
batches trained on, data_pipelines/pipeline.py). `data_sources`: samples each
source gave to the batches trained on so far (all processes; per mixture source,
data_pipelines/mixture.py)."""
from __future__ import annotations

import json
import logging
import os
import sys
import time

import jax
import numpy as np
from etils import epath

from penguin_jax.train import flops as flops_lib, workdir as workdir_lib

log = logging.getLogger("train")


def _summary_writer():
  """tensorboardX's SummaryWriter, imported here (not at the top) without the PyTorch it
  tries to import at start when PyTorch is installed (2 s per training process, and
  unused: we log floats)."""
  if "torch" in sys.modules:
    from tensorboardX import SummaryWriter  # here: see the docstring
    return SummaryWriter
  sys.modules["torch"] = None               # `import torch` raises ImportError: skipped
  try:
    from tensorboardX import SummaryWriter  # here: see the docstring
  finally:
    del sys.modules["torch"]                # a later `import torch` works as ever
  return SummaryWriter


class MetricsWriter:

  def __init__(self, workdir: str, program, *, process_index: int, process_count: int,
               device_count: int, device_kind: str, t_start: float, totals=None):
    self.program, self.nproc = program, process_count
    self.t_start, self.waiting = t_start, 0.0
    # -> ({source: samples}, {reason: skipped}) of all processes; a collective (DataFeed.totals)
    self.totals = totals
    self.total_steps = program.cfg.total_steps
    self.seq_len = program.cfg.data.seq_len
    self.peak = flops_lib.peak_flops_per_device(device_kind=device_kind) * device_count
    self.file = self.tb = None
    if process_index == 0:                  # local or remote WORKDIR (workdir.py)
      SummaryWriter = _summary_writer()
      root = epath.Path(workdir)
      self.file = workdir_lib.AppendFile(root / "metrics.jsonl")
      self.tb_dirs = workdir_lib.local_dir(root / "tensorboard")
      self.tb = SummaryWriter(self.tb_dirs[0])
    self._reset(time.time())
    self.t_loop = self.t_last               # the loop starts now: what came before is start-up

  def wait(self, seconds: float):
    """Time the loop spent outside training steps (data, checkpoint writes)."""
    self.waiting += seconds

  def _reset(self, t):
    self.t_last, self.steps = t, 0
    self.acc = {"tokens": 0, "visual": 0, "flops": 0.0}

  def count(self, local: dict):
    """Account one step's rows (this process's; scaled by the process count)."""
    enc = flops_lib.segment_pairs(local["patch_segment_ids"]) * self.nproc
    llm = flops_lib.segment_pairs(local["segment_ids"], causal=True) * self.nproc
    self.acc["flops"] += self.program.flops(encoder_pairs=enc, llm_pairs=llm)["model"]
    self.acc["tokens"] += int((local["segment_ids"] > 0).sum()) * self.nproc
    self.acc["visual"] += int((local["visual_positions"] < self.seq_len).sum()) * self.nproc
    self.steps += 1

  def write(self, step: int, m: dict, lr: dict):
    """One log line from the (fetched) metrics of the last step."""
    now = time.time()
    dt = max(now - self.t_last, 1e-9)
    sources, skipped = self.totals() if self.totals else ({}, {})
    skip = ("label_tokens", "dropped_label_tokens", "correct_tokens", "skipped",
            "nonfinite_in_a_row", "skipped_total")
    rec = {"step": step, **{k: float(v) for k, v in m.items() if k not in skip},
           "skipped": int(m["skipped"]), "skipped_total": int(m["skipped_total"]),
           "dropped_label_tokens": int(m["dropped_label_tokens"]), "lr": lr,
           "tokens_per_s": self.acc["tokens"] / dt, "visual_tokens_per_s": self.acc["visual"] / dt,
           "step_time_s": dt / max(self.steps, 1),
           "goodput": max(0.0, now - self.t_loop - self.waiting) / max(now - self.t_start, 1e-9),
           "data_skipped": skipped, "data_sources": sources}
    if "correct_tokens" in m:                   # per-token accuracy of the LM loss
      rec["accuracy"] = int(m["correct_tokens"]) / max(int(m["label_tokens"]), 1)
    eta = (self.total_steps - step) * rec["step_time_s"]
    if self.peak:
      rec["mfu"] = self.acc["flops"] / dt / self.peak
    self._reset(now)
    parts = " ".join(f"{k}={rec[k]:.4f}" for k in ("lm_loss", "amplitude", "direction", "relation")
                     if k in rec)
    skipped = sum(rec["data_skipped"].values())
    mixed = rec["data_sources"] if len(rec["data_sources"]) > 1 else {}
    log.info("step %d/%d loss=%.4f %s lr=%s grad_norm=%.3f tokens/s=%.0f visual/s=%.0f "
             "step_time=%.2fs%s goodput=%.2f%s%s eta=%s", step, self.total_steps, rec["loss"],
             parts, ",".join(f"{k}:{v:.2e}" for k, v in lr.items()), rec["grad_norm"],
             rec["tokens_per_s"], rec["visual_tokens_per_s"], rec["step_time_s"],
             f" mfu={rec['mfu']:.3f}" if "mfu" in rec else "", rec["goodput"],
             f" data_skipped={skipped}" if skipped else "",
             " samples=" + ",".join(f"{k}:{v}" for k, v in mixed.items()) if mixed else "",
             _hms(eta))
    self._record(rec)
    return rec

  def write_eval(self, step: int, m: dict):
    """The held-out metrics of step `step`: a console line, a metrics.jsonl record
    {"step", "eval": {...}} and TensorBoard's eval/*."""
    log.info("eval at step %d: %s", step, " ".join(f"{k}={v:.4f}" for k, v in m.items()))
    self._record({"step": step, "eval": m})

  def _record(self, rec: dict):
    """One metrics.jsonl line and its TensorBoard scalars (a dict value {k: v} becomes
    NAME/k: lr/<module>, data_skipped/<reason>, eval/<metric>); process 0 only."""
    if not self.file:
      return
    self.file.write(json.dumps(rec) + "\n")
    for k, v in rec.items():
      for kk, vv in (v.items() if isinstance(v, dict) else [(None, v)]):
        if k != "step" and np.isfinite(vv):
          self.tb.add_scalar(f"{k}/{kk}" if kk else k, vv, rec["step"])
    self.tb.flush()
    workdir_lib.copy_up(*self.tb_dirs)

  def close(self):
    if self.file:
      self.file.close()
      self.tb.close()


def _hms(seconds: float) -> str:
  s = int(round(seconds))
  return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class Profiler:
  """`config.profile`: a jax.profiler trace of the `num_steps` steps after step
  `start_step`, into WORKDIR/profile (open with TensorBoard's profile plugin, or the .trace.json.gz in
  Perfetto). `before(step)` before a step runs, `after(step, out)` after it."""

  def __init__(self, cfg, workdir: str):
    self.start, self.n = int(cfg.start_step), int(cfg.num_steps)
    self.dir, self.on = os.fspath(epath.Path(workdir) / "profile"), False

  def before(self, step: int):
    if self.n > 0 and step == self.start:
      jax.profiler.start_trace(self.dir)
      self.on = True

  def after(self, step: int, out):
    if self.on and step >= self.start + self.n:
      jax.block_until_ready(out)              # the traced steps' device work, whole
      jax.profiler.stop_trace()
      self.on = False
      log.info("profile of steps %d-%d written to %s", self.start + 1, step, self.dir)

  def close(self):
    if self.on:
      jax.profiler.stop_trace()
      self.on = False
