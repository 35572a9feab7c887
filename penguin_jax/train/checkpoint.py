"""Training checkpoints with orbax: train state + data iterator state + config (+ the
frozen stage-1a teacher), every `checkpoint_every` steps, async, keep-N; resume from the
latest. Written and restored by all processes; a restore takes the shardings of the
current mesh (any mesh shape).

The teacher is saved with the run (an item of its own, never in the optimizer's state),
so a resumed run distils from exactly the teacher it started with, whether or not
`init.teacher` still points at it.

Faults: `restore_intact` skips checkpoints that cannot be restored (missing, truncated or
corrupt files, bad metadata, a missing item), moves them aside to
`checkpoints/corrupt-STEP` and restores the newest intact one; when none is intact it
moves nothing and says what it found. A failed write leaves the previous checkpoint
intact (orbax writes into a temporary folder and renames it when complete)."""
from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from penguin_jax.train.workdir import is_remote


ITEMS = ("state", "data", "config", "teacher")


def manager(workdir: str, keep: int, async_save: bool = True) -> ocp.CheckpointManager:
  opts = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                      enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(_absolute(workdir) / "checkpoints",
                               options=opts, item_names=ITEMS)


def gather_json(items: list) -> list:
  """Concatenate every process's list of JSON-able items, in process order (each process
  saves the data-iterator states of its own shards; the checkpoint holds all of them)."""
  if jax.process_count() == 1:
    return list(items)
  raw = np.frombuffer(json.dumps(items).encode(), np.uint8)
  n = multihost_utils.process_allgather(np.array([raw.size], np.int32))
  buf = np.zeros(int(np.max(n)), np.uint8)
  buf[:raw.size] = raw
  allb = multihost_utils.process_allgather(buf)
  out = []
  for i in range(jax.process_count()):
    out += json.loads(bytes(allb[i][:int(np.ravel(n)[i])]).decode())
  return out


def save(mgr: ocp.CheckpointManager, step: int, state, data_state: dict, config: dict,
         force: bool = False, teacher=None) -> bool:
  items = dict(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
               config=ocp.args.JsonSave(config))
  if teacher is not None:
    items["teacher"] = ocp.args.StandardSave(teacher)
  return mgr.save(step, args=ocp.args.Composite(**items), force=force)


class Saver:
  """The run's checkpoint writes (async) and their failures. orbax finishes a write in a
  background thread and would report its failure only at the next save, as that one's;
  here each write is settled as soon as it is done (`poll`, every step, host only: no
  device sync) and a failure is reported once, with its own step and the step still on
  disk. `failures_in_a_row` counts failed writes since the last good one."""

  def __init__(self, mgr: ocp.CheckpointManager, log):
    self.mgr, self.log = mgr, log     # log: a logging.Logger
    self.pending = None               # (step, start time) of the write in flight
    self.failures_in_a_row = 0
    self.failed = []                  # steps whose write failed

  def poll(self):
    if self.pending is not None and not self.mgr.is_saving_in_progress():
      self._settle()

  def save(self, step: int, state, data_state: dict, config: dict, teacher=None):
    if self.pending is not None:
      self._settle()                  # orbax waits for it anyway before the next write
    try:
      save(self.mgr, step, state, data_state, config, force=True, teacher=teacher)
    except Exception as e:  # disk full, permissions, a bucket gone: the previous one stays
      self._failed(step, e)
      return
    self.pending = (step, time.time())

  def finish(self):
    """Wait for the write in flight and settle it."""
    if self.pending is not None:
      self._settle()

  def close(self):
    self.finish()
    try:
      self.mgr.close()
    except Exception as e:  # orbax raises a failed write's error again: reported already
      if not self.failed:
        self.log.error("closing the checkpoint manager: %s", one_line(e))

  def latest_on_disk(self):
    return self.mgr.latest_step()

  def _settle(self):
    (step, t), self.pending = self.pending, None
    try:
      self.mgr.wait_until_finished()  # re-raises the background thread's error, once
    except Exception as e:
      self._failed(step, e)
      return
    self.failures_in_a_row = 0
    self.log.info("checkpoint step %d saved (%.1f s, written in the background)", step,
                  time.time() - t)

  def _failed(self, step, e):
    self.failures_in_a_row += 1
    self.failed.append(step)
    self.log.error("checkpoint write at step %d failed (%s); the latest checkpoint on disk "
                   "is step %s", step, one_line(e), self.latest_on_disk())


def restore(mgr: ocp.CheckpointManager, abstract_state, step: int | None = None,
            abstract_teacher=None):
  """-> (step, state, data_state, teacher) of `step` (default: the latest), or None.
  `teacher`: restored when `abstract_teacher` is given and the checkpoint holds one,
  else None."""
  step = mgr.latest_step() if step is None else step
  if step is None:
    return None
  items = dict(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore())
  if abstract_teacher is not None and (mgr.directory / str(step) / "teacher").exists():
    items["teacher"] = ocp.args.StandardRestore(abstract_teacher)
  out = mgr.restore(step, args=ocp.args.Composite(**items))
  return step, out.state, out.data, out.get("teacher")


class NoIntactCheckpoint(ValueError):
  """Every checkpoint in the folder fails to restore."""


def one_line(e: BaseException) -> str:
  """One line for an error: the root cause's type and first line (orbax wraps
  TensorStore's message, e.g. "OUT_OF_RANGE ... in OCDBT database", in a long one)."""
  while (e.__cause__ or e.__context__) is not None:
    e = e.__cause__ or e.__context__
  text = (str(e).strip().splitlines() or [""])[0]
  return f"{type(e).__name__}: {text[:240]}" if text else type(e).__name__


def restore_intact(make_manager, abstract_state, abstract_teacher=None, log=print):
  """-> (manager, restore()'s tuple or None): the newest checkpoint that restores. Newer
  ones that do not are reported (one line each: step and reason) and moved aside to
  `corrupt-STEP` in the same folder (process 0; all processes wait for it). None intact:
  `NoIntactCheckpoint` naming every step and its reason, and nothing is moved (a restart
  must not quietly begin from scratch). `make_manager()` -> a fresh CheckpointManager (a
  failed restore can leave orbax's one unusable)."""
  mgr = make_manager()
  failed = []
  for step in sorted(mgr.all_steps(), reverse=True):
    try:
      restored = restore(mgr, abstract_state, step, abstract_teacher=abstract_teacher)
    except Exception as e:  # anything orbax / TensorStore raise for bad files
      failed.append((step, one_line(e)))
      mgr.close()
      mgr = make_manager()
      continue
    if failed:
      root = epath.Path(mgr.directory)
      mgr.close()
      for bad, why in failed:
        log(f"checkpoint step {bad} cannot be restored ({why}); moved aside to "
            f"{root / f'corrupt-{bad}'}, restoring step {step}")
        if jax.process_index() == 0:
          (root / str(bad)).rename(_free(root / f"corrupt-{bad}"))
      multihost_utils.sync_global_devices("checkpoints moved aside")
      mgr = make_manager()
    return mgr, restored
  if failed:
    raise NoIntactCheckpoint(
        f"{mgr.directory}: no checkpoint can be restored (" +
        "; ".join(f"step {s}: {why}" for s, why in failed) + "); nothing was moved: delete "
        "the bad steps to start again from init, or use another --workdir")
  return mgr, None


def _free(path: epath.Path) -> epath.Path:
  """`path`, or `path.2`, `path.3`, ... if taken (a step can go bad twice)."""
  out, i = path, 1
  while out.exists():
    i += 1
    out = path.parent / f"{path.name}.{i}"
  return out


def _absolute(path) -> epath.Path:
  """A local path made absolute (orbax wants one); gs://... as it is."""
  return epath.Path(path if is_remote(path) else os.path.abspath(path))


def _run_manager(path: str) -> ocp.CheckpointManager:
  """Read-only manager of another run: `path` is its workdir or its checkpoints folder."""
  root = _absolute(path)
  root = root if root.name == "checkpoints" else root / "checkpoints"
  if not root.is_dir():
    raise FileNotFoundError(f"{path}: no checkpoints folder (expected a training workdir)")
  return ocp.CheckpointManager(root, item_names=ITEMS,
                               options=ocp.CheckpointManagerOptions(create=False))


def run_info(path: str) -> tuple[int, dict, list]:
  """-> (latest step, run config dict, top-level modules of its parameters) of a training
  run (`path`: its workdir or its checkpoints folder), reading no parameter."""
  mgr = _run_manager(path)
  steps = mgr.all_steps()
  if not steps:
    raise FileNotFoundError(f"{path}: no checkpoint there")
  step = max(steps)
  tree = ocp.PyTreeCheckpointer().metadata(epath.Path(mgr.directory) / str(step) / "state")
  config = mgr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config
  mgr.close()
  return step, config, sorted(tree.item_metadata.tree["params"])


def read_run(path: str, step: int | None = None, modules=None, dtype=None):
  """-> (step, run config dict, params) of a training run's checkpoint (default: the
  latest), for export and stage-to-stage initialisation. Only the parameters are read,
  as host NumPy arrays (floating ones cast to `dtype` while reading when given): never the optimizer
  state, whatever mesh the run was trained on. `modules`: only these top-level modules."""
  mgr = _run_manager(path)
  steps = mgr.all_steps()
  if not steps:
    raise FileNotFoundError(f"{path}: no checkpoint there")
  step = max(steps) if step is None else step
  if step not in steps:
    raise FileNotFoundError(f"{path}: no checkpoint at step {step} (it has {sorted(steps)})")
  state_dir = epath.Path(mgr.directory) / str(step) / "state"
  tree = ocp.PyTreeCheckpointer().metadata(state_dir).item_metadata.tree
  params_md = tree["params"]
  if modules is not None:
    missing = [m for m in modules if m not in params_md]
    if missing:
      raise KeyError(f"{path}: modules {missing} not in its checkpoint (it has {sorted(params_md)})")
    params_md = {m: params_md[m] for m in modules}
  floating = lambda md: jnp.issubdtype(md.dtype, jnp.floating)   # not a quantized base (bf16 is)
  args = jax.tree.map(lambda md: ocp.RestoreArgs(
      restore_type=np.ndarray, dtype=dtype if floating(md) else None), params_md)
  item = jax.tree.map(lambda _: 0, params_md)
  params = ocp.PyTreeCheckpointer().restore(state_dir, args=ocp.args.PyTreeRestore(
      item={"params": item}, restore_args={"params": args}, partial_restore=True))["params"]
  config = mgr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config
  mgr.close()
  return step, config, params


def restore_params(path: str, modules):
  """Parameters of some modules from another run's latest checkpoint (stage to stage
  initialisation). `path`: that run's workdir or its checkpoints folder."""
  try:
    step, _, params = read_run(path, modules=list(modules))
  except (FileNotFoundError, KeyError) as e:
    raise type(e)(f"init_from {e.args[0]}") from None
  return params, step
