"""Sample validation: every sample is checked by doing the real work once.

JSON, the conversation and its tags, media decoding, the image budget, TRA for video,
tokenisation and the length against `SampleConfig.seq_len`: a sample that passes becomes a
record (`records.py`, with `num_tokens` and `num_patches`); one that does not is one line
`skip ID: REASON (detail)`, counted by reason. The TFDS builder (`tfds_penguin.py`) writes
what `valid_records` yields; nothing else decides what a dataset holds.
"""
from __future__ import annotations

import collections
import time

from data_pipelines import images, records, sample as sample_lib, video
from data_pipelines.errors import BadSample


def check_sample(sample: dict, data_folder: str, tokenizer, scfg: sample_lib.SampleConfig,
                 allow_outside: bool = False) -> dict:
  """One sample -> its record ({"id", "conversations", "images": [bytes], "video": bytes |
  None, "num_tokens", "num_patches"}). Raises BadSample, also for an unexpected error
  ("unexpected_error", with the exception): one sample never ends a build."""
  sid = sample["id"]
  try:
    rec = records.record_of(sample, data_folder, allow_outside)
    arrays = [images.load_image(b) for b in rec["images"]]
    frames = stamps = None
    if rec["video"] is not None:
      frames, stamps = video.load_video(rec["video"], scfg.fps, scfg.max_frames)
    out = sample_lib.process(sample, arrays, frames, stamps, tokenizer, scfg)
  except BadSample as e:
    raise e.with_id(sid) if e.sample_id is None else e
  except Exception as e:
    raise BadSample("unexpected_error", f"{type(e).__name__}: {e}", sid) from e
  return {**rec, "num_tokens": int(len(out["input_ids"])), "num_patches": int(len(out["patches"]))}


def valid_records(items, data_folder: str, tokenizer, scfg, reasons: collections.Counter,
                  strict: bool = False, log=print, allow_outside: bool = False):
  """(key, sample | BadSample) items (`records.read_jsonl`) -> (key, record) of the good
  samples. A bad one is one line `skip ID: REASON (detail)` and counted in `reasons`;
  `strict` raises it instead."""
  written, t0 = 0, time.time()
  for key, item in items:
    try:
      if isinstance(item, BadSample):
        raise item
      rec = check_sample(item, data_folder, tokenizer, scfg, allow_outside)
    except BadSample as e:
      if strict:
        raise
      reasons[e.reason] += 1
      log(f"skip {e.sample_id}: {e.reason}" + (f" ({e.detail})" if e.detail else ""))
      continue
    written += 1
    if written % 1000 == 0:
      log(f"... {written} written, {sum(reasons.values())} skipped, "
          f"{written / (time.time() - t0):.0f} samples/s")
    yield key, rec
