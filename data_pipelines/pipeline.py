"""The Grain pipeline: a TFDS split (`tfds_penguin.Split`) or plain ArrayRecord shards
-> packed, static-shape multimodal batches.

    read record -> decode media -> chat format + labels -> image budget / TRA -> patches
    -> per-sample layout (2D positions, merge plan, where visual tokens go)
    -> pack (Grain first-fit / best-fit: text, patches and visual tokens of one sample
       always in the same row) -> fix offsets -> batch

A batch (numpy, all shapes static):

    input_ids, labels, segment_ids, positions        [batch, seq_len]
    patches                                           [batch, max_patches, 588]
    patch_segment_ids                                 [batch, max_patches]   one id per frame
    patch_positions                                   [batch, max_patches, 2]
    merge_index, merge_weight                         [batch, max_visual, 4]
    visual_positions                                  [batch, max_visual]    seq_len = padding
    token_segment_ids                                 [batch, max_visual]    frame of each token

Sharded by `jax.process_index()`; `worker_count` > 0 decodes in worker processes; the
iterator's `get_state()` / `set_state()` restore the exact stream (orbax checkpoints it).
A sample that cannot fit a row (too many tokens, patches or visual tokens), that fails
to decode, or whose record cannot be read ("corrupt_record": a damaged chunk of an
ArrayRecord shard, named by file and index) is logged with its id and reason, counted,
and skipped; a shard that cannot be opened or is empty stops at start with one line
(`UnreadableShard`); `max_skips_in_a_row`
skips without one usable sample stop the pipeline with `NoProgress` (one line saying
why) instead of skipping forever.
"""
from __future__ import annotations

import collections
import dataclasses
import os
import typing
import logging
from typing import Optional, Sequence

import numpy as np

from data_pipelines import sample as sample_lib
from data_pipelines.build import decode_record
from data_pipelines.errors import BadSample
from data_pipelines import images as images_lib, video as video_lib
from penguin_jax import patches as patch_layout

log = logging.getLogger(__name__)
IGNORE_INDEX = -100


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  seq_len: int = 4096
  max_patches: int = 8192
  max_visual_tokens: int = 4096
  batch_size: int = 8
  packing: str = "first_fit"          # "first_fit" | "best_fit"
  num_packing_bins: int = 16
  shuffle: bool = True
  seed: int = 0
  num_epochs: Optional[int] = None    # None: repeat forever
  drop_remainder: bool = True         # False: a last, smaller batch (one pass for eval)
  worker_count: int = 0               # >0: multiprocessing workers
  worker_buffer_size: int = 2
  max_skips_in_a_row: int = 10_000    # then NoProgress: no sample of the data fits / decodes


class NoProgress(ValueError):
  """The data cannot make a batch: every sample in a long run was skipped."""


SKIPPED = collections.Counter()       # reasons of samples skipped in this process


def sample_features(record: dict, tokenizer, scfg: sample_lib.SampleConfig,
                    prompt_only: bool = False) -> dict:
  """A decoded record -> the per-sample arrays the packer packs (local indices).
  `prompt_only`: a generation prompt (see `chat.format_sample`)."""
  arrays = [images_lib.load_image(b) for b in record["images"]]
  frames = stamps = None
  if record.get("video") is not None:
    frames, stamps = video_lib.load_video(record["video"], scfg.fps, scfg.max_frames)
  out = sample_lib.process(record, arrays, frames, stamps, tokenizer, scfg, prompt_only)
  grids, merges = out["grids"].tolist(), out["merge_sizes"].tolist()
  ids = out["input_ids"]
  lay = patch_layout.pack_items(grids, merges)
  vis_pos = np.nonzero(ids == tokenizer.image_token_id)[0].astype(np.int32)
  n_vis = len(lay["merge_index"])
  if len(vis_pos) != n_vis:  # chat formatting and the merge plan disagree: a bug, not data
    raise AssertionError(f"{record['id']}: {len(vis_pos)} image tokens vs {n_vis} visual tokens")
  return {
      "input_ids": ids, "labels": out["labels"],
      "patches": out["patches"].astype(np.float32),
      "patch_frame": lay["patch_segment_ids"],           # 1.. per frame of this sample
      "patch_positions": lay["patch_positions"],
      "merge_index": lay["merge_index"], "merge_weight": lay["merge_weight"],
      "token_frame": lay["token_segment_ids"],
      "visual_positions": vis_pos,
  }


def _first_index(seg: np.ndarray, n: int) -> np.ndarray:
  """[n + 1] first position of each segment id 0..n in a row (0 if absent)."""
  first = np.zeros(n + 1, np.int64)
  ids, pos = np.unique(seg, return_index=True)
  first[ids] = pos
  return first


def finalize_row(row: dict, cfg: PipelineConfig) -> dict:
  """Packed row (sample-local indices) -> model row: offsets added, frame ids global."""
  tseg, pseg, vseg = row["input_ids_segment_ids"], row["patches_segment_ids"], row["visual_positions_segment_ids"]
  n = int(max(tseg.max(initial=0), pseg.max(initial=0), vseg.max(initial=0)))
  tok_off = _first_index(tseg, n)
  patch_off = _first_index(pseg, n)
  frames_per = np.zeros(n + 1, np.int64)
  np.maximum.at(frames_per, pseg, row["patch_frame"])
  frame_off = np.concatenate([[0], np.cumsum(frames_per)])[:-1]       # by sample id
  valid_v = vseg > 0
  vis = np.where(valid_v, row["visual_positions"] + tok_off[vseg], cfg.seq_len)
  midx = np.where(valid_v[:, None], row["merge_index"] + patch_off[vseg][:, None], 0)
  pframe = np.where(pseg > 0, row["patch_frame"] + frame_off[pseg], 0)
  tframe = np.where(valid_v, row["token_frame"] + frame_off[vseg], 0)
  labels = np.where(tseg > 0, row["labels"], IGNORE_INDEX)
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
  }


class UnreadableShard(ValueError):
  """A file of `train_files` that is not a readable ArrayRecord shard, or has no records."""


class Unreadable(typing.NamedTuple):
  """A record that cannot be read (a corrupt chunk): skipped as "corrupt_record"."""
  where: str
  reason: str


class RecordSource:
  """ArrayRecord shards as one random-access source (Grain's `ArrayRecordDataSource`, one
  per file), whose bad parts are named: a file that cannot be opened or holds no records
  is an `UnreadableShard` at start (its path and the reason, one line); a record that
  cannot be read later is an `Unreadable` naming file and index, which the pipeline
  counts and skips."""

  def __init__(self, paths: Sequence[str]):
    import grain
    self.paths, self.sources = list(paths), []
    for p in self.paths:
      try:
        src = grain.sources.ArrayRecordDataSource([p])
        n = len(src)
      except Exception as e:  # Riegeli: "Corrupted ...", "should be at least 64KB", ...
        raise UnreadableShard(f"{p}: not a readable ArrayRecord shard ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200]})") from None
      if n == 0:
        raise UnreadableShard(f"{p}: the shard holds no records")
      self.sources.append(src)
    self.ends = np.cumsum([len(s) for s in self.sources])

  def __len__(self):
    return int(self.ends[-1]) if len(self.ends) else 0

  def __getitem__(self, i: int):
    f = int(np.searchsorted(self.ends, i, side="right"))
    j = i - (int(self.ends[f - 1]) if f else 0)
    try:
      return self.sources[f][j]
    except Exception as e:
      return Unreadable(f"{os.path.basename(self.paths[f])}[{j}]",
                         f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")


class _Process:
  """A record (msgpack bytes, or the dict a `tfds_penguin.Split` gives) -> sample
  features, or None (logged and counted) for a bad sample."""

  def __init__(self, tokenizer, scfg, cfg):
    self.tokenizer, self.scfg, self.cfg = tokenizer, scfg, cfg
    self.in_a_row = collections.Counter()    # reasons of the skips since the last good one

  def __call__(self, raw):
    if isinstance(raw, Unreadable):
      return self._skip(raw.where, "corrupt_record", raw.reason)
    rec = raw if isinstance(raw, dict) else decode_record(raw)
    try:
      f = sample_features(rec, self.tokenizer, self.scfg)
    except BadSample as e:
      e = e if e.sample_id is not None else e.with_id(rec.get("id"))
      return self._skip(e.sample_id, e.reason, e.detail)
    c = self.cfg
    for what, n, cap in [("tokens", len(f["input_ids"]), c.seq_len),
                         ("patches", len(f["patches"]), c.max_patches),
                         ("visual tokens", len(f["merge_index"]), c.max_visual_tokens)]:
      if n > cap:
        return self._skip(rec.get("id"), "too_long", f"{n} {what} > {cap} per row")
    self.in_a_row.clear()
    return f

  def _skip(self, sample_id, reason: str, detail: str):
    SKIPPED[reason] += 1
    self.in_a_row[reason] += 1
    log.warning("skip %s: %s%s", sample_id, reason, f" ({detail})" if detail else "")
    n = sum(self.in_a_row.values())
    if n >= self.cfg.max_skips_in_a_row:
      c = self.cfg
      reasons = ", ".join(f"{k} {v}" for k, v in self.in_a_row.most_common())
      hint = (f"raise data.seq_len ({c.seq_len}) / max_patches ({c.max_patches}) / "
              f"max_visual_tokens ({c.max_visual_tokens}) or filter the data"
              if "too_long" in self.in_a_row else "check the data")
      raise NoProgress(f"no usable sample in the last {n} ({reasons}): {hint}")
    return None


def make_dataset(source, tokenizer, scfg: sample_lib.SampleConfig,
                 cfg: PipelineConfig, process_index: Optional[int] = None,
                 process_count: Optional[int] = None):
  """A Grain IterDataset of packed batches (see module docstring). `source`: a TFDS split
  (`tfds_penguin.Split`, the standard path), or a list of plain ArrayRecord shards
  (`data_pipelines.build --format=array_record`)."""
  import grain
  import grain.experimental as gx
  if process_index is None:
    import jax
    process_index, process_count = jax.process_index(), jax.process_count()
  if isinstance(source, (list, tuple)):
    source = RecordSource(source)
  ds = grain.MapDataset.source(source)
  if cfg.shuffle:
    ds = ds.shuffle(seed=cfg.seed)
  ds = ds.repeat(cfg.num_epochs)
  ds = ds[process_index::process_count]                       # this host's shard
  ds = ds.map(_Process(tokenizer, scfg, cfg)).filter(lambda x: x is not None)
  it = ds.to_iter_dataset()
  V, P, S = cfg.max_visual_tokens, cfg.max_patches, cfg.seq_len
  lengths = {"input_ids": S, "labels": S, "patches": P, "patch_frame": P,
             "patch_positions": P, "merge_index": V, "merge_weight": V, "token_frame": V,
             "visual_positions": V}
  packer = {"first_fit": gx.FirstFitPackIterDataset,
            "best_fit": gx.BestFitPackIterDataset}[cfg.packing]
  it = packer(it, length_struct=lengths, num_packing_bins=cfg.num_packing_bins,
              seed=cfg.seed, shuffle_bins=cfg.shuffle)
  it = it.map(lambda row: finalize_row(row, cfg))
  it = it.batch(cfg.batch_size, drop_remainder=cfg.drop_remainder)
  if cfg.worker_count > 0:
    from absl import flags
    if not flags.FLAGS.is_parsed():  # Grain reads absl flags; outside an absl app, defaults
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.worker_count,
                                                     per_worker_buffer_size=cfg.worker_buffer_size))
  return it
