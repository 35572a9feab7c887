"""One training sample, from the release's JSONL record to model-ready arrays.

    record (JSONL dict + media bytes)  ->  input_ids, labels          [n] int32
                                           patches                     [P, 588] float32
                                           grids                       [k, 3] int32 (t, h, w) per item
                                           merge_sizes                 [k] int32

Items are images (merge 1 by default) or the frames of one video (merge 2, each frame its
own item with t = 1, since every frame is its own attention segment). `SampleConfig` holds
the stage's settings; everything here is a pure function of its inputs.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from data_pipelines import chat, images, video
from data_pipelines.errors import BadSample
from penguin_jax import patches as patch_layout
from penguin_jax.settings import setting


@dataclasses.dataclass(frozen=True)
class SampleConfig:
  """What one sample becomes: the per-sample settings. Declared here once; a run config's
  `data.*` fields, the TFDS builder config's `sample` and `data_pipelines.build`'s flags
  are made from these fields (penguin_jax/settings.py)."""
  seq_len: Optional[int] = setting(
      None, "tokens per row, visual tokens included; a longer sample is skipped as "
      "too_long (None: no limit)")
  image_merge_size: int = setting(1, "an image's patches merged m x m into one LLM token")
  video_merge_size: int = setting(2, "a video frame's patches merged m x m into one LLM token")
  min_tokens: int = setting(16, "fewest merged tokens of an image or frame")
  max_tokens: int = setting(
      16384, "merged tokens of a sample's images (one budget, release sizing) or of its "
      "video (the TRA budget)")
  fps: float = setting(1.0, "video frames decoded per second")
  max_frames: int = setting(180, "at most this many video frames (a uniform subset)")
  use_tra: bool = setting(True, "video: key frames kept large, the frames between smaller (TRA)")
  image_mean: tuple[float, ...] = setting(
      images.RELEASE_MEAN, "pixel normalisation mean (a checkpoint's preprocessor_config.json wins)")
  image_std: tuple[float, ...] = setting(
      images.RELEASE_STD, "pixel normalisation std (a checkpoint's preprocessor_config.json wins)")
  multi_image: str = setting(
      "release", "several images in a sample: 'release' = one budget and the first image's "
      "size for all (as the released checkpoints were trained), 'per_image' = each alone")


# The paper's stage 2 / 3 sample settings (docs/design.md §3): rows of 16,384 tokens, at
# most 10,240 visual tokens. The real variants of configs/ and the TFDS builder's `release`
# config use them.
STAGES = SampleConfig(seq_len=16384, max_tokens=10240)


def process(sample: dict, image_arrays: list, video_frames, timestamps, tokenizer,
            cfg: SampleConfig, prompt_only: bool = False) -> dict:
  """Decoded media -> model arrays (see module docstring). Raises BadSample.
  `prompt_only`: a prompt for generation (see `chat.format_sample`)."""
  sid = sample.get("id")
  try:
    patches, grids, merges, visuals = [], [], [], []
    sizes = images.image_sizes([a.shape[:2] for a in image_arrays],
                               merge_size=cfg.image_merge_size, min_tokens=cfg.min_tokens,
                               max_tokens=cfg.max_tokens, mode=cfg.multi_image)
    for rgb, size in zip(image_arrays, sizes):
      p, g = images.process_image(rgb, merge_size=cfg.image_merge_size,
                                  mean=cfg.image_mean, std=cfg.image_std, size=size)
      patches.append(p)
      grids.append(g)
      merges.append(cfg.image_merge_size)
      visuals.append(chat.Visual((g[1] * g[2] // cfg.image_merge_size ** 2,)))
    if video_frames is not None:
      p, gs, _ = video.process_video(video_frames, merge_size=cfg.video_merge_size,
                                     min_tokens=cfg.min_tokens, max_tokens=cfg.max_tokens,
                                     use_tra=cfg.use_tra, mean=cfg.image_mean,
                                     std=cfg.image_std)
      patches.append(p)
      grids += gs
      merges += [cfg.video_merge_size] * len(gs)
      m2 = cfg.video_merge_size ** 2
      visuals.append(chat.Visual(tuple(g[1] * g[2] // m2 for g in gs),
                                 tuple(float(t) for t in timestamps)))
    ids, labels = chat.format_sample(tokenizer, sample, visuals, prompt_only)
  except BadSample as e:
    raise e.with_id(sid) if e.sample_id is None else e
  if cfg.seq_len is not None and len(ids) > cfg.seq_len:
    raise BadSample("too_long", f"{len(ids)} tokens > seq_len {cfg.seq_len}", sid)
  if not prompt_only and not (labels != chat.IGNORE_INDEX).any():
    raise BadSample("no_label_tokens", "", sid)
  return {
      "input_ids": ids.astype(np.int32),
      "labels": labels.astype(np.int32),
      "patches": (np.concatenate(patches) if patches else np.zeros((0, 588), np.float32)),
      "grids": np.asarray(grids, np.int32).reshape(-1, 3),
      "merge_sizes": np.asarray(merges, np.int32),
  }


def features(record: dict, tokenizer, scfg: SampleConfig, prompt_only: bool = False) -> dict:
  """A record (`records.py`: media as encoded bytes) -> the per-sample arrays the packer
  packs, indices local to the sample. `prompt_only`: a generation prompt
  (`chat.format_sample`). Raises BadSample.

      input_ids, labels                 [n]
      patches                           [P, 588]     patch_frame [P] (1.. per frame)
      patch_positions                   [P, 2]
      merge_index, merge_weight         [V, 4]       token_frame [V]
      visual_positions                  [V]          where each visual token goes in input_ids
  """
  arrays = [images.load_image(b) for b in record["images"]]
  frames = stamps = None
  if record.get("video") is not None:
    frames, stamps = video.load_video(record["video"], scfg.fps, scfg.max_frames)
  out = process(record, arrays, frames, stamps, tokenizer, scfg, prompt_only)
  ids = out["input_ids"]
  lay = patch_layout.pack_items(out["grids"].tolist(), out["merge_sizes"].tolist())
  vis_pos = np.nonzero(ids == tokenizer.image_token_id)[0].astype(np.int32)
  if len(vis_pos) != len(lay["merge_index"]):  # the chat format and the merge plan disagree: a bug
    raise AssertionError(f"{record['id']}: {len(vis_pos)} image tokens vs "
                         f"{len(lay['merge_index'])} visual tokens")
  return {
      "input_ids": ids, "labels": out["labels"],
      "patches": out["patches"].astype(np.float32),
      "patch_frame": lay["patch_segment_ids"],
      "patch_positions": lay["patch_positions"],
      "merge_index": lay["merge_index"], "merge_weight": lay["merge_weight"],
      "token_frame": lay["token_segment_ids"],
      "visual_positions": vis_pos,
  }
