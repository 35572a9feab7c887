"""`python -m launch.train`: the tiny stage-1 run learns from its teacher (imported from an
HF folder, frozen, saved with the run), and a run killed with SIGKILL resumes from its
last checkpoint with exactly the losses of an uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import penguin_jax
from penguin_jax.teacher import ViTTeacher

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A plain one-device CPU run (conftest gives this pytest process 8 devices).
ENV = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}


def _cmd(workdir, demo_dir, *extra):
  return [sys.executable, "-m", "launch.train", "--config=configs/stage1.py:tiny",
          f"--workdir={workdir}", "--config.total_steps=30", "--config.log_every=1",
          "--config.checkpoint_every=10", f"--config.data.demo_dir={demo_dir}", *extra]


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
  assert sorted(m) == list(range(1, 31))
  for k in ("loss", "lm_loss", "amplitude", "direction", "relation", "grad_norm",
            "tokens_per_s", "visual_tokens_per_s", "lr"):
    assert k in m[30], k
  assert "step 30 loss=" in out
  assert sorted(os.listdir(root / "a" / "checkpoints")) == ["10", "20", "30"]
  events = os.listdir(root / "a" / "tensorboard")
  assert any(e.startswith("events.out.tfevents") for e in events)


def test_kill9_then_resume_gives_identical_losses(uninterrupted):
  root, ref, _ = uninterrupted
  wd = root / "b"
  p = subprocess.Popen(_cmd(wd, root / "demo"), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while not (wd / "checkpoints" / "20").exists() and time.time() < deadline:
    if p.poll() is not None:
      pytest.fail("training exited before it could be killed")
    time.sleep(0.2)
  p.send_signal(signal.SIGKILL)
  p.wait()
  first = _metrics(wd)
  assert max(first) < 30, "killed too late to test anything"
  r = subprocess.run(_cmd(wd, root / "demo"), cwd=REPO, env=ENV, capture_output=True, text=True,
                     timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "resumed from step" in r.stderr and "teacher included" in r.stderr
  assert "teacher VL3-SigLIP-NaViT from" not in r.stderr    # restored, not reloaded
  resumed = _metrics(wd)
  assert sorted(resumed) == list(range(1, 31))
  for s in range(1, 31):
    assert resumed[s]["loss"] == pytest.approx(ref[s]["loss"], rel=1e-6, abs=1e-6), s


def test_stage1_distils_from_the_imported_teacher_which_stays_frozen(uninterrupted):
  """The tiny config's teacher is written as an HF folder (save_pretrained) and imported
  like the real VL3-SigLIP-NaViT; every reconstruction part falls; the teacher saved with
  the last checkpoint is bit-identical to the folder it was loaded from."""
  root, m, out = uninterrupted
  folder = root / "a" / "random_teacher"
  assert json.load(open(folder / "config.json"))["model_type"] == "video_llama_3_vision"
  assert f"teacher VL3-SigLIP-NaViT from {folder}" in out
  mean = lambda k, steps: sum(m[s][k] for s in steps) / len(steps)   # batches differ
  for k in ("loss", "amplitude", "direction", "relation"):
    assert mean(k, range(26, 31)) < 0.8 * mean(k, range(1, 6)), k
  model, before = penguin_jax.from_pretrained(str(folder))
  assert isinstance(model, ViTTeacher)
  after = ocp.StandardCheckpointer().restore(root / "a" / "checkpoints" / "30" / "teacher")
  flat = lambda t: {jax.tree_util.keystr(p): np.asarray(x)
                    for p, x in jax.tree_util.tree_flatten_with_path(t)[0]}
  a, b = flat(before), flat(after)
  assert sorted(a) == sorted(b) and len(a) > 4
  for k in a:
    assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


def _run(workdir, demo, config, *extra, timeout=600):
  cmd = [sys.executable, "-m", "launch.train", f"--config=configs/{config}",
         f"--workdir={workdir}", "--config.log_every=1", f"--config.data.demo_dir={demo}", *extra]
  return subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)


def test_four_stages_chain_and_each_learns(uninterrupted):
  root, _, _ = uninterrupted
  prev = None
  for stage in ["stage1", "stage1_hres", "stage2", "stage3"]:
    wd = root / "chain" / stage
    extra = ["--config.total_steps=10"] + ([f"--config.init.init_from={prev}"] if prev else [])
    r = _run(wd, root / "demo", f"{stage}.py:tiny", *extra)
    assert r.returncode == 0, (stage, r.stderr[-3000:])
    if prev:
      assert f"from {prev}" in r.stderr
    m = _metrics(wd)
    first = sum(m[s]["loss"] for s in (1, 2, 3)) / 3   # batches differ: compare means
    last = sum(m[s]["loss"] for s in (8, 9, 10)) / 3
    assert last < first, (stage, first, last)
    prev = wd


def test_nan_step_is_skipped_and_reported_then_too_many_stop(uninterrupted):
  root, _, _ = uninterrupted
  wd = root / "nan"
  r = _run(wd, root / "demo", "stage1.py:tiny", "--config.total_steps=5",
           "--config.debug_nan_steps=(3,)")
  assert r.returncode == 0, r.stderr[-3000:]
  assert "step 3: non-finite loss or gradient" in r.stderr
  m = _metrics(wd)
  assert m[3]["skipped"] == 1 and all(m[s]["skipped"] == 0 for s in (1, 2, 4, 5))
  assert all(m[s]["loss"] == m[s]["loss"] for s in (4, 5))  # finite again after the skip
  wd2 = root / "nan2"
  r = _run(wd2, root / "demo", "stage1.py:tiny", "--config.total_steps=8",
           "--config.checkpoint_every=2", "--config.max_nonfinite_in_a_row=2",
           "--config.debug_nan_steps=(3,4,5)")
  assert r.returncode == 3
  assert "stopping: 2 non-finite steps in a row; the last good checkpoint is step 2" in r.stderr
  assert os.listdir(wd2 / "checkpoints") == ["2"]


def test_sigterm_saves_and_exits_cleanly(uninterrupted):
  root, _, _ = uninterrupted
  wd = root / "term"
  p = subprocess.Popen(_cmd(wd, root / "demo", "--config.total_steps=200"), cwd=REPO, env=ENV,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  while not (wd / "checkpoints" / "10").exists() and time.time() < deadline:
    time.sleep(0.2)
  p.send_signal(signal.SIGTERM)
  err = p.communicate(timeout=300)[1]
  assert p.returncode == 0, err[-2000:]
  saved = int(err.split("SIGTERM: saved step ")[1].split(",")[0])
  assert 10 <= saved < 200 and (wd / "checkpoints" / str(saved)).exists()


def test_missing_train_files_is_a_one_line_error(tmp_path):
  r = _run(tmp_path / "w", tmp_path / "demo", "stage2.py:tiny", "--config.data.demo=False",
           "--config.data.train_files=('nope.array_record',)")
  assert r.returncode == 2
  assert "error: config.data.train_files: 1 of 1 files not found" in r.stderr
  assert "Traceback" not in r.stderr


def test_data_that_never_fits_a_row_stops_with_one_line(uninterrupted):
  """Every sample longer than seq_len: the run stops with exit 2 and one line saying what
  to change, instead of skipping samples forever."""
  root, _, _ = uninterrupted
  r = _run(root / "nofit", root / "demo", "stage2.py:tiny", "--config.data.seq_len=16",
           "--config.data.max_skips_in_a_row=50", "--config.total_steps=2", timeout=300)
  assert r.returncode == 2, r.stderr[-2000:]
  err = [l for l in r.stderr.splitlines() if "error:" in l]
  assert len(err) == 1 and "no usable sample in the last" in err[0]
  assert "raise data.seq_len (16)" in err[0] and "Traceback" not in r.stderr


def test_one_run_per_workdir_and_a_stale_lock_is_taken_over(uninterrupted):
  """A second run on a busy workdir stops with one line (they used to destroy each
  other's checkpoints); after the first is killed -9, the next run takes its lock over."""
  root, _, _ = uninterrupted
  wd = root / "locked"
  p = subprocess.Popen(_cmd(wd, root / "demo", "--config.total_steps=500"), cwd=REPO, env=ENV,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 300
    while not (wd / "metrics.jsonl").exists() and time.time() < deadline:
      assert p.poll() is None, "the first run exited early"
      time.sleep(0.2)
    assert open(wd / "run.lock").read().split()[1] == str(p.pid)
    r = subprocess.run(_cmd(wd, root / "demo"), cwd=REPO, env=ENV, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2 and "is in use by another run (pid %d" % p.pid in r.stderr
    assert p.poll() is None                        # the first run goes on
  finally:
    p.send_signal(signal.SIGKILL)
    p.wait()
  r = subprocess.run(_cmd(wd, root / "demo", "--config.total_steps=2"), cwd=REPO, env=ENV,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  assert f"taking over {wd / 'run.lock'}, left by a process that is gone (pid {p.pid})" in r.stderr
  assert not (wd / "run.lock").exists()            # released at exit


def test_help_exits_0_and_lists_stages_variants_and_config_fields():
  r = subprocess.run([sys.executable, "-m", "launch.train", "--help"], cwd=REPO, env=ENV,
                     capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr[-2000:]
  assert "STAGE in stage1, stage1_hres, stage2, stage3; VARIANT in tiny, 2b, 8b" in r.stdout
  for line in ("--config.init.teacher='random'", "--config.data.seq_len=512", "--workdir"):
    assert line in r.stdout, line
