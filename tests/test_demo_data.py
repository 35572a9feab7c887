"""The embedded demo corpus: deterministic, every kind present, and it builds cleanly."""
import hashlib
import json
import os

from data_pipelines import build as build_lib, demo_data, sample as sample_lib
from data_pipelines.tokenizer import Qwen3Tokenizer


def _digest(root):
  h = hashlib.sha256()
  for split in ("train", "val"):
    h.update(open(os.path.join(root, f"{split}.jsonl"), "rb").read())
  for f in sorted(os.listdir(os.path.join(root, "media"))):
    if f.endswith(".png"):
      h.update(open(os.path.join(root, "media", f), "rb").read())
  return h.hexdigest()


def test_demo_data_is_deterministic_and_builds(tmp_path):
  a, b = tmp_path / "a", tmp_path / "b"
  assert demo_data.generate(str(a), 10, 5, seed=3) == {"train": 10, "val": 5}
  demo_data.generate(str(b), 10, 5, seed=3)
  assert _digest(a) == _digest(b)
  lines = [json.loads(l) for l in open(a / "train.jsonl")]
  kinds = {l["id"].rsplit("-", 1)[1] for l in lines}
  assert kinds == set(demo_data.KINDS)
  stats = build_lib.build(str(a / "train.jsonl"), str(a), str(tmp_path / "out"),
                          sample_lib.SampleConfig(min_tokens=4, max_tokens=256, max_length=2048),
                          Qwen3Tokenizer.from_vocab_file(), log=lambda *_: None)
  assert stats["written"] == 10 and stats["skipped"] == 0
