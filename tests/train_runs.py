"""Helpers for tests that run `python -m launch.train` in a subprocess (test_train.py,
test_faults.py); the reference run is conftest's `uninterrupted` fixture."""
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A plain one-device CPU run (conftest gives the pytest process 8 devices), with the
# suite's own compilation cache (conftest), shared by its runs (config.jax_cache_dir
# "auto" reads it), never the user's. (Not the pytest process's: its programs are
# compiled once.)
ENV = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"},
       "JAX_COMPILATION_CACHE_DIR": os.environ["PENGUIN_TESTS_JAX_CACHE"]}


def cmd(workdir, demo_dir, *extra, config="stage1.py:tiny"):
  """The reference command: tiny stage 1a, 30 steps, a log line every step, checkpoints
  every 10 (later flags override earlier ones)."""
  return [sys.executable, "-m", "launch.train", f"--config=configs/{config}",
          f"--workdir={workdir}", "--config.total_steps=30", "--config.log_every=1",
          "--config.checkpoint_every=10", f"--config.data.demo_dir={demo_dir}", *extra]


def run(workdir, demo_dir, *extra, config="stage1.py:tiny", timeout=600, env=None):
  return subprocess.run(cmd(workdir, demo_dir, *extra, config=config), cwd=REPO,
                        env=env or ENV, capture_output=True, text=True, timeout=timeout)


def metrics(workdir):
  """step -> the records of WORKDIR/metrics.jsonl for that step, merged (the training
  record and the held-out one, {"eval": ...}; a resumed run re-logs steps after its
  checkpoint: the last values of a step win)."""
  recs = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      r = json.loads(line)
      recs.setdefault(r["step"], {}).update(r)
  return recs


def short_run(workdir, demo_dir, config, *extra, devices=None):
  """A 2-step run of `config` (a checkpoint at step 2), which must succeed."""
  c = [sys.executable, "-m", "launch.train", f"--config={config}", f"--workdir={workdir}",
       "--config.total_steps=2", "--config.checkpoint_every=2", "--config.log_every=1",
       f"--config.data.demo_dir={demo_dir}", *extra]
  if devices:
    c.append(f"--local_device_count={devices}")
  r = subprocess.run(c, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]


def export(workdir, out, *extra):
  """`launch.convert workdir-to-hf` in this process; -> out."""
  from launch import convert
  assert convert.main(["workdir-to-hf", f"--workdir={workdir}", f"--out={out}", *extra]) == 0
  return out
