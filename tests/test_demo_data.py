"""The embedded demo corpus: deterministic, every kind present, and it builds cleanly."""
import hashlib
import json
import os

import collections

from data_pipelines import demo_data, records, sample as sample_lib, validate
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
  reasons = collections.Counter()
  good = list(validate.valid_records(
      records.read_jsonl(str(a / "train.jsonl")), str(a), Qwen3Tokenizer.from_vocab_file(),
      sample_lib.SampleConfig(min_tokens=4, max_tokens=256, seq_len=2048), reasons))
  assert len(good) == 10 and not reasons


def test_validation_questions_need_the_image_and_their_answers_are_balanced(tmp_path):
  """The validation split (what launch.demo scores) asks only what the image answers,
  each kind's answers cycling through its classes; its text-only twin has no media."""
  import collections
  n_per_kind = 12
  demo_data.generate(str(tmp_path), 8, n_per_kind * len(demo_data.VAL_KINDS), seed=5)
  val = [json.loads(l) for l in open(tmp_path / "val.jsonl")]
  by_kind = collections.defaultdict(collections.Counter)
  for s in val:
    kind = s["id"].rsplit("-", 1)[1]
    assert kind in demo_data.VAL_KINDS and (s.get("image") or s.get("video"))
    by_kind[kind][s["conversations"][-1]["value"]] += 1
  assert set(by_kind) == set(demo_data.VAL_KINDS)
  for kind, answers in by_kind.items():
    k = demo_data.VAL_CLASSES[kind]
    assert len(answers) == min(k, n_per_kind), (kind, answers)   # every class, or 12 of them
    assert max(answers.values()) - min(answers.values()) <= 1, (kind, answers)
  assert by_kind["colour"]["Red."] == 2 and by_kind["count"]["3."] == 3
  text = [json.loads(l) for l in open(tmp_path / "val_text.jsonl")]
  assert [t["id"] for t in text] == [s["id"] for s in val]
  for s, t in zip(val, text):
    assert "image" not in t and "video" not in t
    q, a = s["conversations"][0]["value"], t["conversations"][0]["value"]
    assert a == q.replace("<image>\n", "").replace("<video>\n", "") and "<" not in a
    assert t["conversations"][1] == s["conversations"][1]
