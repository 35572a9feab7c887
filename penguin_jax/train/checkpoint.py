"""Training checkpoints with orbax: train state + data iterator state + config, every
`checkpoint_every` steps, async, keep-N; resume from the latest. Written and restored by
all processes; a restore takes the shardings of the current mesh (any mesh shape)."""
from __future__ import annotations

import json
import os

import jax
import orbax.checkpoint as ocp


def manager(workdir: str, keep: int, async_save: bool = True) -> ocp.CheckpointManager:
  opts = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                      enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"),
                               options=opts, item_names=("state", "data", "config"))


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
         force: bool = False) -> bool:
  return mgr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=ocp.args.JsonSave(data_state),
      config=ocp.args.JsonSave(config)), force=force)


def restore(mgr: ocp.CheckpointManager, abstract_state, step: int | None = None):
  """-> (step, state, data_state) of `step` (default: the latest), or None."""
  step = mgr.latest_step() if step is None else step
  if step is None:
    return None
  out = mgr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
  return step, out.state, out.data


def restore_params(path: str, modules):
  """Parameters of some modules from another run's latest checkpoint (stage to stage
  initialisation). `path`: that run's workdir or its checkpoints folder."""
  root = path if os.path.basename(path.rstrip("/")) == "checkpoints" else os.path.join(path, "checkpoints")
  mgr = ocp.CheckpointManager(os.path.abspath(root), item_names=("state", "data", "config"))
  step = mgr.latest_step()
  if step is None:
    raise FileNotFoundError(f"init_from {path}: no checkpoint there")
  tree = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  params = tree.state["params"]
  missing = [m for m in modules if m not in params]
  if missing:
    raise KeyError(f"init_from {path}: modules {missing} not in its checkpoint "
                   f"(it has {sorted(params)})")
  return {m: params[m] for m in modules}, step
