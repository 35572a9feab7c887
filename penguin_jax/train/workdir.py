"""The run's folder, WORKDIR: a local path or any path `etils.epath` opens (gs://BUCKET/...
through fsspec's gcsfs, s3://...).

Checkpoints go through orbax and the profile through jax.profiler, which write gs:// themselves;
metrics.jsonl, TensorBoard events and the run lock go through epath. Object stores have no append and no
exclusive create, so on them metrics.jsonl is rewritten whole at each log line, TensorBoard
events are written locally and copied up after each flush, and the lock is checked, then
written (two runs started in the same second are not told apart). What must be a local
file (the demo corpus's TFDS dataset, a random teacher's safetensors) lives in
`data.demo_dir` / a local cache when WORKDIR is remote.
"""
from __future__ import annotations

import atexit
import logging
import os
import socket
import tempfile

from etils import epath

log = logging.getLogger("train")


def is_remote(path) -> bool:
  return "://" in os.fspath(path)


def make(path, label: str = "") -> epath.Path:
  """A run's folder (`label`: how a message names it; `--workdir=PATH`), made if needed. A path that
  cannot be a writable folder (a file, under a file, no permission, a read-only file
  system or bucket) is a ValueError of one line. Writability is tried by writing a file
  (`os.access` says yes to root on a read-only file system, and knows no buckets)."""
  p, label = epath.Path(path), label or f"--workdir={path}"
  if not is_remote(path) and os.path.isfile(path):
    raise ValueError(f"{label} is a file; give a folder")
  try:
    p.mkdir(parents=True, exist_ok=True)
  except OSError as e:   # NotADirectoryError, FileExistsError, PermissionError, ...
    raise ValueError(f"{label}: cannot make the folder ({e.strerror or e})") from None
  probe = p / f".write-probe-{os.getpid()}"
  try:
    probe.write_text("")
    probe.unlink()
  except OSError as e:
    raise ValueError(f"{label}: the folder is not writable ({e.strerror or e})") from None
  return p


class AppendFile:
  """A text file that grows by lines: appended to locally, rewritten whole on an object
  store (lines already there are kept)."""

  def __init__(self, path):
    self.path = epath.Path(path)
    self.remote = is_remote(path)
    if self.remote:
      self.lines = self.path.read_text().splitlines(keepends=True) if self.path.exists() else []
    else:
      self.file = open(self.path, "a")

  def write(self, line: str):
    if self.remote:
      self.lines.append(line)
      self.path.write_text("".join(self.lines))
    else:
      self.file.write(line)
      self.file.flush()

  def close(self):
    if not self.remote:
      self.file.close()


def local_dir(path) -> tuple[str, epath.Path | None]:
  """-> (a local folder to write into, the remote folder to copy it to or None)."""
  if not is_remote(path):
    return os.fspath(path), None
  return tempfile.mkdtemp(prefix="penguin_"), epath.Path(path)


def copy_up(local: str, remote: epath.Path | None):
  """Copy the files of `local` (flat) to `remote` (after each TensorBoard flush)."""
  if remote is None:
    return
  remote.mkdir(parents=True, exist_ok=True)
  for name in os.listdir(local):
    with open(os.path.join(local, name), "rb") as f:
      (remote / name).write_bytes(f.read())


def lock(workdir):
  """One run per workdir: WORKDIR/run.lock holds "host pid" of the run that owns it
  (process 0), removed at exit. A second run stops with one line; a lock left by a dead
  process on this host (kill -9, a crash) is taken over, with a line saying so."""
  path, me = epath.Path(workdir) / "run.lock", f"{socket.gethostname()} {os.getpid()}"
  for _ in range(2):
    if is_remote(workdir):
      taken = path.exists()
      if not taken:
        path.write_text(me)
    else:
      try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        path.write_text(me)
        taken = False
      except FileExistsError:
        taken = True
    if not taken:
      atexit.register(lambda: path.exists() and path.read_text() == me and path.unlink())
      return
    host, pid = (path.read_text().split() + ["?", "0"])[:2]
    alive = True
    if host == socket.gethostname() and pid.isdigit():
      try:
        os.kill(int(pid), 0)
      except ProcessLookupError:
        alive = False
      except PermissionError:
        pass
    if alive:
      raise ValueError(f"{workdir} is in use by another run (pid {pid} on {host}, {path}); "
                       "use another --workdir, or delete the lock if that run is gone")
    log.warning("taking over %s, left by a process that is gone (pid %s)", path, pid)
    path.unlink()
