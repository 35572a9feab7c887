"""`python -m launch.train`: the tiny stage-1 run learns, and a run killed with SIGKILL
resumes from its last checkpoint with exactly the losses of an uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A plain one-device CPU run (conftest gives this pytest process 8 devices).
ENV = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}


def _cmd(workdir, demo_dir, *extra):
  return [sys.executable, "-m", "launch.train", "--config=configs/stage1.py:tiny",
          f"--workdir={workdir}", "--config.total_steps=12", "--config.log_every=1",
          "--config.checkpoint_every=4", f"--config.data.demo_dir={demo_dir}", *extra]


def _metrics(workdir):
  recs = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      r = json.loads(line)
      recs[r["step"]] = r   # a resumed run re-logs steps after its checkpoint
  return recs


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  root = tmp_path_factory.mktemp("train")
  r = subprocess.run(_cmd(root / "a", root / "demo"), cwd=REPO, env=ENV, capture_output=True,
                     text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  return root, _metrics(root / "a"), r.stderr


def test_tiny_stage1_runs_logs_and_learns(uninterrupted):
  root, m, out = uninterrupted
  assert sorted(m) == list(range(1, 13))
  for k in ("loss", "lm_loss", "amplitude", "direction", "relation", "grad_norm",
            "tokens_per_s", "visual_tokens_per_s", "lr"):
    assert k in m[12], k
  assert m[12]["loss"] < m[1]["loss"]
  assert "step 12 loss=" in out
  assert sorted(os.listdir(root / "a" / "checkpoints")) == ["12", "4", "8"]


def test_kill9_then_resume_gives_identical_losses(uninterrupted):
  root, ref, _ = uninterrupted
  wd = root / "b"
  p = subprocess.Popen(_cmd(wd, root / "demo"), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while not (wd / "checkpoints" / "8").exists() and time.time() < deadline:
    if p.poll() is not None:
      pytest.fail("training exited before it could be killed")
    time.sleep(0.2)
  p.send_signal(signal.SIGKILL)
  p.wait()
  first = _metrics(wd)
  assert max(first) < 12, "killed too late to test anything"
  r = subprocess.run(_cmd(wd, root / "demo"), cwd=REPO, env=ENV, capture_output=True, text=True,
                     timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "resumed from step" in r.stderr
  resumed = _metrics(wd)
  assert sorted(resumed) == list(range(1, 13))
  for s in range(1, 13):
    assert resumed[s]["loss"] == pytest.approx(ref[s]["loss"], rel=1e-6, abs=1e-6), s
