"""Real multi-process JAX: two CPU processes (gloo collectives on 127.0.0.1, 2 devices
each) train the tiny stage with the same global batch as one 4-device process and give
the same losses (within float32 reduction order: gloo sums in another order); each
checkpoint resumes on the other number of processes, the two-process one also onto another
mesh shape (data 4 -> fsdp 2 x tensor 2)."""
import json
import os
import socket
import subprocess
import sys
import tempfile

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
          "--config.data.global_batch=8", "--config.data.num_shards=2", *extra]


def _start(workdir, demo, steps, *extra):
  """A run whose output goes to a file (no pipe that a silent reader could let fill up
  while its partner process waits in a collective)."""
  log = tempfile.TemporaryFile("w+")
  p = subprocess.Popen(_args(workdir, demo, steps, *extra), cwd=REPO, env=ENV, stdout=log,
                       stderr=subprocess.STDOUT, text=True)
  p.log = log
  return p


def _two_processes(workdir, demo, steps):
  port = _free_port()
  return [_start(workdir, demo, steps, f"--coordinator_address=127.0.0.1:{port}",
                 "--num_processes=2", f"--process_id={i}", "--local_device_count=2")
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


def test_two_processes_equal_one_and_each_resumes_on_the_other_count(tmp_path):
  """The one-process and two-process runs go side by side (the demo corpus built first,
  here, so that no two of them build it)."""
  from configs import stage1
  from penguin_jax.train import data as data_lib
  demo = tmp_path / "demo"
  cfg = stage1.get_config("tiny")
  cfg.data.demo_dir = str(demo)
  data_lib.build_demo(cfg, str(tmp_path), data_lib.sample_config(cfg))
  one, *two = _wait(_one_process(tmp_path / "one", demo, 3) +
                    _two_processes(tmp_path / "two", demo, 3))
  a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
  assert sorted(a) == sorted(b) == [1, 2, 3]
  for s in a:
    assert b[s] == pytest.approx(a[s], abs=1e-5), s
  # elastic resume (data.num_shards fixed at 2): the two-process run's checkpoint goes on
  # in one process on another mesh shape, the one-process run's in two processes
  one, *two = _wait(_one_process(tmp_path / "two", demo, 5, "--config.mesh.data=1",
                                 "--config.mesh.fsdp=2", "--config.mesh.tensor=2") +
                    _two_processes(tmp_path / "one", demo, 5))
  assert all("resumed from step 3" in o for o in [one, *two])
  a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
  for s in (4, 5):
    assert b[s] == pytest.approx(a[s], abs=1e-5), s
