"""Before you rent a slice: compile the real training step for a TPU topology, here.

  python -m launch.aot --config=configs/stage3.py:2b --topology=v5e-16
  python -m launch.aot --config=configs/stage3.py:8b --topology=v5e-64 --config.data.rows_per_chip=2
  python -m launch.aot --config=configs/stage1.py:tiny --topology=cpu:8 --json=report.json

Compiles the step that `launch.train` runs (same builder, `penguin_jax/train/program.py`)
with libtpu's compiler for compile-only devices of the topology: no TPU, data, tokenizer
or weights. Prints memory per chip against usable HBM, model FLOPs by module,
the collectives of the compiled step, a predicted step time, MFU, tokens/s and
chip-hours (see penguin_jax/train/aot.py for what each figure means). Exit status 0 when
it fits, 3 when it does not (with the compiler's figure), 2 on a usage error.

A sweep compiles a grid, one compile per point (each in its own process), caches every
result in a JSONL file keyed by the point and the versions (never recompiled), and
writes sweep.csv, sweep.md and sweep.png into --out:

  python -m launch.aot --sweep --stages=stage1,stage3 --variants=2b,8b \\
      --topologies=v5e-16,v5e-64 --vary=model.remat_policy=full,dots --out=sweep/
  python -m launch.aot --sweep --search=batch --stages=stage3 --variants=2b \\
      --topologies=v5e-16 --vary=model.remat_policy=full,dots_no_batch --out=sweep/

`--search=batch` finds, per point, the largest data.rows_per_chip (1, 2, 4, ...) that
fits. A grid can also live in a flag file: `--flagfile=my_sweep.flags`.
"""
from __future__ import annotations

import csv
import itertools
import json
import os
import subprocess
import sys
import tempfile

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "stage config, e.g. configs/stage3.py:2b",
                                lock_config=True)
flags.DEFINE_string("topology", None, "v5e-16, v5e-64, v5p-8, v6e-16, v5e:4x4, ... or cpu:N")
flags.DEFINE_string("json", None, "also write the report as JSON to this file")
flags.DEFINE_integer("frame_patches", 0, "encoder attention FLOPs assume frames of this many "
                     "patches (default: the largest image the config admits)")
flags.DEFINE_bool("sweep", False, "compile a grid (see --stages, --variants, --topologies, --vary)")
flags.DEFINE_list("stages", ["stage1", "stage1_hres", "stage2", "stage3"], "sweep: stage configs")
flags.DEFINE_list("variants", ["2b", "8b"], "sweep: variants")
flags.DEFINE_list("topologies", ["v5e-16", "v5e-64", "v5p-8", "v6e-16"], "sweep: topologies")
flags.DEFINE_multi_string("vary", [], "sweep: FIELD=V1,V2,... (repeatable), e.g. "
                          "model.remat_policy=full,dots or data.seq_len=8192,16384")
flags.DEFINE_enum("search", None, ["batch"], "sweep: find the largest rows_per_chip that fits")
flags.DEFINE_string("out", "aot_sweep", "sweep: folder for sweep.csv, sweep.md, sweep.png")
flags.DEFINE_string("cache", None, "sweep: JSONL cache (default OUT/cache.jsonl)")
flags.DEFINE_integer("timeout", 3600, "sweep: seconds allowed per compile")
FLAGS = flags.FLAGS
GiB = 2 ** 30
EXIT_DOES_NOT_FIT = 3


def _fmt_bytes(b):
  """Bytes in GiB, or MiB below 1 GiB (with the unit)."""
  if b is None:
    return "-"
  return f"{b / GiB:.2f} GiB" if b >= GiB / 2 else f"{b / 2**20:.1f} MiB"


def _fmt_flops(f):
  for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
    if f >= scale:
      return f"{f / scale:.2f} {unit}"
  return f"{f:.0f} FLOP"


def _print_report(r: dict):
  v = r["versions"]
  mesh = " ".join(f"{k}={n}" for k, n in r["mesh"].items())
  print(f"{r['config']} on {r['topology']} ({r['tpu_topology']}, {r['chips']} x {r['device_kind']})"
        f"  jax {v['jax']}, libtpu {v['libtpu'] or '-'}")
  print(f"  mesh {mesh}; global batch {r['global_batch']} = {r['grad_accum']} micro-batch(es) x "
        f"{r['global_batch'] // r['grad_accum']} rows ({r['rows_per_chip']} per chip); "
        f"remat {r['remat']}; attention {r['attention']}")
  ps = r["per_step"]
  print(f"  per step: {ps['tokens']:,} tokens, {ps['patches']:,} patches, "
        f"{ps['visual_tokens']:,} visual tokens")
  m = r["memory"]
  print(f"memory per chip: params {_fmt_bytes(m['params'])}, optimizer state "
        f"{_fmt_bytes(m['opt_state'])}, batch {_fmt_bytes(m['batch'])}, teacher {_fmt_bytes(m['teacher'])}")
  for x in r["replicated_over_64MB"]:
    print(f"  replicated on every chip: {x['name']} ({x['bytes'] / 2**20:.0f} MB)")
  if not r["fits"] and "oom" in r:
    print(f"  DOES NOT FIT: {r['oom']}  (compile {r['compile_s']:.0f} s)")
    return
  usable = m.get("usable")
  line = (f"  compiler: argument {_fmt_bytes(m['argument'])} + output {_fmt_bytes(m['output'])} "
          f"- aliased {_fmt_bytes(m['alias'])} + temp {_fmt_bytes(m['temp'])} = peak {_fmt_bytes(m['peak'])}")
  if usable:
    line += (f" of {_fmt_bytes(usable)} usable ({100 * m['fraction']:.1f}%), headroom "
             f"{_fmt_bytes(m['headroom'])}")
  print(line)
  if m.get("host_temp") or r.get("host_transfer_bytes"):
    print(f"  host memory (offloaded layer inputs): {_fmt_bytes(m['host_temp'])}; "
          f"{_fmt_bytes(r['host_transfer_bytes'])} moved per step")
  print(f"  fits: {'yes' if r['fits'] else 'NO'}")
  fl = r["flops"]
  print(f"model FLOPs per step (encoder attention for frames of {r['frame_patches']} patches):")
  for name, part in fl.items():
    if isinstance(part, dict):
      print(f"  {name:10s} matmul {_fmt_flops(part['matmul']):>14s}   attention "
            f"{_fmt_flops(part['attention']):>14s}")
  print(f"  total {_fmt_flops(fl['model'])}; with remat recompute {_fmt_flops(fl['hardware'])}; "
        f"encoder attention over whole rows (no block skipping) would be "
        f"{_fmt_flops(r['flops_dense_encoder_attention'])}")
  if r.get("xla_flops_per_chip") is not None:
    print(f"  (XLA's cost analysis says {_fmt_flops(r['xla_flops_per_chip'] * r['chips'])}: it counts "
          "each loop body once and Pallas kernels not at all, so it is not the model's FLOPs)")
  c = r["collectives"]
  print(f"collectives per chip per step: {_fmt_bytes(c['bytes'])} of results, "
        f"{_fmt_bytes(c['wire_bytes'])} sent")
  for by in ("by_kind", "by_where"):
    print(f"  {by[3:]:5s}: " + ", ".join(f"{k} {_fmt_bytes(x['bytes'])} ({x['count']}x)"
                           for k, x in sorted(c[by].items(), key=lambda kv: -kv[1]['bytes'])))
  if c["unknown_loops"]:
    print(f"  warning: {len(c['unknown_loops'])} loop(s) with an unknown trip count, counted once")
  p = r.get("prediction")
  if p:
    comm = (f"{p['communication_s']:.2f} s" if p["ici_known"] else "unknown (no ICI figure)")
    print(f"predicted: compute {p['compute_s']:.2f} s + communication {comm} = step "
          f"{p['step_s']:.2f} s ({p['step_s_overlapped']:.2f} s if overlapped); MFU {p['mfu']:.2f}; "
          f"{p['tokens_per_s']:,.0f} tokens/s ({p['tokens_per_s_per_chip']:,.0f} per chip); "
          f"{p['chip_hours_total']:,.0f} chip-hours for the config's steps, "
          f"{p['chip_hours_per_billion_tokens']:.1f} per billion tokens")
  print(f"compile {r['compile_s']:.0f} s (lower {r['lower_s']:.1f} s)")


def _overrides_from_argv(argv) -> dict:
  """`--config.a.b=v` arguments, to label the point (sweep children get them too)."""
  out = {}
  for a in argv:
    if a.startswith("--config.") and "=" in a:
      k, v = a[len("--config."):].split("=", 1)
      out[k] = v
  return out


def _one(argv) -> int:
  from penguin_jax.train import aot_analysis as aot, hardware
  if FLAGS.config is None or FLAGS.topology is None:
    raise app.UsageError("give --config=configs/STAGE.py:VARIANT and --topology=... (or --sweep)")
  sl = hardware.parse_slice(FLAGS.topology)
  if sl.chip is not None:
    problem = hardware.libtpu_problem()
    if problem:
      print(f"error: {problem}", file=sys.stderr)
      return 2
  rep = aot.analyse(FLAGS.config, FLAGS.topology, frame_patches=FLAGS.frame_patches or None,
                    log=lambda s: print(s, file=sys.stderr, flush=True))
  rep["overrides"] = _overrides_from_argv(argv)
  _print_report(rep)
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump(rep, f, indent=1)
  return 0 if rep["fits"] else EXIT_DOES_NOT_FIT


# --------------------------------------------------------------------------- sweep
def _grid():
  """Points (stage, variant, topology, overrides) of the command line's grid."""
  axes = []
  for spec in FLAGS.vary:
    if "=" not in spec:
      raise app.UsageError(f"--vary={spec!r}: use FIELD=V1,V2")
    k, vals = spec.split("=", 1)
    axes.append([(k, v) for v in vals.split(",")])
  for stage, variant, topo in itertools.product(FLAGS.stages, FLAGS.variants, FLAGS.topologies):
    for combo in itertools.product(*axes):
      yield stage, variant, topo, dict(combo)


def code_fingerprint() -> str:
  """A hash of the code that builds the step (penguin_jax/, configs/): a cached result
  is reused only for the same code, jax and libtpu."""
  import hashlib
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  h = hashlib.sha256()
  for folder in ("penguin_jax", "configs"):
    for dirpath, _, files in sorted(os.walk(os.path.join(root, folder))):
      for name in sorted(f for f in files if f.endswith(".py")):
        with open(os.path.join(dirpath, name), "rb") as f:
          h.update(name.encode() + f.read())
  return h.hexdigest()[:16]


def _key(stage, variant, topo, overrides, vers) -> str:
  return json.dumps({"stage": stage, "variant": variant, "topology": topo,
                     "overrides": dict(sorted(overrides.items())),
                     "frame_patches": FLAGS.frame_patches, "versions": vers}, sort_keys=True)


def _compile_point(stage, variant, topo, overrides, cache, cache_path, vers):
  """A report, from the cache or from a compile in a child process (appended)."""
  key = _key(stage, variant, topo, overrides, vers)
  if key in cache:
    return cache[key], True
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "r.json")
    cmd = [sys.executable, "-m", "launch.aot", f"--config=configs/{stage}.py:{variant}",
           f"--topology={topo}", f"--json={out}", f"--frame_patches={FLAGS.frame_patches}"]
    cmd += [f"--config.{k}={v}" for k, v in overrides.items()]
    try:
      proc = subprocess.run(cmd, capture_output=True, text=True, timeout=FLAGS.timeout,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    except subprocess.TimeoutExpired:
      rep = {"error": f"compile took over {FLAGS.timeout} s"}
    else:
      if os.path.exists(out):
        with open(out) as f:
          rep = json.load(f)
      else:
        err = [l for l in proc.stderr.strip().splitlines() if l.strip()]
        rep = {"error": err[-1] if err else f"exit {proc.returncode}"}
  cache[key] = rep
  with open(cache_path, "a") as f:
    f.write(json.dumps({"key": key, "report": rep}) + "\n")
  return rep, False


def _load_cache(path) -> dict:
  cache = {}
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        if line.strip():
          rec = json.loads(line)
          cache[rec["key"]] = rec["report"]
  return cache


def _status(rep) -> str:
  if "error" in rep:
    return f"error: {rep['error']}"
  m = rep["memory"]
  if not rep["fits"]:
    why = rep.get("oom") or f"peak {m['peak'] / GiB:.2f} of {m['usable'] / GiB:.2f} GiB"
    return f"does not fit ({why}), compile {rep['compile_s']:.0f} s"
  p = rep.get("prediction", {})
  used = f"{100 * m['fraction']:.0f}% of {m['usable'] / GiB:.2f} GiB" if m.get("usable") else \
      f"{m['peak'] / GiB:.2f} GiB"
  return (f"fits, {used}, predicted step {p.get('step_s', float('nan')):.2f} s, MFU "
          f"{p.get('mfu', float('nan')):.2f}, compile {rep['compile_s']:.0f} s")


def _sweep() -> int:
  from penguin_jax.train import aot_analysis as aot, hardware
  os.makedirs(FLAGS.out, exist_ok=True)
  cache_path = FLAGS.cache or os.path.join(FLAGS.out, "cache.jsonl")
  cache = _load_cache(cache_path)
  vers = {**aot.versions(), "code": code_fingerprint()}
  if any(hardware.parse_slice(t).chip is not None for t in FLAGS.topologies):
    problem = hardware.libtpu_problem()
    if problem:
      print(f"error: {problem}", file=sys.stderr)
      return 2
  points = list(_grid())
  results = []
  for i, (stage, variant, topo, ov) in enumerate(points, 1):
    label = f"{stage}:{variant} {topo}" + "".join(f" {k}={v}" for k, v in ov.items())
    if FLAGS.search == "batch":
      rep = _search_batch(stage, variant, topo, ov, cache, cache_path, vers, label, i, len(points))
    else:
      rep, cached = _compile_point(stage, variant, topo, ov, cache, cache_path, vers)
      print(f"[{i}/{len(points)}] {label}: {_status(rep)}{' (cached)' if cached else ''}", flush=True)
    if rep is not None:
      results.append((stage, variant, topo, ov, rep))
  _write_outputs(results)
  return 0


def _search_batch(stage, variant, topo, ov, cache, cache_path, vers, label, i, n):
  """The largest rows_per_chip (1, 2, 4, ...) that fits and divides the global batch."""
  from penguin_jax.train import aot_analysis as aot, hardware
  cfg = aot.point_config(stage, variant, ov)
  chips = hardware.parse_slice(topo).num_devices
  dp = chips // max(1, cfg.mesh.tensor if cfg.mesh.tensor > 0 else 1)
  best, r = None, 1
  while cfg.data.global_batch % (dp * r) == 0:
    rep, cached = _compile_point(stage, variant, topo, {**ov, "data.rows_per_chip": str(r)},
                                 cache, cache_path, vers)
    print(f"[{i}/{n}] {label} rows_per_chip={r}: {_status(rep)}{' (cached)' if cached else ''}",
          flush=True)
    if "error" in rep or not rep["fits"]:
      break
    best, r = rep, r * 2
  if best is None:
    print(f"[{i}/{n}] {label}: not even 1 row per chip fits", flush=True)
  return best


COLUMNS = ("config", "topology", "chips", "mesh", "rows_per_chip", "grad_accum", "remat",
           "hbm_used_gib", "hbm_usable_gib", "hbm_fraction", "fits", "compile_s",
           "predicted_step_s", "mfu", "tokens_per_s", "tokens_per_s_per_chip",
           "chip_hours_per_billion_tokens", "loss_collectives_gib", "collectives_gib")


def _row(stage, variant, topo, ov, rep) -> dict:
  if "error" in rep:
    return {"config": f"{stage}:{variant}", "topology": topo, "fits": "error: " + rep["error"]}
  m, p = rep["memory"], rep.get("prediction", {})
  loss = rep.get("collectives", {}).get("by_where", {}).get("loss", {}).get("bytes", 0.0)
  return {
      "config": rep["config"], "topology": rep["topology"], "chips": rep["chips"],
      "mesh": "x".join(str(rep["mesh"][a]) for a in ("data", "fsdp", "tensor")),
      "rows_per_chip": rep["rows_per_chip"], "grad_accum": rep["grad_accum"], "remat": rep["remat"],
      "hbm_used_gib": round(m["peak"] / GiB, 2) if "peak" in m else "",
      "hbm_usable_gib": round(m["usable"] / GiB, 2) if m.get("usable") else "",
      "hbm_fraction": round(m["fraction"], 3) if "fraction" in m else "",
      "fits": rep["fits"], "compile_s": round(rep["compile_s"]),
      "predicted_step_s": round(p["step_s"], 2) if p else "", "mfu": round(p["mfu"], 3) if p else "",
      "tokens_per_s": round(p["tokens_per_s"]) if p else "",
      "tokens_per_s_per_chip": round(p["tokens_per_s_per_chip"]) if p else "",
      "chip_hours_per_billion_tokens": round(p["chip_hours_per_billion_tokens"], 1) if p else "",
      "loss_collectives_gib": round(loss / GiB, 2) if rep["fits"] else "",
      "collectives_gib": round(rep["collectives"]["bytes"] / GiB, 1) if rep["fits"] else "",
  }


def _write_outputs(results):
  write_tables([_row(*r) for r in results], FLAGS.out)


def write_tables(rows, out):
  """sweep.csv, sweep.md and sweep.png in `out` from table rows (`_row`'s dicts)."""
  path = os.path.join(out, "sweep.csv")
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=COLUMNS)
    w.writeheader()
    w.writerows(rows)
  md = ["| config | topology | mesh (d x f x t) | rows/chip | remat | HBM used / usable GiB | fits | "
        "compile s | predicted step s | MFU | tokens/s | chip-h per 1B tokens |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    used = f"{r.get('hbm_used_gib', '')} / {r.get('hbm_usable_gib', '')}" if r.get("hbm_used_gib") != "" else \
        f"- / {r.get('hbm_usable_gib', '')}"
    md.append(f"| {r['config']} | {r['topology']} | {r.get('mesh', '')} | {r.get('rows_per_chip', '')} | "
              f"{r.get('remat', '')} | {used} | {'yes' if r['fits'] is True else ('no' if r['fits'] is False else r['fits'])} | "
              f"{r.get('compile_s', '')} | {r.get('predicted_step_s', '')} | {r.get('mfu', '')} | "
              f"{r.get('tokens_per_s', '')} | {r.get('chip_hours_per_billion_tokens', '')} |")
  with open(os.path.join(out, "sweep.md"), "w") as f:
    f.write("\n".join(md) + "\n")
  _plot(rows, os.path.join(out, "sweep.png"))
  print(f"wrote {path}, sweep.md, sweep.png in {out}")


def _plot(rows, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(15, 5))
  lines = {}
  for r in rows:
    if r.get("hbm_used_gib") in ("", None) or "chips" not in r:
      continue
    chip = r["topology"].split("-")[0].split(":")[0]
    lines.setdefault((r["config"], chip), []).append(r)
  markers = {"v5e": "o", "v5p": "s", "v6e": "^", "v4": "D"}
  configs = sorted({config for config, _ in lines})
  colors = {c: plt.cm.tab10(i % 10) for i, c in enumerate(configs)}   # one colour per model/stage
  usable = {}
  for (config, chip), pts in sorted(lines.items()):
    pts = sorted(pts, key=lambda r: r["chips"])
    x = [r["chips"] for r in pts]
    kw = dict(marker=markers.get(chip, "x"), color=colors[config], label=f"{config} {chip}")
    ax1.plot(x, [r["hbm_used_gib"] for r in pts], **kw)
    ax2.plot(x, [r["tokens_per_s_per_chip"] or 0 for r in pts], **kw)
    if pts[0].get("hbm_usable_gib"):
      usable[chip] = pts[0]["hbm_usable_gib"]
  for chip, gib in sorted(usable.items()):   # what the compiler allows per chip
    ax1.axhline(gib, color="grey", lw=0.8, ls="--")
    ax1.annotate(f"{chip} usable", (1.0, gib), xycoords=("axes fraction", "data"), ha="right",
                 va="bottom", fontsize=7, color="grey")
  ticks = sorted({r["chips"] for pts in lines.values() for r in pts})
  ax1.set(xscale="log", xlabel="chips", ylabel="HBM per chip (GiB, compiler peak)",
          title="memory per chip (dashed: usable HBM)")
  ax2.set(xscale="log", xlabel="chips", ylabel="predicted tokens/s per chip",
          title="predicted throughput per chip")
  for ax in (ax1, ax2):
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.grid(alpha=0.3)
  ax2.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.02, 1.0))
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main(argv):
  if FLAGS.sweep:
    return _sweep()
  return _one(argv)


def _main(argv):
  try:
    sys.exit(main(sys.argv))
  except (ValueError, KeyError) as e:
    print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
    sys.exit(2)


def _prepare_env():
  """Before JAX starts: cpu:N needs N host devices; TPU topologies compile on the CPU."""
  for a in sys.argv:
    if a.startswith("--topology=cpu:"):
      n = a.split(":", 1)[1]
      os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                 f" --xla_force_host_platform_device_count={n}").strip()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")


if __name__ == "__main__":
  _prepare_env()
  app.run(_main)
