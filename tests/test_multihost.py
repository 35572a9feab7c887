"""Real multi-process JAX: two CPU processes (gloo collectives on 127.0.0.1, 2 devices
each) train the tiny stage with the same global batch as one 4-device process and give
the same losses (within float32 reduction order: gloo sums in another order); each
checkpoint resumes on the other number of processes, the two-process one also onto another
mesh shape (data 4 -> fsdp 2 x tensor 2)."""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

from train_runs import ENV, REPO


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _args(workdir, demo, steps, *extra):
  return [sys.executable, "-m", "launch.train", "--config=configs/stage1.py:tiny",
          f"--workdir={workdir}", f"--config.total_steps={steps}", "--config.log_every=1",
          "--config.checkpoint_every=3", f"--config.data.demo_dir={demo}",
          "--config.data.global_batch=8", "--config.data.num_shards=2",
          "--config.data.max_patches=64", *extra]      # some samples skipped (too long)


def _start(workdir, demo, steps, *extra):
  """A run whose output goes to a file (no pipe that a silent reader could let fill up
  while its partner process waits in a collective)."""
  log = tempfile.TemporaryFile("w+")
  p = subprocess.Popen(_args(workdir, demo, steps, *extra), cwd=REPO, env=ENV, stdout=log,
                       stderr=subprocess.STDOUT, text=True)
  p.log = log
  return p


def _two_processes(workdir, demo, steps, *extra):
  port = _free_port()
  return [_start(workdir, demo, steps, f"--coordinator_address=127.0.0.1:{port}",
                 "--num_processes=2", f"--process_id={i}", "--local_device_count=2", *extra)
          for i in range(2)]


def _one_process(workdir, demo, steps, *extra):
  return [_start(workdir, demo, steps, "--local_device_count=4", *extra)]


def _wait(procs):
  """The runs' outputs; each must succeed."""
  for p in procs:
    p.wait(timeout=600)
    p.log.seek(0)
  outs = [p.log.read() for p in procs]
  for p, o in zip(procs, outs):
    assert p.returncode == 0, o[-3000:]
  return outs


def _losses(workdir):
  out = {}
  for line in open(os.path.join(workdir, "metrics.jsonl")):
    r = json.loads(line)
    out[r["step"]] = r["loss"]
  return out


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
  """The demo corpus, built here first, so that no two processes build it."""
  from configs import stage1
  from penguin_jax.train import data as data_lib
  root = tmp_path_factory.mktemp("multihost")
  cfg = stage1.get_config("tiny")
  cfg.data.demo_dir = str(root / "demo")
  data_lib.build_demo(cfg, str(root), data_lib.sample_config(cfg))
  return root / "demo"


@pytest.fixture(scope="module")
def reference(demo):
  """An uninterrupted two-process run of 9 steps: {step: loss}."""
  wd = demo.parent / "reference"
  _wait(_two_processes(wd, demo, 9))
  return _losses(wd)


def test_two_processes_equal_one_and_each_resumes_on_the_other_count(tmp_path, demo):
  """The one-process and two-process runs go side by side."""
  one, *two = _wait(_one_process(tmp_path / "one", demo, 3) +
                    _two_processes(tmp_path / "two", demo, 3))
  a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
  assert sorted(a) == sorted(b) == [1, 2, 3]
  for s in a:
    assert b[s] == pytest.approx(a[s], abs=1e-5), s
  # the skips of both processes' pipelines are counted (those of the one process that
  # reads both shards), not process 0's alone
  skipped = [_records(w)[-1]["data_skipped"] for w in (tmp_path / "one", tmp_path / "two")]
  assert skipped[0].get("too_long", 0) > 0 and skipped[1] == skipped[0], skipped
  # elastic resume (data.num_shards fixed at 2): the two-process run's checkpoint goes on
  # in one process on another mesh shape, the one-process run's in two processes
  one, *two = _wait(_one_process(tmp_path / "two", demo, 5, "--config.mesh.data=1",
                                 "--config.mesh.fsdp=2", "--config.mesh.tensor=2") +
                    _two_processes(tmp_path / "one", demo, 5))
  assert all("resumed from step 3" in o for o in [one, *two])
  a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
  for s in (4, 5):
    assert b[s] == pytest.approx(a[s], abs=1e-5), s


def _records(workdir):
  return [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]


def test_a_lost_process_stops_the_other_with_one_line_and_the_relaunch_resumes_exactly(
    tmp_path, demo, reference):
  """Process 1 of 2 killed (-9) after step 7: process 0 stops by itself within the
  timeout (6 s here; 60 by default) and a poll, exit 6, one line naming process 1 and the
  checkpoint on disk. The relaunch resumes from it: the steps it trains again give the
  losses logged before the kill, and every step the uninterrupted run's (==)."""
  wd = tmp_path / "run"
  procs = _two_processes(wd, demo, 9, "--config.lost_process_timeout_s=6")
  _wait_for_step(wd, 7, procs)
  procs[1].kill()
  t = time.time()
  procs[0].wait(timeout=120)
  took = time.time() - t
  procs[0].log.seek(0)
  out = procs[0].log.read()
  assert procs[0].returncode == 6, out[-3000:]
  lines = [l for l in out.splitlines() if "stopping: process 1 of 2 is lost" in l]
  assert len(lines) == 1 and "run again to resume from it" in lines[0], out[-3000:]
  assert "Traceback" not in out, out
  assert took < 6 + 15, took          # the timeout, a poll (1 s), slack for a loaded machine
  before = {}
  for r in _records(wd):
    before.setdefault(r["step"], r["loss"])      # the first value of each step
  on_disk = int(lines[0].split("the latest checkpoint on disk is step ")[1].split(":")[0])
  outs = _wait(_two_processes(wd, demo, 9))
  assert all(f"resumed from step {on_disk}" in o for o in outs)
  again = [s for s in before if s > on_disk]
  assert again, (on_disk, sorted(before))
  after = {r["step"]: r["loss"] for r in _records(wd)}          # the last value of each
  assert sorted(after) == list(range(1, 10))
  for s in again:
    assert after[s] == before[s], s
  assert after == reference


def test_sigterm_to_one_process_stops_both_at_one_step_and_the_relaunch_resumes_exactly(
    tmp_path, demo, reference):
  """SIGTERM to process 1 alone after step 4: both processes save the same step (agreed
  through JAX's preemption sync point) and exit 0; the relaunch resumes there, and every
  step's loss == the uninterrupted run's."""
  wd = tmp_path / "run"
  procs = _two_processes(wd, demo, 9)
  _wait_for_step(wd, 4, procs)
  procs[1].send_signal(signal.SIGTERM)
  outs = _wait(procs)
  saved = [int(o.split("SIGTERM: saved step ")[1].split(",")[0]) for o in outs]
  assert saved[0] == saved[1] and 4 <= saved[0] < 9, saved
  outs = _wait(_two_processes(wd, demo, 9))
  assert all(f"resumed from step {saved[0]}" in o for o in outs)
  assert _losses(wd) == reference


def _wait_for_step(workdir, step, procs, timeout=300):
  t = time.time()
  while time.time() - t < timeout:
    try:
      if any(r["step"] >= step for r in _records(workdir)):
        return
    except (OSError, ValueError):
      pass
    assert all(p.poll() is None for p in procs), "a run ended before the step"
    time.sleep(0.1)
  raise TimeoutError(step)
