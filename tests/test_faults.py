"""Faults a run on a pod meets, each injected into real `python -m launch.train`
subprocesses of the tiny config (or the builder / checkpoint code where a process adds
nothing), each with its documented outcome (README, "What survives what"):

  kill -9 at random points (also mid checkpoint write)   resumes, losses bit-identical
  SIGTERM between steps / while the pipeline is busy     saves, exits 0; resume is exact
  a latest checkpoint that does not restore              moved aside, the previous restored
  disk full during saves                                 reported at once; exit 4 naming
                                                         the step on disk
  NaN bursts shorter / longer than the limit             skipped / exit 3
  no sample fits, empty or corrupt shards, corrupt       one line (exit 2) / named skips
  records, misspelt config fields, a second run
"""
import glob
import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import pytest

from penguin_jax.train import checkpoint as ckpt
from train_runs import ENV, REPO, cmd, metrics, run


def _wait_for(cond, p=None, timeout=300):
  deadline = time.time() + timeout
  while not cond():
    if p is not None and p.poll() is not None:
      pytest.fail("the run exited before the fault could be injected")
    if time.time() > deadline:
      if p is not None:
        p.kill()               # never leave a run behind to slow the rest of the suite
      pytest.fail("timed out waiting")
    time.sleep(0.05)


def _last_step(wd) -> int:
  """The last step logged in WORKDIR/metrics.jsonl so far (0: none; a line being written
  is ignored)."""
  try:
    lines = open(os.path.join(wd, "metrics.jsonl")).read().splitlines()
  except FileNotFoundError:
    return 0
  steps = [int(l.split('"step": ')[1].split(",")[0]) for l in lines if l.endswith("}")]
  return max(steps, default=0)


def _same_losses(m, ref, steps):
  """Bit-identical, as docs/faults.md states (the JSON floats are the float32 losses)."""
  for s in steps:
    assert m[s]["loss"] == ref[s]["loss"], (s, m[s]["loss"], ref[s]["loss"])


@pytest.mark.slow
def test_kill9_at_random_points_then_resume_gives_identical_losses(uninterrupted):
  """Two kill -9 at points of one run: after a random log step (seeded), and during an
  async checkpoint write (its temporary folder exists); each restart resumes from the
  last whole checkpoint, and the final losses of every
  step equal the uninterrupted run's. The held-out loss is on (every 10 steps): it
  changes neither the training nor the resume, and appears at steps 10, 20 and 30 in
  metrics.jsonl and TensorBoard."""
  root, ref, _ = uninterrupted
  wd, rng = root / "kill9", random.Random(0)
  base = ("--config.checkpoint_every=5", "--config.eval.every=10")
  first = rng.randint(3, 9)
  kills = [lambda: _last_step(wd) >= first,
           lambda: glob.glob(str(wd / "checkpoints" / "*orbax-checkpoint-tmp*"))]
  for when in kills:
    before = _last_step(wd)
    p = subprocess.Popen(cmd(wd, root / "demo", *base), cwd=REPO, env=ENV,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(lambda: _last_step(wd) > before and when(), p)
    p.send_signal(signal.SIGKILL)
    p.wait()
  assert _last_step(wd) < 30, "killed too late to test anything"
  r = run(wd, root / "demo", *base)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "resumed from step" in r.stderr and "teacher included" in r.stderr
  assert "teacher VL3-SigLIP-NaViT from" not in r.stderr    # restored, not reloaded
  m = metrics(wd)
  assert sorted(m) == list(range(1, 31))
  _same_losses(m, ref, range(1, 31))
  assert sorted(s for s in m if "eval" in m[s]) == [10, 20, 30]
  assert m[30]["eval"]["loss"] < m[10]["eval"]["loss"] and m[30]["eval"]["label_tokens"] > 0
  events = glob.glob(str(wd / "tensorboard" / "events.out.tfevents*"))
  assert any(b"eval/loss" in open(e, "rb").read() for e in events)


@pytest.mark.slow
def test_nan_bursts_shorter_than_the_limit_are_skipped_longer_ones_stop(uninterrupted):
  """One run, limit 2: the NaN at step 3 is skipped and reported and training goes on
  (finite losses after it); NaNs at 7 and 8 stop the run at 8 (exit 3), naming the last
  good checkpoint (6; step 8's is not written)."""
  root, _, _ = uninterrupted
  wd = root / "nan"
  r = run(wd, root / "demo", "--config.total_steps=12", "--config.checkpoint_every=2",
          "--config.max_nonfinite_in_a_row=2", "--config.debug_nan_steps=(3,7,8,9)")
  assert r.returncode == 3, r.stderr[-3000:]
  assert "step 3: non-finite loss or gradient" in r.stderr
  m = metrics(wd)
  assert m[3]["skipped"] == 1 and all(m[s]["skipped"] == 0 for s in (1, 2, 4, 5, 6))
  assert all(m[s]["loss"] == m[s]["loss"] for s in (4, 5, 6))  # finite again after the skip
  assert "stopping: 2 non-finite steps in a row; the last good checkpoint is step 6" in r.stderr
  assert sorted(os.listdir(wd / "checkpoints")) == ["2", "4", "6"]
  assert max(m) == 7                                 # step 8 stopped before its log line


@pytest.mark.slow
def test_sigterm_during_a_checkpoint_write_saves_exits_and_resumes_exactly(uninterrupted):
  """SIGTERM while a checkpoint write is in flight (its temporary folder exists): the
  write completes, the current step is saved whole (orbax reads it back), exit 0; the
  same command again resumes there, and every step's loss == the uninterrupted run's.
  The same run traces steps 3-4 with the profiler into WORKDIR/profile."""
  root, ref, _ = uninterrupted
  wd = root / "term"
  args = ("--config.checkpoint_every=5", "--config.profile.start_step=2",
          "--config.profile.num_steps=2")
  p = subprocess.Popen(cmd(wd, root / "demo", *args), cwd=REPO, env=ENV,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  _wait_for(lambda: glob.glob(str(wd / "checkpoints" / "*.orbax-checkpoint-tmp*")), p)
  p.send_signal(signal.SIGTERM)
  err = p.communicate(timeout=300)[1]
  assert p.returncode == 0, err[-2000:]
  saved = int(err.split("SIGTERM: saved step ")[1].split(",")[0])
  assert 5 <= saved < 30 and (wd / "checkpoints" / "5").is_dir()
  step, _, params = ckpt.read_run(str(wd))
  assert step == saved and "vision_encoder" in params
  assert "profile of steps 3-4 written to" in err
  assert glob.glob(str(wd / "profile" / "**" / "*.xplane.pb"), recursive=True)
  r = run(wd, root / "demo", *args)
  assert r.returncode == 0 and f"resumed from step {saved}" in r.stderr, r.stderr[-3000:]
  m = metrics(wd)
  assert sorted(m) == list(range(1, 31))
  _same_losses(m, ref, range(1, 31))


def test_a_dataset_that_is_not_there_is_one_line_naming_the_build_command(tmp_path):
  r = run(tmp_path / "w", tmp_path / "demo", "--config.data.demo=False",
          "--config.data.tfds_name=penguin_vl/nothere", f"--config.data.tfds_data_dir={tmp_path}",
          config="stage2.py:tiny")
  errs = [l for l in r.stderr.splitlines() if "error:" in l]
  assert r.returncode == 2 and len(errs) == 1, r.stderr[-2000:]
  assert "penguin_vl/nothere" in errs[0] and "python -m data_pipelines.tfds_build" in errs[0]
  assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_data_that_never_fits_a_row_stops_with_one_line(uninterrupted):
  """Every sample longer than seq_len: the run stops with exit 2 and one line saying what
  to change, instead of skipping samples forever."""
  root, _, _ = uninterrupted
  r = run(root / "nofit", root / "demo", "--config.data.seq_len=16",
          "--config.data.max_skips_in_a_row=50", "--config.total_steps=2", timeout=300,
          config="stage2.py:tiny")
  assert r.returncode == 2, r.stderr[-2000:]
  err = [l for l in r.stderr.splitlines() if "error:" in l]
  assert len(err) == 1 and "no usable sample in the last" in err[0]
  assert "raise data.seq_len (16)" in err[0] and "Traceback" not in r.stderr


@pytest.mark.slow
def test_one_run_per_workdir_and_a_stale_lock_is_taken_over(uninterrupted, caplog):
  """A second run on a busy workdir stops with one line (they used to destroy each
  other's checkpoints); after the first is killed -9, the next run takes its lock over."""
  root, _, _ = uninterrupted
  wd = root / "locked"
  p = subprocess.Popen(cmd(wd, root / "demo", "--config.total_steps=500"), cwd=REPO, env=ENV,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 300
    while not (wd / "metrics.jsonl").exists() and time.time() < deadline:
      assert p.poll() is None, "the first run exited early"
      time.sleep(0.2)
    assert open(wd / "run.lock").read().split()[1] == str(p.pid)
    r = subprocess.run(cmd(wd, root / "demo"), cwd=REPO, env=ENV, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2 and "is in use by another run (pid %d" % p.pid in r.stderr
    assert p.poll() is None                        # the first run goes on
  finally:
    p.send_signal(signal.SIGKILL)
    p.wait()
  # the next run's lock (in this process: a third training run would add only its startup)
  from penguin_jax.train import workdir as workdir_lib
  with caplog.at_level(logging.WARNING):
    workdir_lib.lock(wd)
  assert f"taking over {wd / 'run.lock'}, left by a process that is gone (pid {p.pid})" \
      in caplog.text
  assert open(wd / "run.lock").read().split()[1] == str(os.getpid())
  (wd / "run.lock").unlink()




@pytest.mark.slow
def test_sigterm_while_the_pipeline_is_busy_saves_and_exits(uninterrupted):
  """No sample fits and the skip limit is far: the pipeline is busy skipping when SIGTERM
  comes. The run stops within seconds (it used to ignore SIGTERM), saves where it is
  (step 0 here: the interrupted batch is read again after a resume) and exits 0."""
  root, _, _ = uninterrupted
  wd = root / "busy"
  with open(root / "busy.log", "w") as log:
    p = subprocess.Popen(cmd(wd, root / "demo", "--config.data.seq_len=16",
                             "--config.data.max_skips_in_a_row=100000000",
                             config="stage2.py:tiny"),
                         cwd=REPO, env=ENV, stdout=log, stderr=log)
  # the first skips are named, then only counted: once they are, the pipeline is busy
  _wait_for(lambda: "further skips for this reason are counted" in open(root / "busy.log").read(), p)
  time.sleep(2)
  t = time.time()
  p.send_signal(signal.SIGTERM)
  p.wait(timeout=60)
  err = open(root / "busy.log").read()
  assert p.returncode == 0, err[-2000:]
  assert time.time() - t < 30
  assert "SIGTERM: saved step 0, exiting" in err and (wd / "checkpoints" / "0").is_dir()


def _workers_of(pid):
  """Grain's worker processes of the run `pid` (multiprocessing spawn children)."""
  out = []
  for d in os.listdir("/proc"):
    try:
      stat = open(f"/proc/{d}/stat").read()
      argv = open(f"/proc/{d}/cmdline").read()
    except (OSError, ValueError):
      continue
    if d.isdigit() and int(stat.rsplit(")", 1)[1].split()[1]) == pid and "spawn_main" in argv:
      out.append(int(d))
  return out


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_killed_data_worker_stops_the_run_with_one_line(uninterrupted):
  """data.workers=2 and one worker killed -9 after step 12: the run stops (exit 5) with
  one line naming the failure and the checkpoint on disk to resume from (the workers read
  ahead: the failure surfaces when the main process reaches the lost batches)."""
  root, _, _ = uninterrupted
  wd = root / "worker"
  p = subprocess.Popen(cmd(wd, root / "demo", "--config.data.workers=2",
                           "--config.data.max_patches=56"),      # some samples too long
                       cwd=REPO, env=ENV,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  _wait_for(lambda: _last_step(wd) >= 12 and (wd / "checkpoints" / "10").is_dir(), p)
  os.kill(_workers_of(p.pid)[0], signal.SIGKILL)
  err = p.communicate(timeout=300)[1]
  assert p.returncode == 5, err[-2000:]
  line = [l for l in err.splitlines() if "stopping: the data pipeline failed" in l]
  assert len(line) == 1 and "Worker process was terminated unexpectedly" in line[0]
  on_disk = int(re.search(r"the latest checkpoint on disk is step (\d+): run again to resume "
                          r"from it", line[0]).group(1))
  assert on_disk >= 10 and (wd / "checkpoints" / str(on_disk)).is_dir()
  # the skips made in the worker processes reached the counts (they ride in the batches)
  logged = [json.loads(l)["data_skipped"] for l in open(wd / "metrics.jsonl")]
  assert logged[-1].get("too_long", 0) > 0, logged[-1]


def _corrupt_latest(wd):
  """Truncate the largest array file of the newest checkpoint (step 30)."""
  files = [f for f in glob.glob(str(wd / "checkpoints" / "30" / "state" / "**"), recursive=True)
           if os.path.isfile(f) and "/d/" in f]
  big = max(files, key=os.path.getsize)
  with open(big, "r+b") as f:
    f.truncate(os.path.getsize(big) // 2)


@pytest.mark.slow
def test_a_corrupt_latest_checkpoint_is_moved_aside_and_the_previous_one_resumes(uninterrupted):
  """The newest checkpoint (30) has a truncated array file: the restart names step 30 and
  the reason in one line, moves it to checkpoints/corrupt-30, resumes from 20 and trains
  to 30 again with the uninterrupted run's losses. Log lines every 5 steps: the loop
  runs under jax.transfer_guard("disallow") and would fail on any implicit
  device-to-host read between them."""
  root, ref, _ = uninterrupted
  wd = root / "corrupt"
  shutil.copytree(root / "a", wd)
  _corrupt_latest(wd)
  r = run(wd, root / "demo", "--config.log_every=5")
  assert r.returncode == 0, r.stderr[-3000:]
  line = [l for l in r.stderr.splitlines() if "cannot be restored" in l]
  assert len(line) == 1 and "checkpoint step 30 cannot be restored (ValueError: " in line[0]
  assert f"moved aside to {wd / 'checkpoints' / 'corrupt-30'}, restoring step 20" in line[0]
  assert "resumed from step 20" in r.stderr
  assert sorted(os.listdir(wd / "checkpoints")) == ["10", "20", "30", "corrupt-30"]
  m = metrics(wd)
  _same_losses(m, ref, (25, 30))


@pytest.mark.slow
def test_another_number_of_data_shards_is_one_line_unless_reshard(uninterrupted):
  """The reference run's checkpoint (1 data shard) resumed with data.num_shards=2: one
  line naming both (exit 2); with data.reshard=True a warning, and the run goes on from
  its step to the end."""
  root, _, _ = uninterrupted
  wd = root / "reshard"
  shutil.copytree(root / "a", wd)
  more = ("--config.total_steps=32", "--config.data.num_shards=2")
  r = run(wd, root / "demo", *more)
  assert r.returncode == 2, r.stderr[-3000:]
  assert ("the checkpoint has 1 data shards, this run 2: set config.data.num_shards=1"
          in r.stderr) and "Traceback" not in r.stderr
  r = run(wd, root / "demo", *more, "--config.data.reshard=True")
  assert r.returncode == 0, r.stderr[-3000:]
  assert "config.data.reshard: the checkpoint has 1 data shards, this run 2" in r.stderr
  assert "resumed from step 30" in r.stderr and max(metrics(wd)) == 32


def _tiny_checkpoints(wd, steps=(1, 2)):
  mgr = ckpt.manager(wd, 5, async_save=False)
  state = {"w": jnp.arange(1000.0).reshape(10, 100), "b": jnp.ones(3)}
  for s in steps:
    ckpt.save(mgr, s, jax.tree.map(lambda x: x * s, state), {"shards": [s]}, {"c": 1})
  mgr.close()
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                      state)


@pytest.mark.parametrize("fault,restores", [
    ("truncated array file", 1), ("deleted array file", 1), ("missing data item", 1),
    ("missing state item", 1), ("deleted checkpoint metadata", 2)])
def test_restore_intact_skips_what_does_not_restore(tmp_path, fault, restores):
  """Each kind of damage to the newest of two checkpoints: it is moved aside with a one-
  line reason and the older one restored; orbax needs no _CHECKPOINT_METADATA to restore,
  so that step is still used."""
  wd = str(tmp_path)
  abstract = _tiny_checkpoints(wd)
  step2 = os.path.join(wd, "checkpoints", "2")
  arrays = [f for f in glob.glob(step2 + "/state/**", recursive=True)
            if os.path.isfile(f) and "/d/" in f]
  big = max(arrays, key=os.path.getsize)
  {"truncated array file": lambda: open(big, "r+b").truncate(os.path.getsize(big) // 2),
   "deleted array file": lambda: os.remove(big),
   "missing data item": lambda: shutil.rmtree(step2 + "/data"),
   "missing state item": lambda: shutil.rmtree(step2 + "/state"),
   "deleted checkpoint metadata": lambda: os.remove(step2 + "/_CHECKPOINT_METADATA")}[fault]()
  lines = []
  mgr, (step, state, data, _) = ckpt.restore_intact(lambda: ckpt.manager(wd, 5), abstract,
                                                    log=lines.append)
  mgr.close()
  assert step == restores and data == {"shards": [restores]}
  assert float(state["w"][0, 1]) == restores
  if restores == 1:
    assert len(lines) == 1 and lines[0].startswith("checkpoint step 2 cannot be restored (")
    assert "\n" not in lines[0] and os.path.isdir(os.path.join(wd, "checkpoints", "corrupt-2"))
  else:
    assert lines == []


def test_nothing_intact_is_a_clear_error_and_nothing_is_moved(tmp_path):
  wd = str(tmp_path)
  abstract = _tiny_checkpoints(wd)
  for s in ("1", "2"):
    shutil.rmtree(os.path.join(wd, "checkpoints", s, "data"))
  with pytest.raises(ckpt.NoIntactCheckpoint, match=r"no checkpoint can be restored \(step 2: "
                     r"KeyError.*; step 1: KeyError.*nothing was moved"):
    ckpt.restore_intact(lambda: ckpt.manager(wd, 5), abstract)
  assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["1", "2"]


def _full_disk(path, size):
  """A tmpfs of `size` at `path` when this test may mount one (root), else None."""
  os.makedirs(path, exist_ok=True)
  if os.geteuid() != 0:
    return None
  r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                     capture_output=True)
  return path if r.returncode == 0 else None


ENOSPC_HOOK = """
import errno
from orbax.checkpoint._src.handlers import json_checkpoint_handler as _h
_save = _h.JsonCheckpointHandler._save_fn
async def _full(self, x, directory):
  if "checkpoints/2." not in str(directory):        # the first checkpoint fits
    raise OSError(errno.ENOSPC, "No space left on device", str(directory))
  return await _save(self, x, directory)
_h.JsonCheckpointHandler._save_fn = _full
"""


@pytest.mark.slow
@pytest.mark.parametrize("limit", [5, 2])
def test_disk_full_is_reported_at_once_and_the_run_never_ends_as_a_success(uninterrupted, tmp_path,
                                                                          limit):
  """Checkpoints every 2 steps on a disk that holds one (a 12 MiB tmpfs as root, else a
  write hook that raises ENOSPC after the first): step 2 is written; the writes of 4 and
  6 fail, each reported with its own step while training goes on. Limit 5: the final one
  (8) fails too and the run exits 4, its last line naming step 2 as the one on disk.
  Limit 2 (`checkpoint_failures_before_stop`): the run stops once the second failure (6)
  is known (written in the background, it is polled a step later), before step 8, exit 4,
  naming step 2."""
  root, _, _ = uninterrupted
  wd, env = tmp_path / "full", dict(ENV)
  mounted = _full_disk(wd / "checkpoints", "12m")
  if mounted is None:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(ENOSPC_HOOK)
    env["PYTHONPATH"] = os.pathsep.join([str(hook), env.get("PYTHONPATH", "")])
  try:
    r = run(wd, root / "demo", "--config.total_steps=8", "--config.checkpoint_every=2",
            f"--config.checkpoint_failures_before_stop={limit}", env=env)
  finally:
    if mounted is not None:
      subprocess.run(["umount", str(mounted)])
  assert r.returncode == 4, r.stderr[-3000:]
  err = r.stderr.splitlines()
  for s in (4, 6):
    line = [l for l in err if f"checkpoint write at step {s} failed (" in l]
    assert len(line) == 1 and "the latest checkpoint on disk is step 2" in line[0], s
    assert "No space left on device" in line[0] or "RESOURCE_EXHAUSTED" in line[0], line[0]
  assert "checkpoint step 2 saved" in r.stderr
  ours = [l for l in err if re.match(r"[IWE]\d{4} ", l)]   # log lines (not orbax's prints)
  last = ("the final checkpoint (step 8) was not written; the latest checkpoint on disk is "
          "step 2" if limit == 5 else
          "stopping: 2 checkpoint writes failed in a row; the latest checkpoint on disk is step 2")
  assert ours[-1].endswith(last), ours[-3:]
  assert "done at step" not in r.stderr
  assert (limit == 5) == any("step 8/8" in l for l in err)


def test_misspelt_config_field_and_unknown_variant_are_one_line():
  for args, want in [(["--config=configs/stage1.py:tiny", "--config.data.seq_lenn=5"],
                      "error: no config field 'data.seq_lenn' (did you mean 'data.seq_len'?)"),
                     (["--config=configs/stage1.py:huge"], "error: unknown variant 'huge'"),
                     (["--config=configs/stage9.py:tiny"],
                      "error: no config file configs/stage9.py (the stages there: stage0, stage1")]:
    r = subprocess.run([sys.executable, "-m", "launch.train", "--workdir=/tmp/unused", *args],
                       cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith(want), (args, r.stderr[-1000:])
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_a_missing_init_from_is_one_error_and_creates_nothing(tmp_path):
  with pytest.raises(FileNotFoundError, match="init_from .*: no checkpoints folder"):
    ckpt.restore_params(str(tmp_path / "no_such_run"), ["llm"])
  assert not (tmp_path / "no_such_run").exists()      # it used to create .../checkpoints
