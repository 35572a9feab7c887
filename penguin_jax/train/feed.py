"""This process's data shards -> global batches on the device mesh.

The global batch of `global_batch` rows is cut into `num_shards` data shards (a fixed
number, so that the global batches and an exact resume do not depend on how many
processes read them); each process reads its own shards with the Grain pipeline and
contributes their rows to the global arrays, which get the shapes, dtypes and shardings
of the training program's `abstract_batch`. The feed counts, from the batches read so far,
the samples each source gave (`counts`) and the samples skipped by reason (`skipped`, also
those of data worker processes: pipeline.py); `totals` sums both over every process, and
both are restored with the data state.

Phases (`data.phases`, data_pipelines/mixture.py): each phase is a mixture of sources
from its start step on; at a phase's start the feed opens that phase's pipelines, fresh,
seeded by the run's seed and the phase's index. The data state holds the phase and the
batches read, so a resume continues in the right phase at the right place.
"""
from __future__ import annotations

import collections
import dataclasses
import logging

import jax
import numpy as np

from data_pipelines import pipeline as pipe
from data_pipelines.errors import REASONS
from penguin_jax.train import data as data_lib
from penguin_jax.train.checkpoint import gather_json

log = logging.getLogger("train")


@dataclasses.dataclass(frozen=True)
class Phase:
  """A mixture read from step `start` on: sources (random-access), their names and weights."""
  start: int
  names: tuple
  sources: tuple
  weights: tuple

  def __str__(self):
    if len(self.sources) == 1:
      return repr(self.sources[0])
    return " + ".join(f"{s} x {w:g}" for s, w in zip(self.sources, self.weights))


class DataFeed:
  """`source`: a random-access source of records (a TFDS `Split`, a `records.JsonlSource`),
  or the run's data as `data.prepare` gives it: [(start step, [(name, source, weight)])].
  `one_pass`: read the data once, in order (evaluation): the last batch is filled up
  with empty rows (no labels, no segments), then `next` raises StopIteration."""

  def __init__(self, source, tokenizer, cfg, abstract_batch: dict, one_pass: bool = False):
    self.phases = ([Phase(start, *map(tuple, zip(*srcs))) for start, srcs in source]
                   if isinstance(source, list) else [Phase(0, ("data",), (source,), (1.0,))])
    self.tokenizer, self.cfg, self.one_pass = tokenizer, cfg, one_pass
    self.pid, self.nproc = jax.process_index(), jax.process_count()
    d = cfg.data
    self.num_shards = d.num_shards or self.nproc
    if self.num_shards % self.nproc or d.global_batch % self.num_shards:
      raise ValueError(f"config.data.num_shards={self.num_shards} must be a multiple of the "
                       f"{self.nproc} processes and divide global_batch={d.global_batch}")
    if d.global_batch % self.nproc:
      raise ValueError(f"config.data.global_batch={d.global_batch} must be a multiple of the "
                       f"{self.nproc} processes")
    self.rows = d.global_batch // self.num_shards
    per = self.num_shards // self.nproc
    self.shards = list(range(self.pid * per, (self.pid + 1) * per))
    self.skipped = collections.Counter()      # samples skipped by reason, in the batches read
    self.counts = collections.Counter()       # samples per source in the batches read (local)
    self.spec = abstract_batch
    self.batches = 0                          # batches read (= the training step)
    self._open(0)

  def _open(self, phase: int, reshuffle: int = 0):
    """This process's pipelines for phase `phase`, from its beginning (`reshuffle` > 0:
    in another order, seeded by it: `data.reshard`)."""
    self.phase = phase
    ph, cfg = self.phases[phase], self.cfg
    scfg, pcfg = data_lib.sample_config(cfg), data_lib.pipeline_config(cfg)
    src = ph.sources[0] if len(ph.sources) == 1 else list(zip(ph.sources, ph.weights))
    self.iters = [iter(pipe.make_dataset(src, self.tokenizer, scfg, pcfg, batch_size=self.rows,
                                         seed=cfg.seed + 1000 * phase + 7919 * reshuffle,
                                         shard_index=s,
                                         shard_count=self.num_shards, one_pass=self.one_pass,
                                         skipped=self.skipped if self.one_pass else None))
                  for s in self.shards]

  def _phase_at(self, batches: int) -> int:
    return max(i for i, p in enumerate(self.phases) if p.start <= batches)

  def next(self, poison: bool = False):
    """-> (global batch of jax.Arrays, this process's rows as NumPy). `poison`: NaN
    pixels (testing the non-finite path)."""
    phase = self._phase_at(self.batches)
    if phase != self.phase:
      self._open(phase)
    parts = [_next_or_none(it) for it in self.iters]
    if all(p is None for p in parts):
      raise StopIteration
    names = self.phases[self.phase].names
    for p in parts:
      if p is not None:
        for name, n in zip(names, np.asarray(p["data_sources"]).sum(0)):
          self.counts[name] += int(n)
        for reason, n in zip(REASONS, np.asarray(p["data_skipped"]).sum(0)):
          if n:
            self.skipped[reason] += int(n)
    parts = [_filled(p, self.rows, self.spec) for p in parts]
    local = {k: np.concatenate([p[k] for p in parts]).astype(s.dtype)
             for k, s in self.spec.items()}
    if poison:
      local["patches"] = local["patches"] * np.asarray(np.nan, local["patches"].dtype)
    batch = {k: jax.make_array_from_process_local_data(s.sharding, local[k], s.shape)
             for k, s in self.spec.items()}
    self.batches += 1
    return batch, local

  def describe(self) -> str:
    """The data, one phase per line after the first."""
    if len(self.phases) == 1:
      return str(self.phases[0])
    return "; ".join(f"from step {p.start}: {p}" for p in self.phases)

  def totals(self) -> tuple[dict, dict]:
    """({source name: samples in the batches read so far}, {reason: samples skipped so
    far}), each summed over every process (and its data worker processes: the skips ride
    in the batches): one collective, which every process calls at the same step."""
    sources, skipped = collections.Counter(), collections.Counter()
    for c in gather_json([{"sources": dict(self.counts), "skipped": dict(self.skipped)}]):
      sources.update(c["sources"])
      skipped.update(c["skipped"])
    return dict(sorted(sources.items())), dict(sorted(skipped.items()))

  def position(self) -> tuple:
    """Where this process's reading is (no gather), for `rewind`."""
    return (self.phase, self.batches, dict(self.counts), dict(self.skipped),
            [it.get_state() for it in self.iters])

  def rewind(self, position: tuple):
    """Back to `position`: a batch interrupted midway (SIGTERM while the pipeline was
    busy) is read again, whole, after a resume."""
    phase, self.batches, counts, skipped, states = position
    if phase != self.phase:
      self._open(phase)
    self.counts, self.skipped = collections.Counter(counts), collections.Counter(skipped)
    for it, s in zip(self.iters, states):
      it.set_state(s)

  def get_state(self) -> dict:
    """Iterator states of all shards (gathered from every process), the phase, the batches
    read, the samples per source and the skips by reason, for checkpoints."""
    sources, skipped = self.totals()
    return {"shards": gather_json([it.get_state() for it in self.iters]), "phase": self.phase,
            "batches": self.batches, "sources": sources, "skipped": skipped}

  def set_state(self, data_state: dict):
    phase = int(data_state.get("phase", 0))          # checkpoints before phases: one phase
    if phase >= len(self.phases):
      raise ValueError(f"the checkpoint is in data phase {phase}, this run has "
                       f"{len(self.phases)} (config.data.phases changed)")
    self.batches = int(data_state.get("batches", self.phases[phase].start))  # = the step
    # the totals of every process, kept once (on process 0), so that the sum stays right
    self.counts = collections.Counter(data_state.get("sources", {}) if self.pid == 0 else {})
    self.skipped = collections.Counter(data_state.get("skipped", {}) if self.pid == 0 else {})
    had = len(data_state["shards"])
    if had != self.num_shards:
      if not self.cfg.data.get("reshard", False):
        raise ValueError(f"the checkpoint has {had} data shards, this run {self.num_shards}: set "
                         f"config.data.num_shards={had} (or config.data.reshard=True: the data "
                         "order starts again from a new shuffle)")
      log.warning("config.data.reshard: the checkpoint has %d data shards, this run %d; the "
                  "data of phase %d starts again from a new shuffle at step %d (samples "
                  "already trained on may come again)", had, self.num_shards, phase, self.batches)
      self._open(phase, reshuffle=self.batches + 1)
      return
    if phase != self.phase:
      self._open(phase)
    for it, s in zip(self.iters, self.shards):
      it.set_state(data_state["shards"][s])


def _next_or_none(it):
  try:
    return next(it)
  except StopIteration:
    return None


def _filled(part, rows: int, spec: dict) -> dict:
  """A shard's batch with `rows` rows: the rows it has, then empty ones (segment 0, no
  labels, visual tokens dropped)."""
  have = 0 if part is None else len(part["input_ids"])
  if have == rows:
    return part
  out = {}
  for k, s in spec.items():
    fill = {"labels": pipe.IGNORE_INDEX,
            "visual_positions": spec["input_ids"].shape[1]}.get(k, 0)   # the drop slot
    empty = np.full((rows - have, *s.shape[1:]), fill, s.dtype)
    out[k] = empty if part is None else np.concatenate([part[k].astype(s.dtype), empty])
  return out
