"""Read and write `.safetensors` files as NumPy arrays, bfloat16 included.

The `safetensors` package's NumPy backend has no bfloat16, and its Flax backend puts every
tensor on the default accelerator; conversion of an 8B checkpoint wants host memory only.
The format is a little-endian u64 header length, a JSON header, then raw bytes.
"""
from __future__ import annotations

import json
import mmap
import os
import struct

import ml_dtypes
import numpy as np

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16,
    "BF16": ml_dtypes.bfloat16, "I64": np.int64, "I32": np.int32, "I16": np.int16,
    "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


def load_file(path: str) -> dict[str, np.ndarray]:
  """All tensors of one file (memory-mapped, read-only views)."""
  try:
    with open(path, "rb") as f:
      mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    (n,) = struct.unpack("<Q", mm[:8])
    header = json.loads(mm[8:8 + n])
  except Exception as e:  # truncated / not safetensors
    raise ValueError(f"{path}: not a readable safetensors file ({e})") from e
  base = 8 + n
  out = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    if info["dtype"] not in _DTYPES:
      raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
    start, end = info["data_offsets"]
    dt = np.dtype(_DTYPES[info["dtype"]])
    if base + end > len(mm):
      raise ValueError(f"{path}: tensor {name!r} extends past the end of the file (truncated?)")
    out[name] = np.frombuffer(mm, dtype=dt, count=(end - start) // dt.itemsize,
                              offset=base + start).reshape(info["shape"])
  return out


def save_file(tensors: dict[str, np.ndarray], path: str, metadata: dict | None = None):
  header, offset, arrays = {}, 0, []
  for name in sorted(tensors):
    a = np.ascontiguousarray(tensors[name])
    if a.dtype not in _NAMES:
      raise ValueError(f"tensor {name!r}: dtype {a.dtype} cannot be written to safetensors")
    header[name] = {"dtype": _NAMES[a.dtype], "shape": list(a.shape),
                    "data_offsets": [offset, offset + a.nbytes]}
    offset += a.nbytes
    arrays.append(a)
  header["__metadata__"] = {"format": "pt", **(metadata or {})}
  hb = json.dumps(header, separators=(",", ":")).encode()
  hb += b" " * ((-len(hb)) % 8)
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    f.write(struct.pack("<Q", len(hb)))
    f.write(hb)
    for a in arrays:
      f.write(a.tobytes())
  os.replace(tmp, path)
