"""The data on an object store (gs://), against the in-memory stand-in for GCS
(tests/fake_gcs.py): a dataset built from JSONL and media on gs:// (frame folders
included) holds the records of the same build from a local folder, with the same counts;
`launch.eval`'s JSONL source reads gs:// as it reads a folder; a dataset on gs:// is found
by its metadata (TFDS through etils.epath), and a missing one is one line naming the
gs:// folder. The examples' ArrayRecord files themselves are read by ArrayRecord's own
GCS reader (C++, not through fsspec): not exercised offline."""
import json
import shutil

import pytest
import tensorflow_datasets as tfds

import fake_gcs
from data_pipelines import build, records, tfds_penguin
from test_build import TWELVE, make_dataset


def _dataset(root):
  """test_build's twelve bad kinds and three good samples, a frame-folder video (frames
  in name order) and a path that leads out of the media folder."""
  root.mkdir()
  ann, data = make_dataset(root)
  (data / "clip").mkdir()
  for i in range(4):
    shutil.copy(data / "ok.png", data / "clip" / f"frame_{i:02d}.png")
  extra = [{"id": "frames", "video": ["clip"], "conversations": [
               {"from": "human", "value": "<video>\nWhat happens?"},
               {"from": "gpt", "value": "Nothing."}]},
           {"id": "escape", "image": ["../train.jsonl"], "conversations": [
               {"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "X."}]}]
  ann.write_bytes(ann.read_bytes() + b"".join(json.dumps(e).encode() + b"\n" for e in extra))
  return ann, data


def _build(ann, data, out, name):
  assert build.main([f"--annotations={ann}", f"--data-folder={data}", f"--out={out}",
                     f"--name={name}", "--seq-len=300"]) == 0
  src = tfds.data_source(f"penguin_vl/{name}", split="train", data_dir=str(out))
  meta = tfds.builder(f"penguin_vl/{name}", data_dir=str(out)).info.metadata["train"]
  return [records.to_record(src[i]) for i in range(len(src))], meta


def test_a_build_from_gs_inputs_equals_the_build_from_a_local_folder(gcs, tmp_path):
  ann, data = _dataset(tmp_path / "raw")
  fake_gcs.upload(tmp_path / "raw", f"{gcs}/raw")
  local, local_meta = _build(ann, data, tmp_path / "local", "here")
  remote, remote_meta = _build(f"{gcs}/raw/train.jsonl", f"{gcs}/raw/data", tmp_path / "gs", "there")
  assert [r["id"] for r in local] == ["good_image", "good_video", "good_text", "frames"]
  assert remote == local                              # media bytes, frames, conversations
  assert len(local[3]["video"]) == 4                  # the folder's four frames
  assert remote_meta == local_meta
  assert local_meta["reasons"] == {**TWELVE, "outside_data_folder": 1}


def test_the_jsonl_source_reads_gs_as_a_local_folder(gcs, tmp_path):
  ann, data = _dataset(tmp_path / "raw")
  fake_gcs.upload(tmp_path / "raw", f"{gcs}/raw")
  here = records.JsonlSource(str(ann), str(data), allow_outside=False)
  there = records.JsonlSource(f"{gcs}/raw/train.jsonl", f"{gcs}/raw/data", allow_outside=False)
  assert len(here) == len(there) == 17
  got = [there[i] for i in range(17)]
  assert got == [here[i] for i in range(17)]
  assert got[-1] == records.Skipped("escape", "outside_data_folder",
                                    "../train.jsonl (pass --allow-outside to read it)")
  with pytest.raises(FileNotFoundError, match="gs://bucket/raw/nope.jsonl: no such file"):
    records.JsonlSource(f"{gcs}/raw/nope.jsonl")


def test_a_dataset_on_gs_is_found_by_its_metadata_and_a_missing_one_is_one_line(gcs, tmp_path):
  ann, data = make_dataset(tmp_path)
  _, meta = _build(ann, data, tmp_path / "tfds", "up")
  fake_gcs.upload(tmp_path / "tfds", f"{gcs}/tfds")
  b = tfds.builder("penguin_vl/up", data_dir=f"{gcs}/tfds")
  assert b.info.splits["train"].num_examples == 3 and b.info.metadata["train"] == meta
  with pytest.raises(FileNotFoundError) as e:
    tfds_penguin.Split("penguin_vl/up", "train", f"{gcs}/elsewhere")
  msg = str(e.value)
  assert "\n" not in msg and "in gs://bucket/elsewhere" in msg and "data_pipelines.tfds_build" in msg
