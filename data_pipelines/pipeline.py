"""The Grain pipeline: a random-access source of records -> packed, static-shape batches.

    record -> decode media -> chat format + labels -> image budget / TRA -> patches
    -> per-sample layout (2D positions, merge plan, where visual tokens go)  (sample.features)
    -> pack (Grain first-fit / best-fit: text, patches and visual tokens of one sample
       always in the same row) -> fix offsets -> batch

The source is a split of the TFDS dataset `penguin_vl` (`tfds_penguin.Split`, training),
any sequence of records (`records.JsonlSource`: a JSONL file scored as it is), or a
weighted mixture of sources (`mixture.py`: [(source, weight), ...]). A batch
(NumPy, every shape static; the row length is `SampleConfig.seq_len`):

    input_ids, labels, segment_ids, positions        [batch, seq_len]
    patches                                           [batch, max_patches, 588]
    patch_segment_ids                                 [batch, max_patches]   one id per frame
    patch_positions                                   [batch, max_patches, 2]
    merge_index, merge_weight                         [batch, max_visual, 4]
    visual_positions                                  [batch, max_visual]    seq_len = padding
    token_segment_ids                                 [batch, max_visual]    frame of each token
    data_sources                                      [batch, num_sources]   samples per source
    data_skipped                                      [batch, len(REASONS)]  skips by reason
                                                      (these two host-side: not fed to the model)

One pipeline reads shard `shard_index` of `shard_count` (every shard_count-th record);
`workers` > 0 decodes in worker processes; the iterator's `get_state()` / `set_state()`
restore the exact stream (orbax checkpoints it). A sample that cannot fit a row, that fails
to decode, or that its source could not give (`records.Skipped`: a damaged record, a
missing file) is skipped: counted by reason in the `skipped` counter of the process that
decoded it and logged the first `LOGGED_PER_REASON` times per reason (the run's log lines
carry the counts); its count also rides on the next usable sample of its shard
(`CarrySkips`) into the batch's `data_skipped`, so that the reader counts the skips of
worker processes too, each once, with the batches read. `max_skips_in_a_row` skips without
one usable sample stop the pipeline with `NoProgress` (one line saying why) instead of
skipping forever.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
from typing import NamedTuple, Optional

import grain
import grain.experimental as gx
import numpy as np
from absl import flags

from data_pipelines import mixture, sample as sample_lib
from data_pipelines.errors import REASONS, BadSample
from data_pipelines.records import Skipped
from penguin_jax.settings import setting

log = logging.getLogger(__name__)
IGNORE_INDEX = -100
LOGGED_PER_REASON = 5        # skip lines per reason; then only the counts (log lines, metrics)
WORKER_BUFFER = 2            # batches each worker process keeps ready
COUNT_BITS = 24              # a `skips` entry: reason index << COUNT_BITS | count


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """How samples fill rows: the packing settings (a run config's `data.*`; the row's
  length is `SampleConfig.seq_len`)."""
  max_patches: int = setting(8192, "14x14 patches per row (all its images and frames)")
  max_visual_tokens: int = setting(4096, "visual tokens per row, after merging")
  packing: str = setting("best_fit", "'first_fit' or 'best_fit' (Grain's packers)")
  packing_bins: int = setting(16, "rows being filled at once by the packer")
  workers: int = setting(0, "worker processes decoding samples (0: in the training process)")
  max_skips_in_a_row: int = setting(
      10_000, "skipped samples in a row (too long, undecodable) after which the run stops "
      "with one line saying why")


class NoProgress(ValueError):
  """The data cannot make a batch: every sample in a long run was skipped."""


def _first_index(seg: np.ndarray, n: int) -> np.ndarray:
  """[n + 1] first position of each segment id 0..n in a row (0 if absent)."""
  first = np.zeros(n + 1, np.int64)
  ids, pos = np.unique(seg, return_index=True)
  first[ids] = pos
  return first


def finalize_row(row: dict, seq_len: int, num_sources: int = 1) -> dict:
  """Packed row (sample-local indices) -> model row: offsets added, frame ids global;
  `data_sources`: the row's samples counted by their source (`mixture.SOURCE_KEY`)."""
  tseg, pseg, vseg = row["input_ids_segment_ids"], row["patches_segment_ids"], row["visual_positions_segment_ids"]
  n = int(max(tseg.max(initial=0), pseg.max(initial=0), vseg.max(initial=0)))
  first_tok = np.unique(tseg[tseg > 0], return_index=True)[1]     # a sample has >= 1 token
  per_source = np.bincount(row["source"][tseg > 0][first_tok], minlength=num_sources)
  tok_off = _first_index(tseg, n)
  patch_off = _first_index(pseg, n)
  frames_per = np.zeros(n + 1, np.int64)
  np.maximum.at(frames_per, pseg, row["patch_frame"])
  frame_off = np.concatenate([[0], np.cumsum(frames_per)])[:-1]       # by sample id
  valid_v = vseg > 0
  vis = np.where(valid_v, row["visual_positions"] + tok_off[vseg], seq_len)
  midx = np.where(valid_v[:, None], row["merge_index"] + patch_off[vseg][:, None], 0)
  pframe = np.where(pseg > 0, row["patch_frame"] + frame_off[pseg], 0)
  tframe = np.where(valid_v, row["token_frame"] + frame_off[vseg], 0)
  labels = np.where(tseg > 0, row["labels"], IGNORE_INDEX)
  carried = row["skips"][row["skips_segment_ids"] > 0]
  skipped = np.bincount(carried >> COUNT_BITS, weights=carried & ((1 << COUNT_BITS) - 1),
                        minlength=len(REASONS))
  return {
      "input_ids": row["input_ids"].astype(np.int32),
      "labels": labels.astype(np.int32),
      "segment_ids": tseg.astype(np.int32),
      "positions": row["input_ids_positions"].astype(np.int32),
      "patches": row["patches"].astype(np.float32),
      "patch_segment_ids": pframe.astype(np.int32),
      "patch_positions": row["patch_positions"].astype(np.int32),
      "merge_index": midx.astype(np.int32),
      "merge_weight": np.where(valid_v[:, None], row["merge_weight"], 0).astype(np.float32),
      "visual_positions": vis.astype(np.int32),
      "token_segment_ids": tframe.astype(np.int32),
      "data_sources": per_source[:num_sources].astype(np.int32),
      "data_skipped": skipped.astype(np.int32),
  }


class Skip(NamedTuple):
  """What `Featurize` gives for a skipped sample (its reason), for `CarrySkips`."""
  reason: str


class CarrySkips:
  """In record order (a sequential map after Featurize's parallel one): a `Skip` -> None,
  its count kept until the next usable sample, which carries one pending reason's count
  (`skips`: [index in errors.REASONS << COUNT_BITS | count] or []: at most one entry per
  sample, so never more than a row's tokens). In a one-pass read nothing is carried (the
  caller's `skipped` counter is exact there, and skips after the last sample would have
  no sample to ride on)."""

  def __init__(self, carry: bool):
    self.carry, self.pending = carry, collections.Counter()

  def __call__(self, f):
    if isinstance(f, Skip):
      if self.carry:
        self.pending[f.reason] += 1
      return None
    f["skips"] = np.zeros(0, np.int32)
    if self.pending:
      reason = next(iter(self.pending))
      n, cap = self.pending.pop(reason), (1 << COUNT_BITS) - 1
      if n > cap:                                   # the rest rides on the next sample
        self.pending[reason], n = n - cap, cap
      f["skips"] = np.array([REASONS.index(reason) << COUNT_BITS | n], np.int32)
    return f


class Featurize:
  """A record (or a source's `Skipped`) -> `sample.features`, or `Skip` for a sample to
  skip (counted by reason in `skipped`, logged the first few times per reason). Grain
  calls it from several threads; `CarrySkips` then puts the skips on the samples, in
  order."""

  def __init__(self, tokenizer, scfg: sample_lib.SampleConfig, pcfg: PipelineConfig,
               skipped: collections.Counter):
    self.tokenizer, self.scfg, self.pcfg, self.skipped = tokenizer, scfg, pcfg, skipped
    self.in_a_row = collections.Counter()    # reasons of the skips since the last good one

  def __call__(self, rec):
    if isinstance(rec, Skipped):
      return self._skip(rec.where, rec.reason, rec.detail)
    try:
      f = sample_lib.features(rec, self.tokenizer, self.scfg)
    except BadSample as e:
      return self._skip(e.sample_id if e.sample_id is not None else rec.get("id"), e.reason,
                        e.detail)
    c = self.pcfg
    for what, n, cap in [("patches", len(f["patches"]), c.max_patches),
                         ("visual tokens", len(f["merge_index"]), c.max_visual_tokens)]:
      if n > cap:
        return self._skip(rec.get("id"), "too_long", f"{n} {what} > {cap} per row")
    self.in_a_row.clear()
    f["source"] = np.full(len(f["input_ids"]), rec.get(mixture.SOURCE_KEY, 0), np.int32)
    return f

  def _skip(self, sample_id, reason: str, detail: str):
    self.skipped[reason] += 1
    self.in_a_row[reason] += 1
    if self.skipped[reason] <= LOGGED_PER_REASON:
      more = " (further skips for this reason are counted, not logged)" \
          if self.skipped[reason] == LOGGED_PER_REASON else ""
      log.warning("skip %s: %s%s%s", sample_id, reason, f" ({detail})" if detail else "", more)
    n = sum(self.in_a_row.values())
    if n >= self.pcfg.max_skips_in_a_row:
      s, c = self.scfg, self.pcfg
      reasons = ", ".join(f"{k} {v}" for k, v in self.in_a_row.most_common())
      hint = (f"raise data.seq_len ({s.seq_len}) / max_patches ({c.max_patches}) / "
              f"max_visual_tokens ({c.max_visual_tokens}) or filter the data"
              if "too_long" in self.in_a_row else "check the data")
      raise NoProgress(f"no usable sample in the last {n} ({reasons}): {hint}")
    return Skip(reason)


def make_dataset(source, tokenizer, scfg: sample_lib.SampleConfig, pcfg: PipelineConfig, *,
                 batch_size: int, seed: int = 0, shard_index: int = 0, shard_count: int = 1,
                 one_pass: bool = False, skipped: Optional[collections.Counter] = None):
  """A Grain IterDataset of packed batches (see the module docstring). `one_pass`: the
  records once, in order, the last batch smaller, decoded in this process (evaluation);
  else shuffled by `seed` and repeated forever, skips carried in the batches'
  `data_skipped`. `source`: a random-access source, or [(source, weight), ...] mixed by
  weight (`mixture.mixed`; not with `one_pass`). `skipped`: a counter of this process's
  skips (the caller's; with `one_pass` every skip, also those after the last usable
  sample, which no batch carries)."""
  if scfg.seq_len is None:
    raise ValueError("SampleConfig.seq_len is the row length: it must be set to pack rows")
  parts = list(source) if isinstance(source, (list, tuple)) else [(source, 1.0)]
  if one_pass:
    if len(parts) > 1:
      raise ValueError("one pass over a mixture: evaluate each source on its own")
    ds = grain.MapDataset.source(parts[0][0])
  else:
    ds = mixture.mixed([s for s, _ in parts], [w for _, w in parts], seed)
  ds = ds[shard_index::shard_count]                         # this shard's records
  featurize = Featurize(tokenizer, scfg, pcfg,
                        skipped if skipped is not None else collections.Counter())
  it = ds.map(featurize).to_iter_dataset().map(CarrySkips(carry=not one_pass))
  it = it.filter(lambda x: x is not None)
  V, P, S = pcfg.max_visual_tokens, pcfg.max_patches, scfg.seq_len
  lengths = {"input_ids": S, "labels": S, "patches": P, "patch_frame": P,
             "patch_positions": P, "merge_index": V, "merge_weight": V, "token_frame": V,
             "visual_positions": V, "source": S, "skips": S}
  packer = {"first_fit": gx.FirstFitPackIterDataset,
            "best_fit": gx.BestFitPackIterDataset}[pcfg.packing]
  it = packer(it, length_struct=lengths, num_packing_bins=pcfg.packing_bins, seed=seed,
              shuffle_bins=not one_pass)
  it = it.map(lambda row: finalize_row(row, S, len(parts)))
  it = it.batch(batch_size, drop_remainder=not one_pass)
  if pcfg.workers > 0 and not one_pass:
    if not flags.FLAGS.is_parsed():  # Grain reads absl flags; outside an absl app, defaults
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=pcfg.workers,
                                                     per_worker_buffer_size=WORKER_BUFFER))
  return it
