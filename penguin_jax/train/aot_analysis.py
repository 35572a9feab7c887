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
  host        bytes moved to and from host memory per step (offloading remat policies),
              at the chip's host-link bandwidth (`hardware.Chip.host_bandwidth`);
  prediction  compute at the chip's peak (hardware FLOPs: remat recompute included; with
              model.quant=int8 the towers' linears at the chip's int8 rate),
              communication at its ICI bandwidth and host transfers at its host link,
              added (the step if none of them overlapped; `step_s_overlapped` the largest
              alone); MFU, tokens/s and chip-hours follow. An upper bound on speed: it
              assumes peak FLOP/s.
"""
from __future__ import annotations

import contextlib
import re
import threading
import time
from importlib import metadata
from typing import Optional

import jax
import numpy as np

from penguin_jax.sharding import make_mesh
from penguin_jax.train import hardware, hlo, program as program_lib, remat

REPLICATED_WARN_BYTES = 64 * 2 ** 20
GiB = 2 ** 30


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
  return program_lib.build(cfg, make_mesh(**cfg.mesh.to_dict(), devices=hardware.compile_devices(sl)))


@contextlib.contextmanager
def ticking(log, what: str, every: float = 20.0):
  """A line every `every` seconds while the block runs (a compile takes minutes)."""
  done, t0 = threading.Event(), time.time()

  def tick():
    while not done.wait(every):
      log(f"... still {what} ({time.time() - t0:.0f} s)")
  thread = threading.Thread(target=tick, daemon=True)
  thread.start()
  try:
    yield
  finally:
    done.set()
    thread.join()


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
      "quant": cfg.model.get("quant", "none"),
      "per_step": {"tokens": d.global_batch * d.seq_len, "patches": d.global_batch * d.max_patches,
                   "visual_tokens": d.global_batch * d.max_visual_tokens},
      "versions": versions(),
  }
  counts, lora = program.param_counts(), program.lora
  rep["parameters"] = {k: counts[k] for k in ("total", "trainable", "frozen")}
  if lora.on:    # adapters only in the optimizer state; the base frozen in base_dtype
    rep["lora"] = {"rank": lora.rank, "modules": list(lora.modules), "base_dtype": lora.base_dtype,
                   "adapters": sum(v for k, v in counts.items() if k.endswith("_adapters"))}
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
    with ticking(log, "compiling"):
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
    # model.quant=int8: the towers' linears at the chip's int8 rate (MFU stays against bf16)
    fast = fl["tower_linears"] if rep["quant"] == "int8" and sl.chip.int8_flops else 0.0
    compute = ((fl["hardware"] - fast) / sl.chip.peak_flops +
               (fast / sl.chip.int8_flops if fast else 0.0)) / sl.num_devices
    comm = wire / sl.chip.ici_bandwidth if sl.chip.ici_bandwidth else 0.0
    host = rep["host_transfer_bytes"] / sl.chip.host_bandwidth
    step = compute + comm + host
    tokens = rep["per_step"]["tokens"]
    rep["prediction"] = {
        "compute_s": compute, "communication_s": comm, "host_s": host, "step_s": step,
        "step_s_overlapped": max(compute, comm, host),
        "mfu": fl["model"] / (step * sl.num_devices * sl.chip.peak_flops),
        "tokens_per_s": tokens / step, "tokens_per_s_per_chip": tokens / step / sl.num_devices,
        "chip_hours_total": step * cfg.total_steps * sl.num_devices / 3600,
        "chip_hours_per_billion_tokens": step * sl.num_devices / tokens * 1e9 / 3600,
        "ici_known": sl.chip.ici_bandwidth is not None,
    }
  return rep


def fmt_bytes(b):
  """Bytes in GiB, or MiB below 1 GiB (with the unit)."""
  if b is None:
    return "-"
  return f"{b / GiB:.2f} GiB" if b >= GiB / 2 else f"{b / 2**20:.1f} MiB"


def fmt_flops(f):
  for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
    if f >= scale:
      return f"{f / scale:.2f} {unit}"
  return f"{f:.0f} FLOP"


def report_lines(r: dict) -> list[str]:
  """The report of `analyse` as the lines `launch.aot` prints."""
  out = []
  v = r["versions"]
  mesh = " ".join(f"{k}={n}" for k, n in r["mesh"].items())
  out.append(f"{r['config']} on {r['topology']} ({r['tpu_topology']}, {r['chips']} x {r['device_kind']})"
        f"  jax {v['jax']}, libtpu {v['libtpu'] or '-'}")
  out.append(f"  mesh {mesh}; global batch {r['global_batch']} = {r['grad_accum']} micro-batch(es) x "
        f"{r['global_batch'] // r['grad_accum']} rows ({r['rows_per_chip']} per chip); "
        f"remat {r['remat']}; attention {r['attention']}" +
        (f"; quantized training {r['quant']}" if r.get("quant", "none") != "none" else ""))
  ps = r["per_step"]
  out.append(f"  per step: {ps['tokens']:,} tokens, {ps['patches']:,} patches, "
        f"{ps['visual_tokens']:,} visual tokens")
  n = r.get("parameters")
  if n:          # reports cached before parameters were recorded have none
    lo = r.get("lora")
    how = (f" (LoRA r={lo['rank']} adapters on {', '.join(lo['modules'])}, base frozen in "
           f"{lo['base_dtype']})" if lo else "")
    out.append(f"  parameters: {n['total']:,}; trainable {n['trainable']:,}{how}; "
               f"frozen {n['frozen']:,}")
  m = r["memory"]
  out.append(f"memory per chip: params {fmt_bytes(m['params'])}, optimizer state "
        f"{fmt_bytes(m['opt_state'])}, batch {fmt_bytes(m['batch'])}, teacher {fmt_bytes(m['teacher'])}")
  for x in r["replicated_over_64MB"]:
    out.append(f"  replicated on every chip: {x['name']} ({x['bytes'] / 2**20:.0f} MB)")
  if not r["fits"] and "oom" in r:
    out.append(f"  DOES NOT FIT: {r['oom']}  (compile {r['compile_s']:.0f} s)")
    return out
  usable = m.get("usable")
  line = (f"  compiler: argument {fmt_bytes(m['argument'])} + output {fmt_bytes(m['output'])} "
          f"- aliased {fmt_bytes(m['alias'])} + temp {fmt_bytes(m['temp'])} = peak {fmt_bytes(m['peak'])}")
  if usable:
    line += (f" of {fmt_bytes(usable)} usable ({100 * m['fraction']:.1f}%), headroom "
             f"{fmt_bytes(m['headroom'])}")
  out.append(line)
  if m.get("host_temp") or r.get("host_transfer_bytes"):
    out.append(f"  host memory (offloaded activations): {fmt_bytes(m['host_temp'])}; "
          f"{fmt_bytes(r['host_transfer_bytes'])} moved per step")
  out.append(f"  fits: {'yes' if r['fits'] else 'NO'}")
  fl = r["flops"]
  out.append(f"model FLOPs per step (encoder attention for frames of {r['frame_patches']} patches):")
  for name, part in fl.items():
    if isinstance(part, dict):
      out.append(f"  {name:10s} matmul {fmt_flops(part['matmul']):>14s}   attention "
            f"{fmt_flops(part['attention']):>14s}")
  out.append(f"  total {fmt_flops(fl['model'])}; with remat recompute {fmt_flops(fl['hardware'])}; "
        f"encoder attention over whole rows (no block skipping) would be "
        f"{fmt_flops(r['flops_dense_encoder_attention'])}")
  if r.get("xla_flops_per_chip") is not None:
    out.append(f"  (XLA's cost analysis says {fmt_flops(r['xla_flops_per_chip'] * r['chips'])}: it counts "
          "each loop body once and Pallas kernels not at all, so it is not the model's FLOPs)")
  c = r["collectives"]
  out.append(f"collectives per chip per step: {fmt_bytes(c['bytes'])} of results, "
        f"{fmt_bytes(c['wire_bytes'])} sent")
  for by in ("by_kind", "by_where"):
    out.append(f"  {by[3:]:5s}: " + ", ".join(f"{k} {fmt_bytes(x['bytes'])} ({x['count']}x)"
                           for k, x in sorted(c[by].items(), key=lambda kv: -kv[1]['bytes'])))
  if c["unknown_loops"]:
    out.append(f"  warning: {len(c['unknown_loops'])} loop(s) with an unknown trip count, counted once")
  p = r.get("prediction")
  if p:
    comm = (f"{p['communication_s']:.2f} s" if p["ici_known"] else "unknown (no ICI figure)")
    host = f" + host transfers {p['host_s']:.2f} s" if p.get("host_s") else ""
    out.append(f"predicted: compute {p['compute_s']:.2f} s + communication {comm}{host} = step "
          f"{p['step_s']:.2f} s ({p['step_s_overlapped']:.2f} s if overlapped); MFU {p['mfu']:.2f}; "
          f"{p['tokens_per_s']:,.0f} tokens/s ({p['tokens_per_s_per_chip']:,.0f} per chip); "
          f"{p['chip_hours_total']:,.0f} chip-hours for the config's steps, "
          f"{p['chip_hours_per_billion_tokens']:.1f} per billion tokens")
  out.append(f"compile {r['compile_s']:.0f} s (lower {r['lower_s']:.1f} s)")
  if r.get("remat_search"):
    out.extend(remat_search_lines(r["remat_search"], r["remat"]))
  return out


def remat_search_lines(trials: list, chosen: str) -> list[str]:
  """The candidates of remat_policy "auto", cheapest recompute first (remat.search)."""
  out = [f"remat_policy auto chose {chosen} (peak at most {100 * remat.HEADROOM:.0f}% of usable "
         "memory, the shortest predicted step):",
         f"  {'policy':18s} {'recompute':>14s} {'memory':>8s} {'step s':>8s} {'MFU':>6s}"]
  for t in trials:
    mem = f"{100 * t['fraction']:.1f}%" if t.get("fraction") is not None else "-"
    step = f"{t['step_s']:.2f}" if t.get("step_s") is not None else "-"
    mfu = f"{t['mfu']:.3f}" if t.get("mfu") is not None else "-"
    mark = "*" if t["policy"] == chosen else " "
    out.append(f"{mark} {t['policy']:18s} {fmt_flops(t['recompute_flops']):>14s} {mem:>8s} "
               f"{step:>8s} {mfu:>6s}  {t.get('note', '')}")
  return out


