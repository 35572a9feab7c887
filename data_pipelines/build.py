"""Build the release's training data (JSONL + media folder) for training.

  python -m data_pipelines.build --annotations=train.jsonl [--annotations=val.jsonl] \\
      --data-folder=DATA --out=DATA_DIR [--max-length=16384] \\
      [--name=custom] [--tokenizer=DIR_WITH_tokenizer.json] [--strict]
  python -m data_pipelines.build --format=array_record --annotations=train.jsonl \\
      --data-folder=DATA --out=OUT [--num-shards=8] ...

--format=tfds (default) builds the TFDS dataset penguin_vl/NAME in DATA_DIR, one split per
JSONL (data_pipelines/tfds_penguin.py; the same as `tfds build`); training reads it with
config.data.tfds_name=penguin_vl/NAME, data.tfds_data_dir=DATA_DIR. --format=array_record
writes plain shards (msgpack records) for config.data.train_files: launch.eval builds
these from a JSONL it is given, and shards built by earlier versions stay readable.

Every sample is checked by doing the real work once (JSON, conversation, media decoding,
image budget, TRA, tokenisation, length). A bad sample gets one line `skip ID: REASON
(detail)`, is counted and left out; `--strict` stops at the first one instead. The last
line printed is a JSON object: {"written", "skipped", "reasons": {reason: count}, ...}
(tfds: one such object per split, also in the dataset's metadata.json).

A record (msgpack) keeps the sample's conversation and its media *bytes*, so training
reads no other file: {"id", "conversations", "images": [bytes], "video": bytes | None,
"num_tokens", "num_patches"}.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time

import msgpack

from data_pipelines import images, sample as sample_lib, video
from data_pipelines.errors import BadSample
from data_pipelines.tokenizer import from_spec


def read_jsonl(path: str):
  """Yields (line number, sample dict) or (line number, BadSample)."""
  with open(path, "rb") as f:
    for n, raw in enumerate(f, 1):
      if not raw.strip():
        continue
      try:
        text = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        yield n, BadSample("invalid_utf8", str(e), f"line {n}")
        continue
      try:
        obj = json.loads(text)
      except json.JSONDecodeError as e:
        yield n, BadSample("invalid_json", str(e), f"line {n}")
        continue
      if not isinstance(obj, dict):
        yield n, BadSample("malformed_sample", "a line must be a JSON object", f"line {n}")
        continue
      obj.setdefault("id", f"line {n}")
      yield n, obj


def read_data_source(source):
  """Samples of a random-access data source (e.g. `tfds.data_source(...)`, or any sequence
  of dicts) in the release's layout; `conversations` may be a JSON string, media may be
  paths, encoded bytes or uint8 arrays. Yields (index, sample) like `read_jsonl`."""
  for i in range(len(source)):
    s = dict(source[i])
    s = {k: (v.decode("utf-8") if isinstance(v, bytes) and k in ("id", "conversations") else v)
         for k, v in s.items()}
    if isinstance(s.get("conversations"), str):
      try:
        s["conversations"] = json.loads(s["conversations"])
      except json.JSONDecodeError as e:
        yield i, BadSample("invalid_json", f"conversations: {e}", s.get("id", f"index {i}"))
        continue
    s.setdefault("id", f"index {i}")
    yield i, s


def _media_bytes(entry, data_folder: str, allow_outside: bool = False) -> bytes:
  """A media entry (path relative to data_folder, encoded bytes, or a uint8 image array)
  -> encoded file bytes. A path that leads outside `data_folder` (`../`, absolute, a
  symlink out) is a BadSample unless `allow_outside`: a dataset reads only its folder."""
  if isinstance(entry, bytes):
    return entry
  if isinstance(entry, str):
    full = os.path.join(data_folder, entry)
    root = os.path.realpath(data_folder)
    if not allow_outside and os.path.commonpath([root, os.path.realpath(full)]) != root:
      raise BadSample("outside_data_folder", f"{entry} (pass --allow-outside to read it)")
    if not os.path.isfile(full):
      raise BadSample("missing_file", entry)
    with open(full, "rb") as f:
      return f.read()
  import io
  from PIL import Image
  buf = io.BytesIO()
  try:
    Image.fromarray(entry).save(buf, format="PNG")
  except (TypeError, ValueError) as e:
    raise BadSample("corrupt_image", f"array of shape {getattr(entry, 'shape', '?')}: {e}")
  return buf.getvalue()


def check_sample(sample: dict, data_folder: str, tokenizer, cfg,
                 allow_outside: bool = False) -> dict:
  """Validate one sample fully, by doing the real work once -> its record: {"id",
  "conversations", "images": [bytes], "video": bytes | None, "num_tokens", "num_patches"}.
  Raises BadSample, also for an unexpected error ("unexpected_error", with the exception)."""
  sid = sample["id"]
  try:
    img_entries, vid_entries = sample_lib.media_of(sample)
    img_bytes = [_media_bytes(e, data_folder, allow_outside) for e in img_entries]
    arrays = [images.load_image(b) for b in img_bytes]
    vid_bytes, frames, stamps = None, None, None
    if vid_entries:
      vid_bytes = _media_bytes(vid_entries[0], data_folder, allow_outside)
      frames, stamps = video.load_video(vid_bytes, cfg.fps, cfg.max_frames)
    out = sample_lib.process(sample, arrays, frames, stamps, tokenizer, cfg)
  except BadSample as e:
    raise e.with_id(sid) if e.sample_id is None else e
  except Exception as e:   # one sample never ends a build: named, counted, skipped
    raise BadSample("unexpected_error", f"{type(e).__name__}: {e}", sid) from e
  return {"id": str(sid), "conversations": sample["conversations"], "images": img_bytes,
          "video": vid_bytes, "num_tokens": int(len(out["input_ids"])),
          "num_patches": int(len(out["patches"]))}


def valid_records(items, data_folder: str, tokenizer, cfg, reasons: collections.Counter,
                  strict: bool = False, log=print, allow_outside: bool = False):
  """(n, sample | BadSample) items (`read_samples`) -> (n, record) of the good samples.
  A bad one is one line `skip ID: REASON (detail)` and counted in `reasons`; `strict`
  raises it instead. Both writers (ArrayRecord shards here, the TFDS builder in
  `tfds_penguin`) validate through this one loop."""
  written, t0 = 0, time.time()
  for n, item in items:
    try:
      if isinstance(item, BadSample):
        raise item
      rec = check_sample(item, data_folder, tokenizer, cfg, allow_outside)
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
    yield n, rec


def read_samples(annotations):
  """A JSONL path (`read_jsonl`) or a data source (`read_data_source`)."""
  if isinstance(annotations, (str, os.PathLike)):
    return read_jsonl(annotations)
  return read_data_source(annotations)


def encode_record(record: dict) -> bytes:
  """A record (`check_sample`) as the bytes of one ArrayRecord entry (msgpack)."""
  return msgpack.packb(record, use_bin_type=True)


def decode_record(raw: bytes) -> dict:
  return msgpack.unpackb(raw, raw=False)


def build(annotations, data_folder: str, out: str, cfg, tokenizer, num_shards: int = 1,
          strict: bool = False, log=print, allow_outside: bool = False) -> dict:
  """Plain ArrayRecord shards (`data-0000i-of-0000n.array_record` + `stats.json`).
  annotations: a JSONL path, or a data source (see `read_data_source`).
  `allow_outside`: media paths may leave `data_folder`. Atomic: the shards are written
  as `*.tmp` and renamed, then `stats.json` is written, only when every sample has been
  seen; a build that stops early (--strict, an interrupt, a crash) leaves no shard."""
  from array_record.python.array_record_module import ArrayRecordWriter
  os.makedirs(out, exist_ok=True)
  paths = [os.path.join(out, f"data-{i:05d}-of-{num_shards:05d}.array_record")
           for i in range(num_shards)]
  writers = [ArrayRecordWriter(p + ".tmp", "group_size:1") for p in paths]
  reasons = collections.Counter()
  written = tokens = 0
  t0 = time.time()
  try:
    for _, rec in valid_records(read_samples(annotations), data_folder, tokenizer, cfg,
                                reasons, strict, log, allow_outside):
      writers[written % num_shards].write(encode_record(rec))
      written += 1
      tokens += rec["num_tokens"]
  except BaseException:
    for w, p in zip(writers, paths):
      w.close()
      os.remove(p + ".tmp")
    raise
  for w, p in zip(writers, paths):
    w.close()
    os.replace(p + ".tmp", p)
  stats = {"written": written, "skipped": sum(reasons.values()), "reasons": dict(reasons),
           "tokens": tokens, "shards": [os.path.basename(p) for p in paths],
           "seconds": round(time.time() - t0, 2)}
  with open(os.path.join(out, "stats.json.tmp"), "w") as f:
    json.dump(stats, f, indent=2)
  os.replace(os.path.join(out, "stats.json.tmp"), os.path.join(out, "stats.json"))
  return stats


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m data_pipelines.build", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  from data_pipelines.tfds_penguin import PenguinConfig
  d = PenguinConfig(name="release")      # the defaults: the real stages' settings
  ap.add_argument("--format", choices=("tfds", "array_record"), default="tfds",
                  help="tfds (default): the TFDS dataset penguin_vl/NAME in --out (a TFDS "
                       "data_dir); array_record: plain shards in --out")
  src = ap.add_mutually_exclusive_group(required=True)
  src.add_argument("--annotations", action="append",
                   help="the release's JSONL file; tfds: repeat it, each NAME.jsonl is split NAME")
  src.add_argument("--tfds", help="array_record: read a prepared TFDS dataset NAME:SPLIT "
                                  "in the release's layout (tfds.data_source)")
  ap.add_argument("--tfds-data-dir", default=None)
  ap.add_argument("--name", default="custom",
                  help="tfds: the config name, penguin_vl/NAME (not 'release': that is the "
                       "built-in config of `tfds build`)")
  ap.add_argument("--data-folder", default=".", help="folder the media paths are relative to")
  ap.add_argument("--out", required=True, help="output folder (TFDS data_dir, or the shards')")
  ap.add_argument("--num-shards", type=int, default=1, help="array_record: shards to write")
  ap.add_argument("--max-length", type=int, default=d.max_length, help="max tokens per sample")
  ap.add_argument("--max-tokens", type=int, default=d.max_tokens,
                  help="visual tokens budget per sample's images / video")
  ap.add_argument("--min-tokens", type=int, default=d.min_tokens)
  ap.add_argument("--multi-image", choices=images.MULTI_IMAGE_MODES, default=d.multi_image,
                  help="several images in a sample: one budget and the first image's size "
                       "for all, as the release (default), or each image sized alone")
  ap.add_argument("--image-merge-size", type=int, default=d.image_merge_size)
  ap.add_argument("--video-merge-size", type=int, default=d.video_merge_size)
  ap.add_argument("--fps", type=float, default=d.fps)
  ap.add_argument("--max-frames", type=int, default=d.max_frames)
  ap.add_argument("--tokenizer", default="", help="dir with tokenizer.json, or a SentencePiece "
                                                   ".model (default: offline Qwen3)")
  ap.add_argument("--strict", action="store_true", help="stop at the first bad sample")
  ap.add_argument("--allow-outside", action="store_true",
                  help="read media paths outside --data-folder (../, absolute paths)")
  args = ap.parse_args(argv)
  for p, what in [*[(a, "--annotations") for a in args.annotations or ()],
                  (args.data_folder, "--data-folder")]:
    if not os.path.exists(p):
      print(f"error: {what} {p} does not exist", file=sys.stderr)
      return 2
  if args.num_shards < 1:
    print(f"error: --num-shards={args.num_shards}: give 1 or more", file=sys.stderr)
    return 2
  if os.path.exists(args.out) and not os.path.isdir(args.out):
    print(f"error: --out {args.out} is a file; give a folder", file=sys.stderr)
    return 2
  settings = dict(max_length=args.max_length, max_tokens=args.max_tokens,
                  min_tokens=args.min_tokens, image_merge_size=args.image_merge_size,
                  video_merge_size=args.video_merge_size, fps=args.fps,
                  max_frames=args.max_frames, multi_image=args.multi_image)
  if args.format == "tfds":
    return _main_tfds(args, settings)
  if args.annotations and len(args.annotations) > 1:
    print("error: --format=array_record builds one --annotations file", file=sys.stderr)
    return 2
  source = args.annotations[0] if args.annotations else None
  if args.tfds:
    import tensorflow_datasets as tfds
    name, _, split = args.tfds.partition(":")
    source = tfds.data_source(name, split=split or "train", data_dir=args.tfds_data_dir)
  try:
    stats = build(source, args.data_folder, args.out, sample_lib.SampleConfig(**settings),
                  from_spec(args.tokenizer), args.num_shards, args.strict,
                  allow_outside=args.allow_outside)
  except BadSample as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(json.dumps(stats))
  return 0


def _main_tfds(args, settings) -> int:
  """--format=tfds: the JSONL files as splits of penguin_vl/NAME (tfds_penguin)."""
  from data_pipelines import tfds_penguin
  if args.tfds:
    print("error: --tfds reads a TFDS dataset: give --format=array_record", file=sys.stderr)
    return 2
  if args.name in {c.name for c in tfds_penguin.PenguinVl.BUILDER_CONFIGS}:
    print(f"error: --name={args.name} is a built-in config (`tfds build "
          f"data_pipelines/tfds_penguin.py --config={args.name} --manual_dir=DATA` builds "
          "it): give another name", file=sys.stderr)
    return 2
  names = [os.path.basename(a)[:-len(".jsonl")] if a.endswith(".jsonl") else
           os.path.basename(a) for a in args.annotations]
  if len(set(names)) < len(names):
    print(f"error: two --annotations files give the same split name ({names})", file=sys.stderr)
    return 2
  config = tfds_penguin.PenguinConfig(
      name=args.name, splits={n: os.path.abspath(a) for n, a in zip(names, args.annotations)},
      data_folder=os.path.abspath(args.data_folder), strict=args.strict,
      tokenizer=os.path.abspath(args.tokenizer) if args.tokenizer else "",
      allow_outside=args.allow_outside, **settings)
  try:
    builder = tfds_penguin.prepare(os.path.abspath(args.data_folder), args.out, config)
  except BadSample as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(json.dumps({"dataset": f"penguin_vl/{args.name}", "data_dir": args.out,
                    "path": os.fspath(builder.data_path), **dict(builder.info.metadata)}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
