"""Compile the real training step for a slice ahead of time and say what it costs.

`analyse(cfg, "v5e-16")` builds the training program (`program.build`, the one
`launch.train` runs) on compile-only devices of that topology (libtpu's compiler on any
host; no TPU, data, tokenizer or weights), compiles it and reports per chip:

  memory      parameters, optimizer state, batch and teacher from their shardings; the
              compiler's argument / output / aliased / temp bytes and their peak
              (argument + output - aliased + temp) against the chip's usable HBM;
              state arrays over 64 MB that are replicated;
  FLOPs       model FLOPs of `flops.step_flops` by module and kind (encoder attention
              for frames of `frame_patches` patches, default the largest image the config
              admits); XLA's cost analysis only as a labelled aside (it counts a loop
              body once and gives Pallas kernels nothing);
  collectives of the compiled step by kind and part of the step (`hlo.collectives`);
  host        bytes moved to and from host memory per step (remat policy "offload");
              they overlap with compute and are not in the prediction;
  prediction  compute at the chip's peak (hardware FLOPs: remat recompute included) and
              communication at its ICI bandwidth, both per step; MFU, tokens/s and
              chip-hours follow. An upper bound on speed: it assumes peak FLOP/s.
"""
from __future__ import annotations

import re
import time
from typing import Optional

import jax
import numpy as np

from penguin_jax.train import hardware, hlo, program as program_lib

REPLICATED_WARN_BYTES = 64 * 2 ** 20


def _shard_bytes(tree) -> float:
  """Bytes per device of a tree of ShapeDtypeStructs with shardings (largest shard)."""
  total = 0.0
  for x in jax.tree.leaves(tree):
    shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
    total += float(np.prod(shape)) * np.dtype(x.dtype).itemsize
  return total


def _replicated(tree, prefix: str, n_devices: int) -> list:
  if n_devices <= 1:
    return []
  out = []
  for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
    nbytes = float(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
    if nbytes > REPLICATED_WARN_BYTES and x.sharding.is_fully_replicated:
      out.append({"name": prefix + jax.tree_util.keystr(path), "bytes": nbytes})
  return out


def versions() -> dict:
  from importlib import metadata
  out = {"jax": jax.__version__, "jaxlib": metadata.version("jaxlib")}
  try:
    out["libtpu"] = metadata.version("libtpu")
  except metadata.PackageNotFoundError:
    out["libtpu"] = None
  return out


def _oom_figure(message: str) -> Optional[str]:
  for pattern in (r"Used [\d.]+[KMGT]? of [\d.]+[KMGT]? hbm[^.\n]*", r"total memory required[^\n]*",
                  r"Ran out of memory[^\n]*"):
    m = re.search(pattern, message)
    if m:
      return m.group(0).strip()
  return None


def make_program(cfg, sl: hardware.Slice) -> program_lib.TrainProgram:
  """The training program on the slice's (compile-only) devices."""
  from penguin_jax.sharding import make_mesh
  return program_lib.build(cfg, make_mesh(**cfg.mesh.to_dict(), devices=hardware.compile_devices(sl)))


def analyse(cfg, topology: str, *, frame_patches: Optional[int] = None, log=None) -> dict:
  """Compile the step of `cfg` for `topology` and return the report (module docstring)."""
  log = log or (lambda *_: None)
  sl = hardware.parse_slice(topology)
  program = make_program(cfg, sl)
  mesh = program.mesh
  d = cfg.data
  dp = mesh.shape["data"] * mesh.shape["fsdp"]
  rep = {
      "config": f"{cfg.stage}:{cfg.variant}", "topology": sl.name, "tpu_topology": sl.topology,
      "chips": sl.num_devices, "device_kind": mesh.devices.flat[0].device_kind,
      "mesh": dict(mesh.shape), "global_batch": d.global_batch, "grad_accum": program.grad_accum,
      "rows_per_chip": d.global_batch // (dp * program.grad_accum),
      "remat": cfg.model.remat_policy, "attention": cfg.model.attention,
      "per_step": {"tokens": d.global_batch * d.seq_len, "patches": d.global_batch * d.max_patches,
                   "visual_tokens": d.global_batch * d.max_visual_tokens},
      "versions": versions(),
  }
  t0 = time.time()
  lowered = program.lower()
  rep["lower_s"] = time.time() - t0
  log(f"lowered in {rep['lower_s']:.1f}s; compiling for {sl.topology} ({sl.num_devices} devices)")
  state = program.abstract_state
  memory = {"params": _shard_bytes(state.params), "opt_state": _shard_bytes(state.opt_state),
            "batch": _shard_bytes(program.abstract_batch),
            "teacher": _shard_bytes(program.abstract_teacher) if program.abstract_teacher else 0.0}
  rep["replicated_over_64MB"] = (_replicated(state.params, "params", sl.num_devices) +
                                 _replicated(state.opt_state, "opt_state", sl.num_devices))
  usable = sl.chip.usable_hbm_bytes if sl.chip else None
  memory["usable"] = usable
  rep["memory"] = memory
  t0 = time.time()
  try:
    compiled = lowered.compile()
  except Exception as e:  # the compiler says how much it needed
    msg = str(e)
    if "RESOURCE_EXHAUSTED" not in msg and "out of memory" not in msg.lower():
      raise
    rep.update(compile_s=time.time() - t0, fits=False, oom=_oom_figure(msg) or msg.splitlines()[0])
    return rep
  rep["compile_s"] = time.time() - t0
  ma = compiled.memory_analysis()
  for k in ("argument", "output", "alias", "temp"):
    memory[k] = float(getattr(ma, f"{k}_size_in_bytes"))
  memory["host_temp"] = float(getattr(ma, "host_temp_size_in_bytes", 0) or 0)
  memory["peak"] = memory["argument"] + memory["output"] - memory["alias"] + memory["temp"]
  if usable:
    memory["fraction"] = memory["peak"] / usable
    memory["headroom"] = usable - memory["peak"]
  rep["fits"] = bool(usable is None or memory["peak"] <= usable)

  fl = program.flops(frame_patches=frame_patches)
  rep["frame_patches"] = frame_patches or program_lib.max_frame_patches(cfg)
  rep["flops"] = fl
  rep["flops_dense_encoder_attention"] = program.flops(
      frame_patches=cfg.data.max_patches)["encoder"]["attention"]
  try:
    xla = compiled.cost_analysis()
    xla = xla[0] if isinstance(xla, (list, tuple)) else xla
    rep["xla_flops_per_chip"] = float(xla.get("flops", 0.0))
  except Exception:  # not every backend implements it
    rep["xla_flops_per_chip"] = None
  text = compiled.as_text()
  coll = hlo.collectives(text)
  rep["collectives"] = {"by_kind": hlo.summarize(coll["rows"], "kind"),
                        "by_where": hlo.summarize(coll["rows"], "where"),
                        "rows": coll["rows"], "unknown_loops": coll["unknown_loops"]}
  rep["host_transfer_bytes"] = hlo.host_transfers(text)
  wire = sum(r["wire_bytes"] for r in coll["rows"])
  rep["collectives"]["wire_bytes"] = wire
  rep["collectives"]["bytes"] = sum(r["bytes"] for r in coll["rows"])
  if sl.chip is not None:
    compute = fl["hardware"] / (sl.num_devices * sl.chip.peak_flops)
    comm = wire / sl.chip.ici_bandwidth if sl.chip.ici_bandwidth else 0.0
    step = compute + comm
    tokens = rep["per_step"]["tokens"]
    rep["prediction"] = {
        "compute_s": compute, "communication_s": comm, "step_s": step,
        "step_s_overlapped": max(compute, comm),
        "mfu": fl["model"] / (step * sl.num_devices * sl.chip.peak_flops),
        "tokens_per_s": tokens / step, "tokens_per_s_per_chip": tokens / step / sl.num_devices,
        "chip_hours_total": step * cfg.total_steps * sl.num_devices / 3600,
        "chip_hours_per_billion_tokens": step * sl.num_devices / tokens * 1e9 / 3600,
        "ici_known": sl.chip.ici_bandwidth is not None,
    }
  return rep


def point_config(stage: str, variant: str, overrides: dict):
  """A stage config with `a.b.c=value` overrides (values parsed as config literals)."""
  import importlib
  cfg = importlib.import_module(f"configs.{stage}").get_config(variant)
  for key, value in overrides.items():
    set_field(cfg, key, value)
  return cfg


def set_field(cfg, key: str, value):
  """cfg.a.b = value, where value may be a string to parse with the field's type."""
  import ast
  node = cfg
  parts = key.split(".")
  for p in parts[:-1]:
    node = node[p]
  old = node[parts[-1]]
  if isinstance(value, str) and not isinstance(old, str):
    value = ast.literal_eval(value)
  if isinstance(old, float) and isinstance(value, int):
    value = float(value)
  node[parts[-1]] = value
