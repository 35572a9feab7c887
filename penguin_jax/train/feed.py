"""This process's data shards -> global batches on the device mesh.

The global batch of `global_batch` rows is cut into `num_shards` data shards (a fixed
number, so that the global batches and an exact resume do not depend on how many
processes read them); each process reads its own shards with the Grain pipeline and
contributes their rows to the global arrays, which get the shapes, dtypes and shardings
of the training program's `abstract_batch`. The feed owns the count of the samples its
pipelines skipped (`skipped`, by reason).
"""
from __future__ import annotations

import collections

import jax
import numpy as np

from data_pipelines import pipeline as pipe
from penguin_jax.train import data as data_lib
from penguin_jax.train.checkpoint import gather_json


class DataFeed:
  """`source`: a random-access source of records (a TFDS `Split`, a `records.JsonlSource`).
  `one_pass`: read the data once, in order (evaluation): the last batch is filled up
  with empty rows (no labels, no segments), then `next` raises StopIteration."""

  def __init__(self, source, tokenizer, cfg, abstract_batch: dict, one_pass: bool = False):
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
    self.skipped = collections.Counter()      # reasons of the samples skipped, all shards
    scfg, pcfg = data_lib.sample_config(cfg), data_lib.pipeline_config(cfg)
    self.iters = [iter(pipe.make_dataset(source, tokenizer, scfg, pcfg, batch_size=self.rows,
                                         seed=cfg.seed, shard_index=s,
                                         shard_count=self.num_shards, one_pass=one_pass,
                                         skipped=self.skipped))
                  for s in self.shards]
    self.spec = abstract_batch

  def next(self, poison: bool = False):
    """-> (global batch of jax.Arrays, this process's rows as NumPy). `poison`: NaN
    pixels (testing the non-finite path)."""
    parts = [_next_or_none(it) for it in self.iters]
    if all(p is None for p in parts):
      raise StopIteration
    parts = [_filled(p, self.rows, self.spec) for p in parts]
    local = {k: np.concatenate([p[k] for p in parts]).astype(s.dtype)
             for k, s in self.spec.items()}
    if poison:
      local["patches"] = local["patches"] * np.asarray(np.nan, local["patches"].dtype)
    batch = {k: jax.make_array_from_process_local_data(s.sharding, local[k], s.shape)
             for k, s in self.spec.items()}
    return batch, local

  def position(self) -> list:
    """This process's iterator states (no gather), for `rewind`."""
    return [it.get_state() for it in self.iters]

  def rewind(self, position: list):
    """Back to `position`: a batch interrupted midway (SIGTERM while the pipeline was
    busy) is read again, whole, after a resume."""
    for it, s in zip(self.iters, position):
      it.set_state(s)

  def get_state(self) -> dict:
    """Iterator states of all shards (gathered from every process), for checkpoints."""
    return {"shards": gather_json([it.get_state() for it in self.iters])}

  def set_state(self, data_state: dict):
    if len(data_state["shards"]) != self.num_shards:
      raise ValueError(f"the checkpoint has {len(data_state['shards'])} data shards, this run "
                       f"{self.num_shards}: set config.data.num_shards={len(data_state['shards'])}")
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
