"""Training checkpoints with orbax: train state + data iterator state + config (+ the
frozen stage-1a teacher), every `checkpoint_every` steps, async, keep-N; resume from the
latest. Written and restored by all processes; a restore takes the shardings of the
current mesh (any mesh shape).

The teacher is saved with the run (an item of its own, never in the optimizer's state),
so a resumed run distils from exactly the teacher it started with, whether or not
`init.teacher` still points at it."""
from __future__ import annotations

import json
import os

import jax
import orbax.checkpoint as ocp


ITEMS = ("state", "data", "config", "teacher")


def manager(workdir: str, keep: int, async_save: bool = True) -> ocp.CheckpointManager:
  opts = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                      enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"),
                               options=opts, item_names=ITEMS)


def gather_json(items: list) -> list:
  """Concatenate every process's list of JSON-able items, in process order (each process
  saves the data-iterator states of its own shards; the checkpoint holds all of them)."""
  import numpy as np
  from jax.experimental import multihost_utils
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


def _run_manager(path: str) -> ocp.CheckpointManager:
  """Read-only manager of another run: `path` is its workdir or its checkpoints folder."""
  root = path if os.path.basename(path.rstrip("/")) == "checkpoints" else os.path.join(path, "checkpoints")
  if not os.path.isdir(root):
    raise FileNotFoundError(f"{path}: no checkpoints folder (expected a training workdir)")
  return ocp.CheckpointManager(os.path.abspath(root), item_names=ITEMS,
                               options=ocp.CheckpointManagerOptions(create=False))


def read_run(path: str, step: int | None = None, modules=None, dtype=None):
  """-> (step, run config dict, params) of a training run's checkpoint (default: the
  latest), for export and stage-to-stage initialisation. Only the parameters are read,
  as host NumPy arrays (cast to `dtype` while reading when given): never the optimizer
  state, whatever mesh the run was trained on. `modules`: only these top-level modules."""
  import numpy as np
  mgr = _run_manager(path)
  steps = mgr.all_steps()
  if not steps:
    raise FileNotFoundError(f"{path}: no checkpoint there")
  step = max(steps) if step is None else step
  if step not in steps:
    raise FileNotFoundError(f"{path}: no checkpoint at step {step} (it has {sorted(steps)})")
  state_dir = os.path.join(mgr.directory, str(step), "state")
  tree = ocp.PyTreeCheckpointer().metadata(state_dir).item_metadata.tree
  params_md = tree["params"]
  if modules is not None:
    missing = [m for m in modules if m not in params_md]
    if missing:
      raise KeyError(f"{path}: modules {missing} not in its checkpoint (it has {sorted(params_md)})")
    params_md = {m: params_md[m] for m in modules}
  args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray, dtype=dtype), params_md)
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
