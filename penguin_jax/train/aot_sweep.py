"""A sweep of AOT compiles: a grid of stages x variants x topologies x config overrides,
one compile per point in its own process (`python -m launch.aot --json=...`), every report
cached in a JSONL file keyed by the point, the jax / libtpu versions and a fingerprint of
the code (a point is never compiled twice; an interrupted sweep resumes), and the table
written as sweep.csv, sweep.md and sweep.png. `search="batch"` finds, per point, the
largest `data.rows_per_chip` that fits; `search="slice"` the smallest slice of a chip
family (the topologies name families: v5e, v6e, ...) on which it fits with 10% headroom;
`search="remat"` compiles each point with
`model.remat_policy=auto` (`auto_remat`: the candidate policies, in the same cache).
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import itertools
import json
import os
import subprocess
import sys
import tempfile

import matplotlib

from penguin_jax.train import aot_analysis, cli, hardware, remat

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)

GiB = 2 ** 30
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def grid(stages, variants, topologies, vary):
  """Points (stage, variant, topology, overrides); `vary`: ["FIELD=V1,V2", ...]."""
  axes = []
  for spec in vary:
    if "=" not in spec:
      raise ValueError(f"--vary={spec!r}: use FIELD=V1,V2")
    k, vals = spec.split("=", 1)
    axes.append([(k, v) for v in vals.split(",")])
  for stage, variant, topo in itertools.product(stages, variants, topologies):
    for combo in itertools.product(*axes):
      yield stage, variant, topo, dict(combo)


def code_fingerprint() -> str:
  """A hash of the code that builds the step (penguin_jax/, data_pipelines/, configs/): a
  cached result is reused only for the same code, jax and libtpu."""
  root, h = ROOT, hashlib.sha256()
  for folder in ("penguin_jax", "data_pipelines", "configs"):
    for dirpath, _, files in sorted(os.walk(os.path.join(root, folder))):
      for name in sorted(f for f in files if f.endswith(".py")):
        with open(os.path.join(dirpath, name), "rb") as f:
          h.update(name.encode() + f.read())
  return h.hexdigest()[:16]


class Sweep:
  """The options of one sweep: `out` (folder of the table and, by default, the cache),
  `cache` (the JSONL file), `frame_patches` and `timeout` per compile, `log`."""

  def __init__(self, out: str, cache: str | None = None, frame_patches: int = 0,
               timeout: int = 3600, log=print):
    os.makedirs(out, exist_ok=True)
    self.out, self.frame_patches, self.timeout, self.log = out, frame_patches, timeout, log
    self.cache_path = os.path.abspath(cache or os.path.join(out, "cache.jsonl"))
    self.cache = load_cache(self.cache_path)
    self.versions = {**aot_analysis.versions(), "code": code_fingerprint()}

  def key(self, stage, variant, topo, overrides) -> str:
    return json.dumps({"stage": stage, "variant": variant, "topology": topo,
                       "overrides": dict(sorted(overrides.items())),
                       "frame_patches": self.frame_patches, "versions": self.versions},
                      sort_keys=True)

  def compile_point(self, stage, variant, topo, overrides):
    """-> (report, cached?): from the cache, or a compile in a child process (appended)."""
    key = self.key(stage, variant, topo, overrides)
    if key in self.cache:
      return self.cache[key], True
    with tempfile.TemporaryDirectory() as tmp:
      out = os.path.join(tmp, "r.json")
      cmd = [sys.executable, "-m", "launch.aot", f"--config=configs/{stage}.py:{variant}",
             f"--topology={topo}", f"--json={out}", f"--frame_patches={self.frame_patches}",
             f"--cache={self.cache_path}"]        # (remat_policy=auto caches its candidates)
      cmd += [f"--config.{k}={v}" for k, v in overrides.items()]
      try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=self.timeout, cwd=ROOT)
      except subprocess.TimeoutExpired:
        rep = {"error": f"compile took over {self.timeout} s"}
      else:
        if os.path.exists(out):
          with open(out) as f:
            rep = json.load(f)
        else:
          err = [l for l in proc.stderr.strip().splitlines() if l.strip()]
          rep = {"error": err[-1] if err else f"exit {proc.returncode}"}
    self.cache[key] = rep
    with open(self.cache_path, "a") as f:
      f.write(json.dumps({"key": key, "report": rep}) + "\n")
    return rep, False

  def run(self, points, search: str | None = None) -> list:
    """Compile (or find cached) every point; write the tables; -> [(point..., report)]."""
    results = []
    for i, (stage, variant, topo, ov) in enumerate(points, 1):
      if search == "remat":
        ov = {**ov, "model.remat_policy": "auto"}
      label = f"[{i}/{len(points)}] {stage}:{variant} {topo}" + "".join(
          f" {k}={v}" for k, v in ov.items())
      if search == "batch":
        rep = self.search_batch(stage, variant, topo, ov, label)
      elif search == "slice":
        rep = self.search_slice(stage, variant, topo, ov, label)
        topo = rep["topology"] if rep else topo
      else:
        rep, cached = self.compile_point(stage, variant, topo, ov)
        self.log(f"{label}: {status(rep)}{' (cached)' if cached else ''}")
      if rep is not None:
        results.append((stage, variant, topo, ov, rep))
    write_tables([row(*r) for r in results], self.out, self.log)
    return results

  def search_batch(self, stage, variant, topo, ov, label):
    """The largest rows_per_chip (1, 2, 4, ...) that fits and divides the global batch."""
    cfg = cli.point_config(os.path.join(ROOT, "configs", f"{stage}.py:{variant}"), ov)
    chips = hardware.parse_slice(topo).num_devices
    dp = chips // max(1, cfg.mesh.tensor if cfg.mesh.tensor > 0 else 1)
    best, r = None, 1
    while cfg.data.global_batch % (dp * r) == 0:
      rep, cached = self.compile_point(stage, variant, topo, {**ov, "data.rows_per_chip": str(r)})
      self.log(f"{label} rows_per_chip={r}: {status(rep)}{' (cached)' if cached else ''}")
      if "error" in rep or not rep["fits"]:
        break
      best, r = rep, r * 2
    if best is None:
      self.log(f"{label}: not even 1 row per chip fits")
    return best

  def search_slice(self, stage, variant, family, ov, label):
    """The smallest slice of chip `family` on which the point fits with the headroom of
    remat.HEADROOM (bisection over the family's slices: memory per chip falls with chips)."""
    cfg = cli.point_config(os.path.join(ROOT, "configs", f"{stage}.py:{variant}"), ov)
    names = family_slices(family, cfg.data.global_batch)
    lo, hi, best = 0, len(names) - 1, None
    while lo <= hi:
      mid = (lo + hi) // 2
      rep, cached = self.compile_point(stage, variant, names[mid], ov)
      self.log(f"{label} {names[mid]}: {status(rep)}{' (cached)' if cached else ''}")
      if _fits_with_headroom(rep):
        best, hi = rep, mid - 1
      else:
        lo = mid + 1
    if best is None:
      self.log(f"{label}: no {family} slice up to {names[-1]} fits")
    return best


def family_slices(family: str, global_batch: int) -> list[str]:
  """The slices of a chip family (`v5e`, ...) by chip count, whose data-parallel size can
  divide `global_batch` (a slice name counts TensorCores for v4 / v5p)."""
  chip = hardware.CHIPS.get(family)
  if chip is None:
    raise ValueError(f"--search=slice takes chip families in --topologies "
                     f"({', '.join(hardware.CHIPS)}), not {family!r}")
  shapes = hardware.SHAPES_3D if chip.cores_per_chip == 2 else hardware.SHAPES_2D
  return [f"{family}-{n * chip.cores_per_chip}" for n in sorted(shapes) if global_batch % n == 0]


def auto_remat(cfg, topology: str, *, frame_patches: int = 0, cache_path: str | None = None,
               log=print) -> dict:
  """remat_policy "auto" for `cfg` on `topology` (remat.search, each candidate compiled in
  this process by aot_analysis.analyse and cached in `cache_path` by its whole config).
  -> the chosen candidate's report, with "remat_search" (every candidate: what ruled it
  in or out) and "remat_requested"; with no candidate within the headroom, the report of
  the one that used the least memory, "fits" False."""
  sl = hardware.parse_slice(topology)
  cache = load_cache(cache_path) if cache_path else {}
  versions = {**aot_analysis.versions(), "code": code_fingerprint()}
  program = aot_analysis.make_program(remat.with_policy(cfg, "none"), sl)
  trials = remat.ranked(program, sl.num_devices * sl.chip.peak_flops if sl.chip else 0.0)
  del program
  reports = {}

  def measure(policy):
    c = remat.with_policy(cfg, policy)
    key = json.dumps({"config": json.loads(c.to_json_best_effort(sort_keys=True)),
                      "topology": topology, "frame_patches": frame_patches,
                      "versions": versions}, sort_keys=True)
    rep = cache.get(key)
    if rep is None:
      log(f"remat {policy}: compiling")
      rep = aot_analysis.analyse(c, topology, frame_patches=frame_patches or None, log=log)
      if cache_path:
        with open(cache_path, "a") as f:
          f.write(json.dumps({"key": key, "report": rep}) + "\n")
    reports[policy] = rep
    p = rep.get("prediction", {})
    return {"fits": rep["fits"], "fraction": rep["memory"].get("fraction"), "oom": rep.get("oom"),
            "step_s": p.get("step_s"), "mfu": p.get("mfu"),
            "communication_s": p.get("communication_s")}

  best, trials = remat.search(trials, measure, log)
  if best is not None:
    rep = dict(reports[best.policy])
  else:   # nothing within the headroom: the least memory seen
    seen = [t for t in trials if t.measured]
    least = min(seen, key=lambda t: t.fraction if t.fraction is not None else float("inf"))
    rep = dict(reports[least.policy], fits=False)
  rep["remat_requested"] = "auto"
  rep["remat_search"] = [dataclasses.asdict(t) for t in trials]
  return rep


def default_cache() -> str:
  """Where single compiles of remat_policy=auto are cached ($XDG_CACHE_HOME or ~/.cache)."""
  root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  os.makedirs(os.path.join(root, "penguin_jax"), exist_ok=True)
  return os.path.join(root, "penguin_jax", "aot.jsonl")


def _fits_with_headroom(rep) -> bool:
  return ("error" not in rep and rep["fits"] and
          rep["memory"].get("fraction", 0.0) <= remat.HEADROOM)


def load_cache(path) -> dict:
  cache = {}
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        if line.strip():
          rec = json.loads(line)
          cache[rec["key"]] = rec["report"]
  return cache


def status(rep) -> str:
  """One point's result in a few words."""
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


COLUMNS = ("config", "topology", "chips", "mesh", "rows_per_chip", "grad_accum", "remat",
           "hbm_used_gib", "hbm_usable_gib", "hbm_fraction", "fits", "compile_s",
           "predicted_step_s", "mfu", "tokens_per_s", "tokens_per_s_per_chip",
           "chip_hours_per_billion_tokens", "loss_collectives_gib", "collectives_gib")


def row(stage, variant, topo, ov, rep) -> dict:
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


def write_tables(rows, out, log=print):
  """sweep.csv, sweep.md and sweep.png in `out` from table rows (`row`'s dicts)."""
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
  log(f"wrote {path}, sweep.md, sweep.png in {out}")


def _plot(rows, path):
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


