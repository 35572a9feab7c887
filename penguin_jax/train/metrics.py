"""Training output: a console line every `log_every` steps, WORKDIR/metrics.jsonl and
TensorBoard events (process 0 writes files). Throughput and MFU count what the steps
since the last log line actually processed: tokens, visual tokens and, for the FLOPs,
the attention pairs of the packed rows (`flops.segment_pairs`)."""
from __future__ import annotations

import json
import logging
import os
import time

import numpy as np

from penguin_jax.train import flops as flops_lib

log = logging.getLogger("train")


class MetricsWriter:

  def __init__(self, workdir: str, program, *, process_index: int, process_count: int,
               device_count: int, device_kind: str):
    self.program, self.nproc = program, process_count
    self.seq_len = program.cfg.data.seq_len
    self.peak = flops_lib.peak_flops_per_device(device_kind=device_kind) * device_count
    self.file = self.tb = None
    if process_index == 0:
      from tensorboardX import SummaryWriter
      self.file = open(os.path.join(workdir, "metrics.jsonl"), "a")
      self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
    self._reset(time.time())

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
    skip = ("label_tokens", "dropped_label_tokens", "skipped", "nonfinite_in_a_row",
            "skipped_total")
    rec = {"step": step, **{k: float(v) for k, v in m.items() if k not in skip},
           "skipped": int(m["skipped"]), "skipped_total": int(m["skipped_total"]),
           "dropped_label_tokens": int(m["dropped_label_tokens"]), "lr": lr,
           "tokens_per_s": self.acc["tokens"] / dt, "visual_tokens_per_s": self.acc["visual"] / dt,
           "step_time_s": dt / max(self.steps, 1)}
    if self.peak:
      rec["mfu"] = self.acc["flops"] / dt / self.peak
    self._reset(now)
    parts = " ".join(f"{k}={rec[k]:.4f}" for k in ("lm_loss", "amplitude", "direction", "relation")
                     if k in rec)
    log.info("step %d loss=%.4f %s lr=%s grad_norm=%.3f tokens/s=%.0f visual/s=%.0f "
             "step_time=%.2fs%s", step, rec["loss"], parts,
             ",".join(f"{k}:{v:.2e}" for k, v in lr.items()), rec["grad_norm"],
             rec["tokens_per_s"], rec["visual_tokens_per_s"], rec["step_time_s"],
             f" mfu={rec['mfu']:.3f}" if "mfu" in rec else "")
    if self.file:
      self.file.write(json.dumps(rec) + "\n")
      self.file.flush()
      for k, v in rec.items():
        for kk, vv in (v.items() if isinstance(v, dict) else [(None, v)]):
          if k != "step" and np.isfinite(vv):
            self.tb.add_scalar(f"{k}/{kk}" if kk else k, vv, step)
      self.tb.flush()
    return rec

  def close(self):
    if self.file:
      self.file.close()
      self.tb.close()
