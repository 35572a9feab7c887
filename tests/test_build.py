"""`python -m data_pipelines.build`: every bad-input kind named, counted and skipped."""
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from data_pipelines.build import decode_record
from test_video import write_video

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _png(path, h, w, seed=0):
  Image.fromarray(np.random.RandomState(seed).randint(0, 255, (h, w, 3)).astype(np.uint8)).save(path)


def _conv(q="<image>\nWhat is it?", a="A thing."):
  return [{"from": "human", "value": q}, {"from": "gpt", "value": a}]


def make_dataset(root):
  d = root / "data"
  d.mkdir()
  _png(d / "ok.png", 120, 160)
  _png(d / "tall.png", 600, 2)
  (d / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
  (d / "empty.png").write_bytes(b"")
  write_video(d / "ok.mp4", n=30, cut_at=20)
  write_video(tmp := d / "full.mkv", n=60, cut_at=100)   # Matroska: header first
  full = tmp.read_bytes()
  (d / "trunc.mkv").write_bytes(full[: len(full) // 3])
  lines = [
      {"id": "good_image", "image": ["ok.png"], "conversations": _conv()},
      {"id": "good_video", "video": ["ok.mp4"], "conversations": _conv("<video>\nWhat happens?", "It moves.")},
      {"id": "good_text", "conversations": _conv("Hi", "Hello.")},
      {"id": "corrupt", "image": ["corrupt.jpg"], "conversations": _conv()},
      {"id": "missing", "image": ["nope.png"], "conversations": _conv()},
      {"id": "truncated", "video": ["trunc.mkv"], "conversations": _conv("<video>\nWhat?", "X.")},
      {"id": "zero", "image": ["empty.png"], "conversations": _conv()},
      {"id": "ratio", "image": ["tall.png"], "conversations": _conv()},
      {"id": "tags", "image": ["ok.png"], "conversations": _conv("<image> <image> two?")},
      {"id": "empty_conv", "conversations": []},
      {"id": "malformed", "conversations": [{"from": "human"}]},
      {"id": "role", "conversations": [{"from": "bot", "value": "x"}]},
      {"id": "long", "conversations": _conv("word " * 400, "ok")},
  ]
  text = "\n".join(json.dumps(l) for l in lines).encode()
  text += b"\n{not json\n" + b'{"id": "bad utf8 \xff\xfe"}\n'
  (root / "train.jsonl").write_bytes(text)
  return root / "train.jsonl", d


TWELVE = {"corrupt_image": 1, "missing_file": 1, "truncated_video": 1, "zero_size_image": 1,
          "aspect_ratio": 1, "image_tag_mismatch": 1, "empty_conversation": 1,
          "malformed_conversation": 1, "unknown_role": 1, "too_long": 1, "invalid_json": 1,
          "invalid_utf8": 1}


def test_tfds_builder_names_counts_and_skips_every_bad_kind(tmp_path):
  """TFDS's own `build` command (`tfds build data_pipelines/tfds_penguin.py`) on the same
  data: the 12 skips as lines, their counts in the dataset's metadata, the 3 good samples
  read back with tfds.data_source."""
  import tensorflow_datasets as tfds
  ann, data = make_dataset(tmp_path)
  config = json.dumps({"name": "bad", "splits": {"train": str(ann)}, "data_folder": str(data),
                       "max_length": 300})
  r = subprocess.run([sys.executable, "-m", "data_pipelines.tfds_build",
                      f"--manual_dir={tmp_path}", f"--data_dir={tmp_path / 'tfds'}",
                      f"--config={config}"], cwd=REPO, capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  meta = json.load(open(tmp_path / "tfds" / "penguin_vl" / "bad" / "1.0.0" / "metadata.json"))
  assert meta["train"]["written"] == 3 and meta["train"]["skipped"] == 12
  assert meta["train"]["reasons"] == TWELVE
  skips = [l.split("] ", 1)[1] for l in r.stderr.splitlines() if "] skip " in l]
  assert len(skips) == 12 and "skip corrupt: corrupt_image (" in "\n".join(skips), skips
  assert "skip line 15: invalid_utf8 (" in "\n".join(skips)
  src = tfds.data_source("penguin_vl/bad", split="train", data_dir=str(tmp_path / "tfds"))
  from data_pipelines.tfds_penguin import to_record
  recs = {r["id"]: r for r in (to_record(src[i]) for i in range(len(src)))}
  assert list(recs) == ["good_image", "good_video", "good_text"]      # the JSONL's order
  assert Image.open(io.BytesIO(recs["good_image"]["images"][0])).size == (160, 120)
  assert recs["good_video"]["video"] == (data / "ok.mp4").read_bytes()
  assert recs["good_text"]["video"] is None and recs["good_text"]["images"] == []
  assert recs["good_text"]["conversations"] == _conv("Hi", "Hello.")


def test_builder_names_counts_and_skips_every_bad_kind(tmp_path):
  ann, data = make_dataset(tmp_path)
  out = tmp_path / "out"
  r = subprocess.run([sys.executable, "-m", "data_pipelines.build", "--format=array_record",
                      f"--annotations={ann}", f"--data-folder={data}", f"--out={out}",
                      "--max-length=300", "--num-shards=2"], cwd=REPO, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 0, r.stderr
  lines = r.stdout.strip().splitlines()
  stats = json.loads(lines[-1])
  assert stats["written"] == 3 and stats["skipped"] == 12
  assert stats["reasons"] == TWELVE
  skips = [l for l in lines if l.startswith("skip ")]
  assert len(skips) == 12
  assert any(l.startswith("skip 'corrupt': corrupt_image") or l.startswith("skip corrupt: corrupt_image") for l in skips)
  # the records read back
  from array_record.python.array_record_module import ArrayRecordReader
  recs = []
  for f in sorted(os.listdir(out)):
    if f.endswith(".array_record"):
      rd = ArrayRecordReader(str(out / f))
      recs += [decode_record(x) for x in rd.read_all()]
  assert sorted(r["id"] for r in recs) == ["good_image", "good_text", "good_video"]
  img = next(r for r in recs if r["id"] == "good_image")
  assert Image.open(io.BytesIO(img["images"][0])).size == (160, 120)
  vid = next(r for r in recs if r["id"] == "good_video")
  assert vid["video"] == (data / "ok.mp4").read_bytes() and vid["num_patches"] > 0


@pytest.mark.parametrize("fmt", ["tfds", "array_record"])
def test_strict_mode_stops_with_the_reason(tmp_path, fmt):
  ann, data = make_dataset(tmp_path)
  r = subprocess.run([sys.executable, "-m", "data_pipelines.build", f"--format={fmt}",
                      f"--annotations={ann}", f"--data-folder={data}", f"--out={tmp_path / 'o'}",
                      "--strict"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert r.returncode == 1, r.stderr[-2000:]
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith("error: sample 'corrupt': corrupt_image"), last
  left = [f for _, _, fs in os.walk(tmp_path / "o") for f in fs
          if "array_record" in f or f in ("stats.json", "dataset_info.json")]
  assert left == []          # atomic: no partial shard or split, no stats


def test_builder_accepts_a_data_source(tmp_path):
  """The random-access data-source path (what `tfds.data_source` returns): media as bytes
  or arrays, conversations as a JSON string."""
  from data_pipelines import build as B, sample as S
  from data_pipelines.tokenizer import Qwen3Tokenizer
  rgb = np.random.RandomState(0).randint(0, 255, (100, 120, 3)).astype(np.uint8)
  buf = io.BytesIO()
  Image.fromarray(rgb).save(buf, format="PNG")
  source = [
      {"id": b"arr", "image": [rgb], "conversations": json.dumps(_conv())},
      {"id": "bytes", "image": [buf.getvalue()], "conversations": _conv()},
      {"id": "badjson", "conversations": "{oops"},
  ]
  stats = B.build(source, str(tmp_path), str(tmp_path / "o"), S.SampleConfig(),
                  Qwen3Tokenizer.from_vocab_file(), log=lambda *_: None)
  assert stats["written"] == 2 and stats["reasons"] == {"invalid_json": 1}


def test_builder_never_dies_on_one_sample_and_reads_only_its_folder(tmp_path, monkeypatch):
  """A decompression bomb, wrong JSON types, an error nobody foresaw, paths out of the data
  folder: each a named, counted skip; the build finishes with its summary."""
  from data_pipelines import build as B, sample as S
  from data_pipelines.tokenizer import Qwen3Tokenizer
  from PIL import Image as PILImage
  d = tmp_path / "data"
  d.mkdir()
  _png(d / "ok.png", 56, 56)
  _png(d / "big.png", 120, 160)
  _png(tmp_path / "outside.png", 56, 56)
  lines = [
      {"id": "good", "image": ["ok.png"], "conversations": _conv()},
      {"id": "bomb", "image": ["big.png"], "conversations": _conv()},
      {"id": "int_image", "image": 5, "conversations": _conv()},
      {"id": "up", "image": ["../outside.png"], "conversations": _conv()},
      {"id": "abs", "image": ["/etc/passwd"], "conversations": _conv()},
      {"id": "boom", "conversations": _conv("Hi", "Hello.")},
  ]
  (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(l) for l in lines))
  monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 4000)     # big.png: 19,200 > 2 x 4,000
  real = S.process
  def process(sample, *a, **k):
    if sample["id"] == "boom":
      raise RuntimeError("nobody saw this coming")
    return real(sample, *a, **k)
  monkeypatch.setattr(S, "process", process)
  skipped = []
  stats = B.build(str(tmp_path / "a.jsonl"), str(d), str(tmp_path / "o"), S.SampleConfig(),
                  Qwen3Tokenizer.from_vocab_file(), log=skipped.append)
  assert stats["written"] == 1 and stats["skipped"] == 5
  assert stats["reasons"] == {"image_too_large": 1, "malformed_sample": 1,
                              "outside_data_folder": 2, "unexpected_error": 1}
  assert "skip boom: unexpected_error (RuntimeError: nobody saw this coming)" in skipped
  assert any(l.startswith("skip up: outside_data_folder (../outside.png") for l in skipped)
  stats = B.build(str(tmp_path / "a.jsonl"), str(d), str(tmp_path / "o2"), S.SampleConfig(),
                  Qwen3Tokenizer.from_vocab_file(), log=skipped.append, allow_outside=True)
  assert stats["written"] == 2                    # ../outside.png read when allowed
  assert stats["reasons"]["corrupt_image"] == 1   # /etc/passwd: read, not an image


def test_builder_usage_errors_are_one_line(tmp_path):
  (tmp_path / "a.jsonl").write_text("")
  (tmp_path / "file").write_text("x")
  for extra, msg in [(["--num-shards=0", f"--out={tmp_path / 'o'}"], "error: --num-shards=0"),
                     ([f"--out={tmp_path / 'file'}"], "is a file; give a folder")]:
    r = subprocess.run([sys.executable, "-m", "data_pipelines.build",
                        f"--annotations={tmp_path / 'a.jsonl'}", *extra], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, r.stderr
