"""Weighted mixtures and phases (data_pipelines/mixture.py): the written form, the mixed
stream's proportions and exact resume in the pipeline, and a training run on a 3:1
mixture then a second phase, resumed from a checkpoint of the first: the same losses and
the same samples per source as the run left alone."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from data_pipelines import mixture, pipeline as P, sample as sample_lib
from data_pipelines.tokenizer import Qwen3Tokenizer
from train_runs import ENV, REPO, metrics


def test_a_mixture_is_parsed_and_a_bad_one_is_one_line():
  got = mixture.parse("train:3, penguin_vl/video:train:1")
  assert [(c.dataset, c.split, c.weight, c.name) for c in got] == [
      ("", "train", 3.0, "train"), ("penguin_vl/video", "train", 1.0, "penguin_vl/video:train")]
  for bad, says in [("train", "not SOURCE:WEIGHT"), ("train:0", "weight > 0"),
                    ("train:x", "not SOURCE:WEIGHT"), ("penguin_vl/video:1", "NAME/CONFIG:SPLIT"),
                    ("a:1,a:2", "named twice"), ("", "no source")]:
    with pytest.raises(ValueError, match=says):
      mixture.parse(bad)
  phases = mixture.parse_phases(["100=b:1", "0=a:1"])
  assert [(s, [c.name for c in m]) for s, m in phases] == [(0, ["a"]), (100, ["b"])]
  for bad, says in [(["5=a:1"], "starts at step 5"), (["a:1"], "START=MIXTURE"),
                    (["0=a:1", "0=b:1"], "same step")]:
    with pytest.raises(ValueError, match=says):
      mixture.parse_phases(bad)


def _texts(tag, n):
  return [{"id": f"{tag}{i}", "images": [], "video": None, "conversations": [
      {"from": "human", "value": f"Which source is this{'?' * (i % 4)}"},
      {"from": "gpt", "value": f"Source {tag}, sample {i}."}]} for i in range(n)]


def test_a_3_to_1_mixture_keeps_its_proportions_and_resumes_exactly():
  """Two sources mixed 3:1 (their records counted per source in every batch): over 600
  samples within 5% of 3:1, and an iterator restored from a state taken midway gives the
  same batches as the stream left alone."""
  tok = Qwen3Tokenizer.from_vocab_file()
  scfg = sample_lib.SampleConfig(seq_len=128)
  cfg = P.PipelineConfig(max_patches=16, max_visual_tokens=8, packing_bins=4)
  src = [(_texts("a", 50), 3.0), (_texts("b", 30), 1.0)]
  it = iter(P.make_dataset(src, tok, scfg, cfg, batch_size=4, seed=3))
  counts, batches, state = np.zeros(2, int), [], None
  while counts.sum() < 600:
    if len(batches) == 10:
      state = it.get_state()
    b = next(it)
    batches.append(b)
    counts += b["data_sources"].sum(0)
    # every sample of a row is counted once, by its own source
    ids = [tok.decode(r[r > 0].tolist()) for r in b["input_ids"]]
    assert [t.count("Source a") for t in ids] == list(b["data_sources"][:, 0])
    assert [t.count("Source b") for t in ids] == list(b["data_sources"][:, 1])
  assert abs(counts[0] / counts[1] - 3) < 0.15, counts
  again = iter(P.make_dataset(src, tok, scfg, cfg, batch_size=4, seed=3))
  again.set_state(state)
  for b in batches[10:]:
    got = next(again)
    assert all(np.array_equal(got[k], b[k]) for k in b)


P2, END = 12, 15      # the second phase's first step, the last step
RUN = [f"--config.data.phases=('0=train:3,val:1', '{P2}=val:1')",
       f"--config.total_steps={END}", "--config.log_every=1", "--config.checkpoint_every=4"]


def _cmd(workdir, demo):
  return [sys.executable, "-m", "launch.train", "--config=configs/stage0.py:tiny",
          f"--workdir={workdir}", f"--config.data.demo_dir={demo}", *RUN]


@pytest.mark.slow
def test_a_run_on_a_mixture_then_a_phase_resumes_the_same_stream(quick_demo, tmp_path):
  """Stage 0 (the text-only LLM) on the demo corpus's text: its training and validation
  splits mixed 3:1 for 12 steps, then the validation split alone: the samples per source
  in metrics.jsonl within 10% of 3:1 after the first phase (over 400 samples), only the
  second phase's source grows after it; the run resumed from its step-8 checkpoint has the
  same losses and counts at every step."""
  demo = quick_demo[0] / "data"
  r = subprocess.run(_cmd(tmp_path / "whole", demo), cwd=REPO, env=ENV, capture_output=True,
                     text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  whole = metrics(tmp_path / "whole")
  first = whole[P2]["data_sources"]           # after P2 steps: the first phase's batches
  assert first["train"] + first["val"] >= 400, first
  assert abs(first["train"] / first["val"] - 3) < 0.3, first
  last = whole[END]["data_sources"]
  assert last["train"] == first["train"] and last["val"] > first["val"], (first, last)
  # cut back to the step-8 checkpoint (what a run killed after step 8 leaves; kill -9
  # itself is test_faults.py's), resumed across the phase boundary
  wd = tmp_path / "resumed"
  shutil.copytree(tmp_path / "whole", wd)
  for step in (12, END):
    shutil.rmtree(wd / "checkpoints" / str(step))
  lines = (wd / "metrics.jsonl").read_text().splitlines(keepends=True)
  (wd / "metrics.jsonl").write_text("".join(l for l in lines if json.loads(l)["step"] <= 8))
  r = subprocess.run(_cmd(wd, demo), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0 and "resumed from step 8" in r.stderr, r.stderr[-3000:]
  resumed = metrics(wd)
  for step in range(1, END + 1):
    assert resumed[step]["loss"] == whole[step]["loss"], step
    assert resumed[step]["data_sources"] == whole[step]["data_sources"], step
