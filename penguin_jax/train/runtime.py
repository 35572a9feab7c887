"""The process a run lives in: JAX's devices (CPU device count, multi-host start), the
device mesh of `config.mesh`, the compilation cache, and log levels.

Call `start(...)` before anything touches a device: XLA reads its flags and
`jax.distributed` must start when the first backend is created.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
from importlib import metadata
from typing import Callable, Optional

import jax
from jax._src import hardware_utils  # jax's TPU probe (PCI ids; no public twin)
from jax.sharding import Mesh

from penguin_jax.sharding import make_mesh
from penguin_jax.train import workdir as workdir_lib

log = logging.getLogger("train")
NOISY = ("absl", "jax._src", "orbax", "grain", "tensorflow_datasets")
DEVICES_HINT = ("on a CPU machine, --local_device_count=N (launch.train) or "
                "XLA_FLAGS=--xla_force_host_platform_device_count=N makes N devices")


def start(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
          process_id: Optional[int] = None, local_device_count: Optional[int] = None,
          lost_process_timeout_s: int = 60):
  """Devices and processes: `local_device_count` CPU devices; a multi-host run started
  with `coordinator_address` (CPU processes talk over gloo), or found by jax on a TPU pod
  slice. On a machine with no accelerator, JAX is kept to the CPU (`cpu_if_idle`). JAX's
  own heartbeat timeout is twice `lost_process_timeout_s`: `PeerWatch` speaks first."""
  cpu_if_idle()
  if local_device_count:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={local_device_count}")
  beat = dict(heartbeat_timeout_seconds=2 * lost_process_timeout_s)
  if coordinator_address:
    if jax.config.jax_platforms in (None, "", "cpu") and local_device_count:
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes, process_id, **beat)
  elif os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
    jax.distributed.initialize(**beat)


def lost_process_timeout(cfg) -> int:
  """`config.lost_process_timeout_s`; a config file written before the field (a user's
  copy of an older configs/) gets configs/common.py's default."""
  return cfg.get("lost_process_timeout_s", 60)


class PeerWatch:
  """A lost process stops the others of a multi-process run, with one line (docs/faults.md).

  A thread per process bumps its counter in the coordination service's key-value store
  every `timeout_s / 6` s and reads the others'; a process whose counter has not moved for
  `timeout_s` (or a service that no longer answers: process 0, which holds it, is gone) is
  lost: `message(line)` names it, and this process exits with `EXIT_CODE` (os._exit: its
  main thread may be blocked in a collective with the lost one; the next launch resumes
  from the last checkpoint). Without it JAX's runtime aborts the process after its
  heartbeat timeout, with no line of ours. The key-value store is the client jax's
  distributed runtime holds (`jax._src.distributed`: no public handle; orbax uses it too).
  """
  EXIT_CODE = 6

  def __init__(self, timeout_s: float, message: Callable[[str], None]):
    from jax._src import distributed     # the coordination service's client (see above)
    self.client, self.timeout_s, self.message = distributed.global_state.client, timeout_s, message
    self.me, self.n = jax.process_index(), jax.process_count()
    threading.Thread(target=self._watch, name="peer-watch", daemon=True).start()

  def _watch(self):
    seen = {p: (-1, time.monotonic()) for p in range(self.n) if p != self.me}
    beat = 0
    while True:
      try:
        beat += 1
        self.client.key_value_set(f"penguin/alive/{self.me}", str(beat), allow_overwrite=True)
        values = {k.rsplit("/", 1)[-1]: v
                  for k, v in self.client.key_value_dir_get("penguin/alive/")}
      except Exception as e:  # the service is gone with process 0
        return self._lost(0, f"the coordination service does not answer "
                             f"({str(e).strip().splitlines()[0][:120]})")
      now = time.monotonic()
      for p, (value, since) in seen.items():
        v = values.get(str(p), value)
        if v != value:
          seen[p] = (v, now)
        elif now - since > self.timeout_s:
          return self._lost(p, f"no sign of life for {now - since:.0f} s")
      time.sleep(self.timeout_s / 6)

  def after_failure(self, e: Exception):
    """A collective failed in the main thread (gloo: "connection reset by peer"): the
    watch names the lost process within its timeout and exits; if it does not, the
    failure itself is the line. Never returns."""
    time.sleep(1.5 * self.timeout_s)
    self._exit(f"a collective failed ({type(e).__name__}: "
               f"{str(e).strip().splitlines()[0][:200]}) and no process was found lost")

  def _lost(self, p: int, why: str):
    self._exit(f"process {p} of {self.n} is lost ({why})")

  def _exit(self, line: str):
    self.message(line)
    logging.shutdown()
    sys.stderr.flush()
    os._exit(self.EXIT_CODE)   # not sys.exit: jax's shutdown would wait for the lost process


def cpu_if_idle():
  """JAX on the CPU alone where there is no TPU chip and no GPU plugin: libtpu (which the
  `aot` and `test` extras install) would otherwise load and print start-up errors about
  the TPU it cannot find. JAX_PLATFORMS, when set, wins."""
  if os.environ.get("JAX_PLATFORMS") is not None or jax.config.jax_platforms:
    return
  if metadata.entry_points(group="jax_plugins"):       # a GPU plugin (jax-cuda*, rocm)
    return
  if hardware_utils.num_available_tpu_chips_and_device_id()[0] == 0:
    jax.config.update("jax_platforms", "cpu")


def quiet_logs():
  """Libraries' INFO lines off, and orbax's lines (through absl) off altogether: on a
  normal run they read like damage ("Metadata file does not exist" on every
  `init_from`), and a failed checkpoint write is the one line `checkpoint.Saver` logs
  (orbax's threads would log its traceback several times over, through absl and asyncio)."""
  for name in NOISY:
    logging.getLogger(name).setLevel(logging.ERROR if name == "orbax" else logging.WARNING)
  logging.getLogger("absl").addFilter(lambda r: f"{os.sep}orbax{os.sep}" not in r.pathname)
  logging.getLogger("asyncio").setLevel(logging.CRITICAL)


def compilation_cache(cfg, workdir: str) -> Optional[str]:
  """JAX's persistent compilation cache for this run (`config.jax_cache_dir`): "auto" =
  $JAX_COMPILATION_CACHE_DIR when set, else `.jax_cache` beside WORKDIR (in its parent
  folder, so the stages of one recipe and a restarted run share it, and nothing else
  does); "" = off; else that folder. A restarted or resumed run loads its compiled step
  instead of compiling it again."""
  where = cfg.jax_cache_dir
  if where == "auto" and os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    where = os.environ["JAX_COMPILATION_CACHE_DIR"]
  elif where == "auto":
    parent = os.path.dirname(os.fspath(workdir).rstrip("/")) or "."
    where = (parent + "/.jax_cache" if workdir_lib.is_remote(workdir)
             else os.path.join(os.path.abspath(parent), ".jax_cache"))
  if where:
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(where))
  return where or None


def mesh(cfg, devices=None) -> Mesh:
  """The (data, fsdp, tensor) mesh of `config.mesh` over the devices; one that does not
  fit them is one line saying how to get more."""
  try:
    return make_mesh(**cfg.mesh.to_dict(), devices=devices)
  except ValueError as e:
    raise ValueError(f"config.mesh: {e}; {DEVICES_HINT}") from None
