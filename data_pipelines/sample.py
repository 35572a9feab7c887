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


@dataclasses.dataclass(frozen=True)
class SampleConfig:
  image_merge_size: int = 1
  video_merge_size: int = 2
  min_tokens: int = 16           # per image / frame, in merged tokens
  max_tokens: int = 16384        # per sample's images (release sizing) / video (TRA budget)
  fps: float = 1.0
  max_frames: int = 180
  use_tra: bool = True
  max_length: Optional[int] = None   # text tokens (incl. visual tokens); None: no limit
  image_mean: tuple = images.RELEASE_MEAN   # normalisation (DESIGN 2.1): the checkpoint's
  image_std: tuple = images.RELEASE_STD     # preprocessor_config.json, else the release's 0.5
  # Several images in one sample (images.image_sizes): "release" = one budget, the first
  # image's size for all (the released checkpoints' training); "per_image" = each alone.
  multi_image: str = "release"


def media_of(sample: dict) -> tuple[list, list]:
  """(image paths, video paths) of a JSONL sample, validated as lists of strings."""
  out = []
  for key in ("image", "video"):
    v = sample.get(key)
    if v is None or v == []:
      out.append([])
      continue
    if isinstance(v, (str, bytes, np.ndarray)):
      v = [v]
    if not isinstance(v, (list, tuple)):
      raise BadSample("malformed_sample", f"'{key}' must be a list of paths, not {type(v).__name__}")
    v = list(v)
    ok = lambda x: (isinstance(x, str) and x) or isinstance(x, (bytes, np.ndarray))
    if not all(ok(x) for x in v):
      raise BadSample("malformed_sample", f"'{key}' must be paths (or encoded bytes / arrays)")
    out.append(v)
  if out[0] and out[1]:
    raise BadSample("malformed_sample", "a sample has images or one video, not both")
  if len(out[1]) > 1:
    raise BadSample("malformed_sample", "one video per sample (as the release)")
  return out[0], out[1]


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
  if cfg.max_length is not None and len(ids) > cfg.max_length:
    raise BadSample("too_long", f"{len(ids)} tokens > max_length {cfg.max_length}", sid)
  if not prompt_only and not (labels != chat.IGNORE_INDEX).any():
    raise BadSample("no_label_tokens", "", sid)
  return {
      "input_ids": ids.astype(np.int32),
      "labels": labels.astype(np.int32),
      "patches": (np.concatenate(patches) if patches else np.zeros((0, 588), np.float32)),
      "grids": np.asarray(grids, np.int32).reshape(-1, 3),
      "merge_sizes": np.asarray(merges, np.int32),
  }
