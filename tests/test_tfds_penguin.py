"""The release's JSONL as the TFDS dataset `penguin_vl` (data_pipelines/tfds_penguin.py),
read by the Grain pipeline through `tfds.data_source`: the same packed batches as the
JSONL read as it is (`records.JsonlSource`), bad inputs named and counted in the
dataset's metadata, a damaged record a named skip, an exact iterator state."""
import collections
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from data_pipelines import demo_data, pipeline as P, records, sample as sample_lib, tfds_penguin
from data_pipelines.tokenizer import SentencePieceTokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCFG = sample_lib.SampleConfig(min_tokens=4, max_tokens=64, seq_len=512)
CFG = P.PipelineConfig(max_patches=640, max_visual_tokens=384, packing_bins=4)
KW = dict(batch_size=1, seed=3)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
  """The demo corpus (48 + 12 samples, every kind) built as a TFDS dataset."""
  root = tmp_path_factory.mktemp("tfds")
  raw = root / "raw"
  demo_data.generate(str(raw), 48, 12, seed=0)
  texts = [t["value"] for l in open(raw / "train.jsonl") for t in json.loads(l)["conversations"]]
  tok = SentencePieceTokenizer.train(texts * 4, str(root / "spm"), vocab_size=1024)
  builder = tfds_penguin.prepare(str(raw), str(root / "tfds"), tfds_penguin.PenguinConfig(
      name="demo", sample=SCFG, tokenizer=str(root / "spm.model")))
  return root, tok, records.JsonlSource(str(raw / "train.jsonl")), builder


def test_the_tfds_split_packs_the_same_batches_as_the_jsonl_itself(demo):
  root, tok, jsonl, builder = demo
  meta = builder.info.metadata
  assert set(meta) == {"train", "val", "train_text", "val_text"}     # each NAME.jsonl a split
  assert meta["train"]["written"] == 48 and meta["train"]["skipped"] == 0
  assert meta["val"]["written"] == 12
  split = tfds_penguin.Split("penguin_vl/demo", "train", str(root / "tfds"))
  assert len(split) == 48
  kinds = {("video" if r["video"] else "image" if r["images"] else "text")
           for r in (split[i] for i in range(len(split)))}
  assert kinds == {"image", "video", "text"}
  for pi in range(2):                         # shuffled, and sharded over two processes
    kw = dict(**KW, shard_index=pi, shard_count=2)
    a = list(P.make_dataset(jsonl, tok, SCFG, CFG, **kw, one_pass=True))
    b = list(P.make_dataset(split, tok, SCFG, CFG, **kw, one_pass=True))
    assert len(a) == len(b) >= 3
    for x, y in zip(a, b):
      assert x.keys() == y.keys()
      for k in x:                             # tokens, labels, patches, every index
        np.testing.assert_array_equal(x[k], y[k], err_msg=k)
    assert sum(int((x["patch_segment_ids"] > 0).sum()) for x in a) > 0


def test_the_iterator_state_restores_the_stream_exactly(demo):
  root, tok, _, _ = demo
  split = tfds_penguin.Split("penguin_vl/demo", "train", str(root / "tfds"))
  it = iter(P.make_dataset(split, tok, SCFG, CFG, **KW))
  for _ in range(2):
    next(it)
  state = it.get_state()
  want = [next(it) for _ in range(3)]
  it2 = iter(P.make_dataset(split, tok, SCFG, CFG, **KW))
  it2.set_state(state)
  for w in want:
    got = next(it2)
    for k in w:
      np.testing.assert_array_equal(w[k], got[k], err_msg=k)


def test_a_damaged_record_is_a_named_skip_and_a_missing_dataset_one_line(demo, tmp_path):
  root, tok, _, _ = demo
  copy = tmp_path / "tfds"
  shutil.copytree(root / "tfds", copy)
  f = next((copy / "penguin_vl" / "demo" / "1.1.0").glob("penguin_vl-train.array_record-*"))
  data = bytearray(f.read_bytes())
  data[3000] ^= 0xFF
  f.write_bytes(bytes(data))
  split = tfds_penguin.Split("penguin_vl/demo", "train", str(copy))
  bad = [i for i in range(len(split)) if isinstance(split[i], records.Skipped)]
  assert 0 < len(bad) < len(split)
  assert split[bad[0]].where == f"penguin_vl/demo:train[{bad[0]}]"
  assert split[bad[0]].reason == "corrupt_record"
  skipped = collections.Counter()
  batches = list(P.make_dataset(split, tok, SCFG, CFG, **KW, one_pass=True, skipped=skipped))
  assert batches and skipped == {"corrupt_record": len(bad)}
  for name, split_name, want in [("penguin_vl/demo", "nope", "nope"),
                                 ("penguin_vl/nothere", "train", "nothere")]:
    with pytest.raises(FileNotFoundError) as e:
      tfds_penguin.Split(name, split_name, str(copy))
    msg = str(e.value)
    assert "\n" not in msg and want in msg and "python -m data_pipelines.tfds_build" in msg, msg


def test_build_cli_and_tfds_build_write_the_dataset(tmp_path, demo):
  """`python -m data_pipelines.build` and TFDS's own `build` command (`python -m
  data_pipelines.tfds_build`, i.e. `tfds build data_pipelines/tfds_penguin.py`) with a JSON
  config whose `sample` holds SampleConfig's fields."""
  root, _, _, _ = demo
  raw = root / "raw"
  r = subprocess.run([sys.executable, "-m", "data_pipelines.build",
                      f"--annotations={raw / 'val.jsonl'}", f"--data-folder={raw}",
                      f"--out={tmp_path / 'a'}", "--name=val", f"--tokenizer={root / 'spm.model'}",
                      "--seq-len=512", "--max-tokens=64", "--min-tokens=4"],
                     cwd=REPO, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  out = json.loads(r.stdout.strip().splitlines()[-1])
  assert out["dataset"] == "penguin_vl/val" and out["val"]["written"] == 12
  assert len(tfds_penguin.Split("penguin_vl/val", "val", str(tmp_path / "a"))) == 12
  config = {"name": "small", "splits": {"held_out": "val.jsonl"}, "tokenizer": "../spm.model",
            "sample": {"seq_len": 512, "max_tokens": 64, "min_tokens": 4}}
  r = subprocess.run([sys.executable, "-m", "data_pipelines.tfds_build", f"--manual_dir={raw}",
                      f"--data_dir={tmp_path / 'b'}", f"--config={json.dumps(config)}"],
                     cwd=REPO, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  meta = json.load(open(tmp_path / "b" / "penguin_vl" / "small" / "1.1.0" / "metadata.json"))
  h = meta["held_out"]
  assert meta == {"held_out": {"written": 12, "skipped": 0, "reasons": {},
                               "tokens": h["tokens"], "patches": h["patches"]}}
  assert h["tokens"] > 12 * 10 and h["patches"] > 0
  # the totals are the examples' own counts
  src = tfds_penguin.Split("penguin_vl/small", "held_out", str(tmp_path / "b"))
  assert h["patches"] == sum(src[i]["num_patches"] for i in range(len(src)))
  assert h["tokens"] == sum(src[i]["num_tokens"] for i in range(len(src)))


def test_a_json_config_with_an_unknown_sample_setting_is_one_line(tmp_path, demo):
  root, _, _, _ = demo
  config = {"name": "typo", "sample": {"seq_lenn": 512}}
  r = subprocess.run([sys.executable, "-m", "data_pipelines.tfds_build",
                      f"--manual_dir={root / 'raw'}", f"--data_dir={tmp_path}",
                      f"--config={json.dumps(config)}"], cwd=REPO, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode != 0 and "unknown setting(s) ['seq_lenn']" in r.stderr, r.stderr[-2000:]
