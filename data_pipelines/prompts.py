"""Prompts for generation: from the command line or a JSONL file to a left-padded batch.

A prompt is a sample of the release's JSONL format whose turns end with a user turn
(`{"id", "image": [...], "video": [...], "conversations": [...]}`); a trailing assistant
turn is the reference answer (`launch.eval`), set aside. `{"prompt": TEXT, "image": ...}`
is accepted as the one-turn shorthand. Media paths are relative to the JSONL's folder
(or `data_folder`), or absolute. Each prompt becomes the training pipeline's per-sample
arrays (`sample.features`, same chat format, image resizing and TRA for video),
followed by the generation prompt (`chat.format_sample`'s `prompt_only`).

`prompt_batch` left-pads a list of them into one batch for `penguin_jax.decoding`:

  input_ids, prompt_mask          [b, L]          (mask 0 = left padding)
  patches                         [b, P, 588]     (P >= 1; padding patches: segment 0)
  patch_segment_ids, patch_positions, merge_index, merge_weight, visual_positions
                                  as the training batch (visual_positions L = dropped)
L, P and V are rounded up (`round_to`) so that batches of similar prompts share one
compiled program.
"""
from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np

from data_pipelines import chat, records, sample as sample_lib
from data_pipelines.errors import BadSample


def read_jsonl(path: str) -> list[dict]:
  """The prompts of a JSONL file; a line that is not a JSON object is a BadSample naming
  its line."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such file")
  out = []
  with open(path) as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        d = json.loads(line)
      except json.JSONDecodeError as e:
        raise BadSample("invalid_json", f"{path} line {n}: {e}") from None
      if not isinstance(d, dict):
        raise BadSample("malformed_sample", f"{path} line {n}: not a JSON object")
      d.setdefault("id", f"line {n}")
      out.append(d)
  return out


def as_prompt(sample: dict) -> tuple[dict, Optional[str]]:
  """-> (the sample as a prompt, its reference answer or None)."""
  if "prompt" in sample and "conversations" not in sample:
    if not isinstance(sample["prompt"], str):
      raise BadSample("malformed_sample", "'prompt' must be a string", sample.get("id"))
    return ({**sample, "conversations": [{"from": "human", "value": sample["prompt"]}]},
            sample.get("answer"))
  turns = sample.get("conversations")
  if isinstance(turns, list) and turns and isinstance(turns[-1], dict) \
      and chat.ROLES.get(turns[-1].get("from")) == "assistant":
    return chat.split_answer(sample)
  return sample, None


def features(sample: dict, tokenizer, scfg, base: str = ".") -> dict:
  """One prompt -> per-sample arrays (`sample.features` with prompt_only), its media paths
  relative to `base` (or absolute). Raises BadSample (missing file, unreadable image or
  video, tag mismatch, ...) with the prompt's id."""
  sid = sample.get("id")
  try:
    record = {**sample, **records.record_of(sample, base, allow_outside=True)}
    return sample_lib.features(record, tokenizer, scfg, prompt_only=True)
  except BadSample as e:
    raise e.with_id(sid) if e.sample_id is None else e


def _up(n: int, m: int) -> int:
  return max(m, -(-n // m) * m)


def prompt_batch(feats: list[dict], pad_id: int, round_to=(32, 64, 16)) -> dict:
  """Left-padded batch of prompts (see the module docstring)."""
  b = len(feats)
  L = _up(max(len(f["input_ids"]) for f in feats), round_to[0])
  P = _up(max(len(f["patches"]) for f in feats), round_to[1])
  V = _up(max(len(f["merge_index"]) for f in feats), round_to[2])
  out = {"input_ids": np.full((b, L), pad_id, np.int32),
         "prompt_mask": np.zeros((b, L), np.int32),
         "patches": np.zeros((b, P, 588), np.float32),
         "patch_segment_ids": np.zeros((b, P), np.int32),
         "patch_positions": np.zeros((b, P, 2), np.int32),
         "merge_index": np.zeros((b, V, 4), np.int32),
         "merge_weight": np.zeros((b, V, 4), np.float32),
         "visual_positions": np.full((b, V), L, np.int32)}
  for r, f in enumerate(feats):
    n, p, v = len(f["input_ids"]), len(f["patches"]), len(f["merge_index"])
    out["input_ids"][r, L - n:] = f["input_ids"]
    out["prompt_mask"][r, L - n:] = 1
    out["patches"][r, :p] = f["patches"]
    out["patch_segment_ids"][r, :p] = f["patch_frame"]
    out["patch_positions"][r, :p] = f["patch_positions"]
    out["merge_index"][r, :v] = f["merge_index"]
    out["merge_weight"][r, :v] = f["merge_weight"]
    out["visual_positions"][r, :v] = f["visual_positions"] + (L - n)
  return out
