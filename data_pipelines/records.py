"""The record: one sample as training reads it, and where records come from.

A record is a dict in the release's layout with its media as encoded file bytes, so that
nothing else is read while training:

    {"id": str, "conversations": [{"from", "value"}], "images": [bytes],
     "video": bytes (a video file) | [bytes] (a frame folder's files, in name order) | None}

(`validate.check_sample` adds `num_tokens` and `num_patches`.) Records come from

  * a split of the TFDS dataset `penguin_vl` (`tfds_penguin.Split`, the training path):
    `to_example` / `to_record` convert between a record and a TFDS example;
  * a JSONL file and its media folder read as they are (`JsonlSource`): what
    `launch.eval --data=FILE.jsonl` scores, with no dataset to build.

A source never raises for one bad sample: it returns `Skipped` (where, reason, detail),
which the pipeline counts and skips like a sample that fails to decode.

Files (JSONL, media, frame folders) are read through `etils.epath`: a local path, or
gs://BUCKET/... (fsspec's gcsfs), s3://... as epath opens them.
"""
from __future__ import annotations

import io
import json
import os
import posixpath
from typing import NamedTuple, Optional

import numpy as np
from etils import epath
from PIL import Image

from data_pipelines.errors import BadSample


class Skipped(NamedTuple):
  """A sample that a source could not give: named, counted and skipped by the pipeline."""
  where: str          # the sample's id, or split / file and index
  reason: str         # a BadSample reason ("corrupt_record", "missing_file", ...)
  detail: str = ""


def read_jsonl(path: str):
  """Yields (line number, sample dict) or (line number, BadSample) for each non-empty
  line of the release's JSONL; a sample without an id gets "line N"."""
  with epath.Path(path).open("rb") as f:
    for n, raw in enumerate(f, 1):
      if raw.strip():
        yield n, parse_line(raw, n)


def parse_line(raw: bytes, n: int):
  """One JSONL line -> the sample dict, or a BadSample naming line `n`."""
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    return BadSample("invalid_utf8", str(e), f"line {n}")
  try:
    obj = json.loads(text)
  except json.JSONDecodeError as e:
    return BadSample("invalid_json", str(e), f"line {n}")
  if not isinstance(obj, dict):
    return BadSample("malformed_sample", "a line must be a JSON object", f"line {n}")
  obj.setdefault("id", f"line {n}")
  return obj


def media_bytes(entry, data_folder: str, allow_outside: bool = False, folder_ok: bool = False):
  """A media entry (a path relative to `data_folder`, encoded bytes, or a uint8 image
  array) -> encoded file bytes. A path that leads outside `data_folder` (`../`, absolute,
  a symlink out) is a BadSample unless `allow_outside`: a dataset reads only its folder.
  `folder_ok` (a video entry): a folder is a video given as its frames, as the release
  reads one (`mm_utils.load_video_from_ids`: its files in sorted name order) -> [bytes]."""
  if isinstance(entry, bytes):
    return entry
  if isinstance(entry, str):
    if not allow_outside and not _inside(data_folder, entry):
      raise BadSample("outside_data_folder", f"{entry} (pass --allow-outside to read it)")
    full = epath.Path(data_folder) / entry
    if folder_ok and full.is_dir():
      frames = sorted((f for f in full.iterdir() if f.is_file()), key=lambda f: f.name)
      if not frames:
        raise BadSample("corrupt_video", f"{entry}: a frame folder with no file")
      return [f.read_bytes() for f in frames]
    if not full.is_file():
      raise BadSample("missing_file", entry)
    return full.read_bytes()
  buf = io.BytesIO()
  try:
    Image.fromarray(entry).save(buf, format="PNG")
  except (TypeError, ValueError) as e:
    raise BadSample("corrupt_image", f"array of shape {getattr(entry, 'shape', '?')}: {e}")
  return buf.getvalue()


def is_remote(path) -> bool:
  """gs://..., s3://...: a path epath opens through fsspec."""
  return "://" in os.fspath(path)


def under(root: str, path: str) -> str:
  """`path` (local or remote) taken relative to `root` unless it is absolute or remote."""
  return path if is_remote(path) or os.path.isabs(path) else posixpath.join(os.fspath(root), path)


def absolute(path: str) -> str:
  """A local path made absolute; a remote one (gs://...) as it is."""
  return path if is_remote(path) else os.path.abspath(path)


def _inside(data_folder: str, entry: str) -> bool:
  """Whether `entry` (relative to `data_folder`) stays inside it: symlinks resolved on a
  local disk; on an object store (no symlinks) `..` and absolute paths normalised."""
  folder = os.fspath(data_folder)
  if is_remote(folder):
    if is_remote(entry) or entry.startswith("/"):
      return False
    return not posixpath.normpath(entry).startswith("..")
  root = os.path.realpath(folder)
  return os.path.commonpath([root, os.path.realpath(os.path.join(folder, entry))]) == root


def media_of(sample: dict) -> tuple[list, list]:
  """(image entries, video entries) of a JSONL sample, validated as lists of paths (or
  encoded bytes / arrays): images or one video, not both."""
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


def record_of(sample: dict, data_folder: str, allow_outside: bool = False) -> dict:
  """A JSONL sample -> its record (media read as bytes). Raises BadSample."""
  images, videos = media_of(sample)
  return {"id": str(sample["id"]), "conversations": sample.get("conversations"),
          "images": [media_bytes(e, data_folder, allow_outside) for e in images],
          "video": media_bytes(videos[0], data_folder, allow_outside, folder_ok=True)
                   if videos else None}


class JsonlSource:
  """A JSONL file and its media folder as a random-access source of records (Grain's
  `MapDataset.source` takes it): line i is parsed and its media read when asked for, so
  nothing is built and memory holds one sample at a time. A bad line or missing media is
  a `Skipped` naming the sample; the pipeline finds every other problem as it processes
  the record (the same checks as a dataset build)."""

  def __init__(self, path: str, data_folder: Optional[str] = None, allow_outside: bool = True):
    if not epath.Path(path).is_file():
      raise FileNotFoundError(f"{path}: no such file")
    self.path, self.allow_outside = path, allow_outside
    self.folder = data_folder or os.path.dirname(absolute(path))
    self.offsets = []                 # (line number, byte offset) of each non-empty line
    with epath.Path(path).open("rb") as f:
      pos = 0
      for n, raw in enumerate(f, 1):
        if raw.strip():
          self.offsets.append((n, pos))
        pos += len(raw)
    if not self.offsets:
      raise ValueError(f"{path}: no sample in the file")

  def __len__(self):
    return len(self.offsets)

  def __getitem__(self, i: int):
    n, pos = self.offsets[i]
    with epath.Path(self.path).open("rb") as f:
      f.seek(pos)
      sample = parse_line(f.readline(), n)
    if isinstance(sample, BadSample):
      return Skipped(str(sample.sample_id), sample.reason, sample.detail)
    try:
      return record_of(sample, self.folder, self.allow_outside)
    except BadSample as e:
      return Skipped(str(sample["id"]), e.reason, e.detail)

  def __repr__(self):
    return f"JsonlSource({self.path}, {len(self)} samples)"


def to_example(record: dict) -> dict:
  """A checked record (`validate.check_sample`) -> a `penguin_vl` TFDS example."""
  v = record["video"]
  frames = isinstance(v, list)
  return {"id": record["id"],
          "conversations": [{"from": str(t["from"]), "value": t["value"]}
                            for t in record["conversations"]],
          "images": list(record["images"]), "video": b"" if frames else v or b"",
          "video_frames": list(v) if frames else [],
          "num_tokens": record["num_tokens"], "num_patches": record["num_patches"]}


def to_record(example: dict) -> dict:
  """A `penguin_vl` example as `tfds.data_source` returns it -> the record."""
  txt = lambda b: b.decode("utf-8") if isinstance(b, bytes) else str(b)
  conv = example["conversations"]
  return {"id": txt(example["id"]),
          "conversations": [{"from": txt(f), "value": txt(v)}
                            for f, v in zip(conv["from"], conv["value"])],
          "images": [bytes(b) for b in example["images"]],
          "video": ([bytes(b) for b in example["video_frames"]]    # a frame folder
                    if len(example.get("video_frames", ())) else bytes(example["video"]) or None),
          "num_tokens": int(example["num_tokens"]), "num_patches": int(example["num_patches"])}
