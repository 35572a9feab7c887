"""The Grain pipeline: packed static-shape batches whose indices are right, and an
iterator state that restores the stream exactly."""
import json

import numpy as np
import pytest
from PIL import Image

from data_pipelines import build as build_lib, pipeline as P, sample as sample_lib
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
  scfg = sample_lib.SampleConfig(min_tokens=4, max_tokens=64)
  tok = Qwen3Tokenizer.from_vocab_file()
  stats = build_lib.build(str(root / "a.jsonl"), str(d), str(root / "out"), scfg, tok,
                          num_shards=2, log=lambda *_: None)
  assert stats["written"] == 20
  paths = [str(root / "out" / s) for s in stats["shards"]]
  return paths, scfg, tok


CFG = P.PipelineConfig(seq_len=256, max_patches=256, max_visual_tokens=128, batch_size=2,
                       num_packing_bins=4, seed=1)


def test_batches_are_static_and_indices_consistent(shards):
  paths, scfg, tok = shards
  it = iter(P.make_dataset(paths, tok, scfg, CFG, process_index=0, process_count=1))
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
  paths, scfg, tok = shards
  ds = P.make_dataset(paths, tok, scfg, CFG, process_index=0, process_count=1)
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
  paths, scfg, tok = shards
  cfg = P.PipelineConfig(**{**CFG.__dict__, "shuffle": False, "num_epochs": 1})
  seen = []
  for pi in range(2):
    it = P.make_dataset(paths, tok, scfg, cfg, process_index=pi, process_count=2)
    seen.append(sum(int((b["segment_ids"] > 0).sum()) for b in it))
  one = sum(int((b["segment_ids"] > 0).sum()) for b in
            P.make_dataset(paths, tok, scfg, cfg, process_index=0, process_count=1))
  assert seen[0] > 0 and seen[1] > 0 and seen[0] + seen[1] <= one + 1


def test_worker_processes_are_deterministic_and_restorable(shards):
  """With 2 worker processes (each packs its own slice of the records) the stream is the
  same on every run, and a saved iterator state restores it exactly."""
  paths, scfg, tok = shards
  cfg = P.PipelineConfig(**{**CFG.__dict__, "worker_count": 2})
  ds = P.make_dataset(paths, tok, scfg, cfg, process_index=0, process_count=1)
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
  paths, scfg, tok = shards
  cfg = dataclasses.replace(CFG, seq_len=8, max_skips_in_a_row=25)
  it = iter(P.make_dataset(paths, tok, scfg, cfg, process_index=0, process_count=1))
  with pytest.raises(P.NoProgress) as e:
    next(it)
  import re
  msg = str(e.value)      # (Grain maps in prefetch threads: a few more may be counted)
  m = re.match(r"no usable sample in the last (\d+) \(too_long (\d+)\): raise data.seq_len \(8\)", msg)
  assert m and int(m.group(1)) == int(m.group(2)) >= 25 and "\n" not in msg, msg
