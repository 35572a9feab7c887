"""An in-memory stand-in for GCS: fsspec's memory filesystem under the gs protocol,
refusing appends as GCS does. etils.epath (and so TFDS's metadata, our workdir and our
data readers) reaches it through fsspec; C++ readers (ArrayRecord, TensorStore) do not."""
import fsspec
from fsspec.implementations.memory import MemoryFileSystem


class FakeGCS(MemoryFileSystem):
  protocol = ("gs", "gcs")
  store, pseudo_dirs = {}, [""]

  def __init__(self, *args, finalize_on_close=None, **kw):
    super().__init__(*args, **kw)

  def _open(self, path, mode="rb", **kw):
    if "a" in mode:
      raise NotImplementedError("GCS objects cannot be appended to")
    return super()._open(path, mode, **kw)


def install():
  """Registers the stand-in for gs:// and gcs://, empty."""
  for name in FakeGCS.protocol:
    fsspec.register_implementation(name, FakeGCS, clobber=True)
  FakeGCS.store.clear()
  FakeGCS.pseudo_dirs[:] = [""]


def upload(local, remote: str):
  """A local folder's files (recursively) to `remote` (gs://BUCKET/PATH)."""
  fsspec.filesystem("gs").put(str(local), remote, recursive=True)
