"""Build the release's training data (JSONL + media folder) as the TFDS dataset `penguin_vl`.

  python -m data_pipelines.build --annotations=train.jsonl [--annotations=val.jsonl] \\
      --data-folder=DATA --out=DATA_DIR [--name=custom] [--seq-len=16384] \\
      [--tokenizer=DIR_WITH_tokenizer.json] [--strict] [--workers=N]

Each JSONL file becomes a split of `penguin_vl/NAME` in DATA_DIR (`train.jsonl` -> "train"),
what `python -m data_pipelines.tfds_build` builds from a manual dir (the same builder,
data_pipelines/tfds_penguin.py); training reads it with config.data.tfds_name=penguin_vl/NAME,
data.tfds_data_dir=DATA_DIR. The sample settings it is checked with are flags made from
`SampleConfig`'s fields (`--help` lists them; defaults: the paper's stage settings).

Every sample is checked by doing the real work once (JSON, conversation, media decoding,
image budget, TRA, tokenisation, length). A bad sample gets one line `skip ID: REASON
(detail)`, is counted and left out; `--strict` stops at the first one instead.
`--workers=N` checks them in N worker processes (an Apache Beam pipeline on this machine,
`pip install -e ".[beam]"`; the same files as one process). The last
line printed is a JSON object: the dataset, its folder and each split's counts
({"written", "skipped", "reasons": {reason: count}, "tokens", "patches"}, also in its
metadata.json).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from etils import epath

from data_pipelines import records, sample as sample_lib, tfds_penguin
from data_pipelines.errors import BadSample
from penguin_jax import settings


def parser() -> argparse.ArgumentParser:
  ap = argparse.ArgumentParser(prog="python -m data_pipelines.build", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--annotations", action="append", required=True,
                  help="the release's JSONL file; repeat it: each NAME.jsonl is split NAME")
  ap.add_argument("--name", default="custom",
                  help="the config name, penguin_vl/NAME (not 'release': that is the built-in "
                       "config of data_pipelines.tfds_build)")
  ap.add_argument("--data-folder", default=".", help="folder the media paths are relative to")
  ap.add_argument("--out", required=True, help="the TFDS data_dir to build into")
  ap.add_argument("--tokenizer", default="", help="dir with tokenizer.json, or a SentencePiece "
                                                   ".model (default: offline Qwen3)")
  ap.add_argument("--strict", action="store_true", help="stop at the first bad sample")
  ap.add_argument("--workers", type=int, default=0,
                  help="worker processes (an Apache Beam pipeline; 0: this process alone)")
  ap.add_argument("--allow-outside", action="store_true",
                  help="read media paths outside --data-folder (../, absolute paths)")
  settings.add_flags(ap, sample_lib.SampleConfig, sample_lib.STAGES)
  return ap


def main(argv=None) -> int:
  args = parser().parse_args(argv)
  for p, what in [*[(a, "--annotations") for a in args.annotations],
                  (args.data_folder, "--data-folder")]:
    if not epath.Path(p).exists():
      return _error(f"{what} {p} does not exist")
  if epath.Path(args.out).exists() and not epath.Path(args.out).is_dir():
    return _error(f"--out {args.out} is a file; give a folder")
  if args.name in {c.name for c in tfds_penguin.PenguinVl.BUILDER_CONFIGS}:
    return _error(f"--name={args.name} is a built-in config (`python -m data_pipelines.tfds_build "
                  f"--config={args.name} --manual_dir=DATA` builds it): give another name")
  names = [os.path.basename(a)[:-len(".jsonl")] if a.endswith(".jsonl") else
           os.path.basename(a) for a in args.annotations]
  if len(set(names)) < len(names):
    return _error(f"two --annotations files give the same split name ({names})")
  config = tfds_penguin.PenguinConfig(
      name=args.name, splits={n: records.absolute(a) for n, a in zip(names, args.annotations)},
      data_folder=records.absolute(args.data_folder), strict=args.strict,
      tokenizer=os.path.abspath(args.tokenizer) if args.tokenizer else "",
      allow_outside=args.allow_outside,
      sample=settings.from_flags(sample_lib.SampleConfig, args))
  try:
    builder = tfds_penguin.prepare(records.absolute(args.data_folder), args.out, config,
                                   workers=args.workers)
  except BadSample as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  except (ValueError, FileNotFoundError) as e:            # e.g. --tokenizer is not one
    return _error(str(e.args[0] if e.args else e))
  print(json.dumps({"dataset": f"penguin_vl/{args.name}", "data_dir": args.out,
                    "path": os.fspath(builder.data_path), **dict(builder.info.metadata)}))
  return 0


def _error(msg: str) -> int:
  print(f"error: {msg}", file=sys.stderr)
  return 2


if __name__ == "__main__":
  sys.exit(main())
