"""The Grain pipeline: packed static-shape batches whose indices are right, and an
iterator state that restores the stream exactly."""
import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from data_pipelines import pipeline as P, records, sample as sample_lib
from data_pipelines.tokenizer import IMAGE_TOKEN_ID, Qwen3Tokenizer
from test_video import write_video


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
  root = tmp_path_factory.mktemp("pipe")
  d = root / "data"
  d.mkdir()
  rs = np.random.RandomState(0)
  lines = []
  for i in range(14):
    h, w = [(84, 84), (56, 112), (140, 70), (112, 112)][i % 4]
    Image.fromarray(rs.randint(0, 255, (h, w, 3)).astype(np.uint8)).save(d / f"{i}.png")
    lines.append({"id": f"img{i}", "image": [f"{i}.png"], "conversations": [
        {"from": "human", "value": "<image>\nWhat is this?" + " more" * (i % 5)},
        {"from": "gpt", "value": f"Picture number {i}."}]})
  write_video(d / "v.mp4", n=30, cut_at=20)
  lines.append({"id": "vid", "video": ["v.mp4"], "conversations": [
      {"from": "human", "value": "<video>\nWhat happens?"}, {"from": "gpt", "value": "A cut."}]})
  for i in range(5):
    lines.append({"id": f"txt{i}", "conversations": [
        {"from": "human", "value": "Say hi" + "!" * i}, {"from": "gpt", "value": "Hi."}]})
  (root / "a.jsonl").write_text("\n".join(json.dumps(l) for l in lines))
  scfg = sample_lib.SampleConfig(seq_len=256, min_tokens=4, max_tokens=64)
  tok = Qwen3Tokenizer.from_vocab_file()
  source = records.JsonlSource(str(root / "a.jsonl"), str(d))
  assert len(source) == 20
  return source, scfg, tok


CFG = P.PipelineConfig(max_patches=256, max_visual_tokens=128, packing_bins=4)
KW = dict(batch_size=2, seed=1)


def test_batches_are_static_and_indices_consistent(shards):
  source, scfg, tok = shards
  it = iter(P.make_dataset(source, tok, scfg, CFG, **KW))
  real_tokens = 0
  for _ in range(6):
    b = next(it)
    assert b["input_ids"].shape == (2, 256) and b["patches"].shape == (2, 256, 588)
    assert b["merge_index"].shape == (2, 128, 4) and b["visual_positions"].shape == (2, 128)
    for r in range(2):
      ids, vis = b["input_ids"][r], b["visual_positions"][r]
      valid = vis < 256
      # every visual slot lands on an image token, and every image token gets one
      assert (ids[vis[valid]] == IMAGE_TOKEN_ID).all()
      assert valid.sum() == (ids == IMAGE_TOKEN_ID).sum()
      # visual tokens read patches of their own frame, of their own sample
      src = b["merge_index"][r][valid, 0]
      assert (b["patch_segment_ids"][r][src] == b["token_segment_ids"][r][valid]).all()
      assert (b["segment_ids"][r][vis[valid]] > 0).all()
      # labels never on image tokens or padding
      assert (b["labels"][r][ids == IMAGE_TOKEN_ID] == -100).all()
      assert (b["labels"][r][b["segment_ids"][r] == 0] == -100).all()
      np.testing.assert_allclose(b["merge_weight"][r][valid].sum(-1), 1.0, rtol=1e-6)
      real_tokens += (b["segment_ids"][r] > 0).sum()
  assert real_tokens > 0.5 * 6 * 2 * 256  # packing fills rows


def test_iterator_state_restores_the_stream_exactly(shards):
  source, scfg, tok = shards
  ds = P.make_dataset(source, tok, scfg, CFG, **KW)
  it = iter(ds)
  for _ in range(2):
    next(it)
  state = it.get_state()
  after = [next(it) for _ in range(3)]
  it2 = iter(ds)
  it2.set_state(state)
  again = [next(it2) for _ in range(3)]
  for a, b in zip(after, again):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


def test_processes_read_disjoint_shards(shards):
  source, scfg, tok = shards
  seen = []
  for pi in range(2):
    it = P.make_dataset(source, tok, scfg, CFG, **KW, one_pass=True, shard_index=pi,
                        shard_count=2)
    seen.append(sum(int((b["segment_ids"] > 0).sum()) for b in it))
  one = sum(int((b["segment_ids"] > 0).sum()) for b in
            P.make_dataset(source, tok, scfg, CFG, **KW, one_pass=True))
  assert seen[0] > 0 and seen[1] > 0 and seen[0] + seen[1] <= one + 1


@pytest.mark.slow
@pytest.mark.multiprocess
def test_worker_processes_are_deterministic_and_restorable(shards):
  """With 2 worker processes (each packs its own slice of the records) the stream is the
  same on every run, and a saved iterator state restores it exactly."""
  source, scfg, tok = shards
  cfg = P.PipelineConfig(**{**CFG.__dict__, "workers": 2})
  ds = P.make_dataset(source, tok, scfg, cfg, **KW)
  it = iter(ds)
  first = next(it)
  state = it.get_state()
  rest = [next(it) for _ in range(2)]
  it2 = iter(ds)
  np.testing.assert_array_equal(next(it2)["input_ids"], first["input_ids"])
  it3 = iter(ds)
  it3.set_state(state)
  for a in rest:
    b = next(it3)
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


def test_data_where_nothing_fits_stops_with_one_line_instead_of_skipping_forever(shards):
  """Rows of 8 tokens hold no sample: after max_skips_in_a_row skips the pipeline stops
  with NoProgress naming the reason and what to change (it used to loop forever)."""
  import dataclasses
  source, scfg, tok = shards
  cfg = dataclasses.replace(CFG, max_skips_in_a_row=25)
  skipped = __import__("collections").Counter()
  it = iter(P.make_dataset(source, tok, dataclasses.replace(scfg, seq_len=8), cfg, **KW,
                           skipped=skipped))
  with pytest.raises(P.NoProgress) as e:
    next(it)
  import re
  msg = str(e.value)      # (Grain maps in prefetch threads: a few more may be counted)
  m = re.match(r"no usable sample in the last (\d+) \(too_long (\d+)\): raise data.seq_len \(8\)", msg)
  assert m and int(m.group(1)) == int(m.group(2)) >= 25 and "\n" not in msg, msg
  assert skipped["too_long"] >= 25            # counted where the caller can see it


def test_skips_are_counted_logged_a_few_times_per_reason_and_named(shards, tmp_path, caplog):
  """A source's bad samples (here: a missing image, a line that is not JSON) are counted
  by reason in the caller's counter; each reason is logged the first few times only."""
  import collections
  import logging
  lines = [{"id": f"gone{i}", "image": ["nope.png"], "conversations": [
      {"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "X."}]}
      for i in range(P.LOGGED_PER_REASON + 3)]
  lines.append({"id": "ok", "conversations": [{"from": "human", "value": "Hi"},
                                              {"from": "gpt", "value": "Hello."}]})
  (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(l) for l in lines) + "\n{oops\n")
  _, scfg, tok = shards
  skipped = collections.Counter()
  with caplog.at_level(logging.WARNING):
    batches = list(P.make_dataset(records.JsonlSource(str(tmp_path / "b.jsonl")), tok, scfg,
                                  CFG, **KW, one_pass=True, skipped=skipped))
  assert skipped == {"missing_file": P.LOGGED_PER_REASON + 3, "invalid_json": 1}
  assert sum(int((b["segment_ids"] > 0).any()) for b in batches) == 1
  named = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skip ")]
  assert len(named) == P.LOGGED_PER_REASON + 1        # (Grain may map them in any order)
  assert sum(bool(re.match(r"skip gone\d: missing_file \(nope.png\)", m)) for m in named) \
      == P.LOGGED_PER_REASON
  assert any(m.startswith("skip line 10: invalid_json") for m in named)


def _with_bad_lines(shards, tmp_path) -> records.JsonlSource:
  """The 20 good samples of `shards`, then 4 with a missing image and 2 lines not JSON."""
  source, _, _ = shards
  lines = open(source.path).read().splitlines()
  lines += [json.dumps({"id": f"gone{i}", "image": ["nope.png"], "conversations": [
      {"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "X."}]})
      for i in range(4)] + ["{oops", "[1, 2"]
  (tmp_path / "bad.jsonl").write_text("\n".join(lines) + "\n")
  return records.JsonlSource(str(tmp_path / "bad.jsonl"), source.folder)


def _carried(shards, source, cfg, batches: int):
  """(samples, {reason: skips}) in `batches` batches, from the batches' own fields."""
  _, scfg, tok = shards
  it = iter(P.make_dataset(source, tok, scfg, cfg, **KW))
  samples, skips = 0, np.zeros(len(P.REASONS), np.int64)
  for _ in range(batches):
    b = next(it)
    samples += int(b["data_sources"].sum())
    skips += b["data_skipped"].sum(0)
  return samples, {r: int(n) for r, n in zip(P.REASONS, skips) if n}


def test_skips_ride_in_the_batches(shards, tmp_path):
  """Each skip's count travels on a later usable sample into `data_skipped`: over many
  epochs of 20 good and 6 bad records the batches carry 6 skips per 20 samples (4
  missing_file, 2 invalid_json), up to the skips still waiting for a sample."""
  samples, skips = _carried(shards, _with_bad_lines(shards, tmp_path), CFG, 40)
  assert set(skips) == {"missing_file", "invalid_json"}
  assert abs(skips["missing_file"] - samples * 4 / 20) <= 4 + 4
  assert abs(skips["invalid_json"] - samples * 2 / 20) <= 2 + 2
  assert samples > 100


@pytest.mark.slow
@pytest.mark.multiprocess
def test_skips_made_in_worker_processes_are_counted(shards, tmp_path):
  """With 2 worker processes the skips happen there (the caller's counter sees none) and
  still reach the batches, in the same proportion as in one process."""
  import collections
  cfg = P.PipelineConfig(**{**CFG.__dict__, "workers": 2})
  source = _with_bad_lines(shards, tmp_path)
  here = collections.Counter()
  _, scfg, tok = shards
  it = iter(P.make_dataset(source, tok, scfg, cfg, **KW, skipped=here))
  next(it)
  assert not here                                  # decoded in the workers
  samples, skips = _carried(shards, source, cfg, 40)
  assert set(skips) == {"missing_file", "invalid_json"}
  assert abs(skips["missing_file"] - samples * 4 / 20) <= 2 * (4 + 4)
  assert abs(skips["invalid_json"] - samples * 2 / 20) <= 2 * (2 + 2)


def test_every_reason_in_the_code_is_registered():
  """Skips travel as an index into errors.REASONS: every reason the code raises is there
  (an unregistered one is a TypeError when raised)."""
  import glob
  from data_pipelines import errors
  found = set()
  for path in glob.glob(os.path.join(os.path.dirname(P.__file__), "*.py")):
    text = open(path).read()
    found |= set(re.findall(r'BadSample\(\s*"([a-z_]+)"', text))
    found |= set(re.findall(r'Skipped\([^)]*?,\s*"([a-z_]+)"', text))
  assert len(found) >= 15 and found <= set(errors.REASONS), found - set(errors.REASONS)
  with pytest.raises(TypeError, match="not in errors.REASONS"):
    errors.BadSample("no_such_reason")
