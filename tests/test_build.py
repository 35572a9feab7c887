"""Building the release's JSONL as the TFDS dataset `penguin_vl`: every bad-input kind
named, counted and skipped (`data_pipelines.tfds_build`, `data_pipelines.build`, and the
checking loop `validate.valid_records` itself)."""
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from data_pipelines import records, validate
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
                       "sample": {"seq_len": 300}})
  r = subprocess.run([sys.executable, "-m", "data_pipelines.tfds_build",
                      f"--manual_dir={tmp_path}", f"--data_dir={tmp_path / 'tfds'}",
                      f"--config={config}"], cwd=REPO, capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  meta = json.load(open(tmp_path / "tfds" / "penguin_vl" / "bad" / "1.1.0" / "metadata.json"))
  assert meta["train"]["written"] == 3 and meta["train"]["skipped"] == 12
  assert meta["train"]["reasons"] == TWELVE
  skips = [l.split("] ", 1)[1] for l in r.stderr.splitlines() if "] skip " in l]
  assert len(skips) == 12 and "skip corrupt: corrupt_image (" in "\n".join(skips), skips
  assert "skip line 15: invalid_utf8 (" in "\n".join(skips)
  src = tfds.data_source("penguin_vl/bad", split="train", data_dir=str(tmp_path / "tfds"))
  recs = {r["id"]: r for r in (records.to_record(src[i]) for i in range(len(src)))}
  assert list(recs) == ["good_image", "good_video", "good_text"]      # the JSONL's order
  assert Image.open(io.BytesIO(recs["good_image"]["images"][0])).size == (160, 120)
  assert recs["good_video"]["video"] == (data / "ok.mp4").read_bytes()
  assert recs["good_text"]["video"] is None and recs["good_text"]["images"] == []
  assert recs["good_text"]["conversations"] == _conv("Hi", "Hello.")


def test_build_command_takes_the_sample_settings_as_flags(tmp_path):
  """`data_pipelines.build`: one split per JSONL, the sample settings as flags made from
  SampleConfig's fields (`--seq-len`), the counts in its last line and the metadata."""
  ann, data = make_dataset(tmp_path)
  r = subprocess.run([sys.executable, "-m", "data_pipelines.build", f"--annotations={ann}",
                      f"--data-folder={data}", f"--out={tmp_path / 'o'}", "--name=flags",
                      "--seq-len=300", "--no-use-tra"], cwd=REPO, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  out = json.loads(r.stdout.strip().splitlines()[-1])
  assert out["dataset"] == "penguin_vl/flags" and out["train"]["written"] == 3
  assert out["train"]["reasons"] == TWELVE
  assert len([l for l in r.stderr.splitlines() if "skip " in l]) == 12
  meta = json.load(open(tmp_path / "o" / "penguin_vl" / "flags" / "1.1.0" / "metadata.json"))
  assert meta == {"train": out["train"]}
  # the settings reached the check: a longer row admits the long sample
  r = subprocess.run([sys.executable, "-m", "data_pipelines.build", f"--annotations={ann}",
                      f"--data-folder={data}", f"--out={tmp_path / 'o2'}", "--name=longer",
                      "--seq-len=4096"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert json.loads(r.stdout.strip().splitlines()[-1])["train"]["written"] == 4


@pytest.mark.parametrize("workers", ["0", pytest.param("1", marks=pytest.mark.slow)])
def test_strict_mode_stops_with_the_reason(tmp_path, workers):
  """One process, or a Beam worker (which does not raise inside Beam: the driver names the
  first bad sample by line, the same line)."""
  ann, data = make_dataset(tmp_path)
  r = subprocess.run([sys.executable, "-m", "data_pipelines.build", f"--annotations={ann}",
                      f"--data-folder={data}", f"--out={tmp_path / 'o'}", "--strict",
                      f"--workers={workers}"],
                     cwd=REPO, capture_output=True, text=True, timeout=300)
  assert r.returncode == 1, r.stderr[-2000:]
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith("error: sample 'corrupt': corrupt_image"), last
  assert "Traceback" not in r.stderr
  left = [f for _, _, fs in os.walk(tmp_path / "o") for f in fs
          if "array_record" in f or f == "dataset_info.json"]
  assert left == []          # atomic: no partial split


def test_media_may_be_bytes_or_arrays(tmp_path):
  """A sample's media as encoded bytes or uint8 arrays (not only paths) check and become
  the same record bytes a path gives."""
  from data_pipelines import sample as S
  from data_pipelines.tokenizer import Qwen3Tokenizer
  rgb = np.random.RandomState(0).randint(0, 255, (100, 120, 3)).astype(np.uint8)
  buf = io.BytesIO()
  Image.fromarray(rgb).save(buf, format="PNG")
  (tmp_path / "x.png").write_bytes(buf.getvalue())
  items = [(0, {"id": "arr", "image": [rgb], "conversations": _conv()}),
           (1, {"id": "bytes", "image": [buf.getvalue()], "conversations": _conv()}),
           (2, {"id": "path", "image": ["x.png"], "conversations": _conv()})]
  reasons = __import__("collections").Counter()
  got = dict(validate.valid_records(items, str(tmp_path), Qwen3Tokenizer.from_vocab_file(),
                                    S.SampleConfig(), reasons, log=lambda *_: None))
  assert sorted(got) == [0, 1, 2] and not reasons
  assert got[1]["images"] == got[2]["images"] == [buf.getvalue()]
  assert np.array_equal(np.asarray(Image.open(io.BytesIO(got[0]["images"][0]))), rgb)


def test_builder_never_dies_on_one_sample_and_reads_only_its_folder(tmp_path, monkeypatch):
  """A decompression bomb, wrong JSON types, an error nobody foresaw, paths out of the data
  folder: each a named, counted skip; the loop goes on to the end."""
  import collections
  from data_pipelines import sample as S
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
  skipped, tok = [], Qwen3Tokenizer.from_vocab_file()

  def check(allow_outside=False):
    reasons = collections.Counter()
    good = list(validate.valid_records(records.read_jsonl(str(tmp_path / "a.jsonl")), str(d),
                                       tok, S.SampleConfig(), reasons, log=skipped.append,
                                       allow_outside=allow_outside))
    return len(good), reasons
  written, reasons = check()
  assert written == 1 and reasons == {"image_too_large": 1, "malformed_sample": 1,
                                      "outside_data_folder": 2, "unexpected_error": 1}
  assert "skip boom: unexpected_error (RuntimeError: nobody saw this coming)" in skipped
  assert any(l.startswith("skip up: outside_data_folder (../outside.png") for l in skipped)
  written, reasons = check(allow_outside=True)
  assert written == 2                             # ../outside.png read when allowed
  assert reasons["corrupt_image"] == 1            # /etc/passwd: read, not an image


def test_builder_usage_errors_are_one_line(tmp_path):
  (tmp_path / "a.jsonl").write_text("")
  (tmp_path / "file").write_text("x")
  for extra, msg in [([f"--out={tmp_path / 'o'}", "--name=release"], "is a built-in config"),
                     ([f"--out={tmp_path / 'file'}"], "is a file; give a folder")]:
    r = subprocess.run([sys.executable, "-m", "data_pipelines.build",
                        f"--annotations={tmp_path / 'a.jsonl'}", *extra], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, r.stderr
