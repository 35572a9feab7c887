"""The parallel build (data_pipelines/beam_build.py): the same `penguin_vl` dataset from
Apache Beam's DirectRunner with 1 and 2 worker processes as from one process: the same
records in the same order (the JSONL's), the same metadata (counts and skip reasons), every
bad sample named once."""
import json
import os
import subprocess
import sys

import pytest

from test_build import TWELVE, make_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow


def _build(tmp_path, ann, data, name, *extra):
  r = subprocess.run([sys.executable, "-m", "data_pipelines.build", f"--annotations={ann}",
                      f"--data-folder={data}", f"--out={tmp_path / name}", f"--name={name}",
                      "--seq-len=300", *extra], cwd=REPO, capture_output=True, text=True,
                     timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  return r


def _records(tmp_path, name):
  import tensorflow_datasets as tfds
  from data_pipelines import records
  src = tfds.data_source(f"penguin_vl/{name}", split="train", data_dir=str(tmp_path / name))
  return [records.to_record(src[i]) for i in range(len(src))]


def test_one_and_two_beam_workers_build_what_one_process_builds(tmp_path):
  ann, data = make_dataset(tmp_path)
  lines = ann.read_bytes().splitlines(keepends=True)
  good = [l for l in lines if b'"good_' in l]
  ann.write_bytes(b"".join(lines + good * 20))         # 63 good samples, 12 bad
  _build(tmp_path, ann, data, "plain")
  meta = {}
  for name, workers in [("one", 1), ("two", 2)]:
    r = _build(tmp_path, ann, data, name, f"--workers={workers}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    meta[name] = out["train"]
    skips = [l for l in r.stderr.splitlines() if "skip " in l]
    assert len(skips) == 12, skips                     # each bad sample named once
  plain = json.load(open(tmp_path / "plain" / "penguin_vl" / "plain" / "1.1.0" / "metadata.json"))["train"]
  assert plain["written"] == 63 and plain["reasons"] == TWELVE
  assert meta["one"] == meta["two"] == plain
  want = _records(tmp_path, "plain")
  assert [r["id"] for r in want[:3]] == ["good_image", "good_video", "good_text"]
  assert _records(tmp_path, "one") == want and _records(tmp_path, "two") == want
  # Not compared byte for byte: a serialized tf.Example holds its features as a protobuf
  # map, which each process writes in its own (hash-seeded) order; two one-process builds
  # differ as much. The records, decoded, are the same in the same order (above).
