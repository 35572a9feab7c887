"""Choosing the remat policy: `model.remat_policy="auto"` (docs/scale.md, "Remat").

Gradient checkpointing trades memory for recomputed FLOPs. The policies of
`layers.REMAT_POLICIES` (and "none") are ranked by the FLOPs the step computes again
(`flops.recompute_fractions`, counted in the layer's gradient); from the cheapest, each is
compiled and measured (`measure(policy)`), and the one with the shortest predicted step
among those that fit with `HEADROOM` is chosen. Branch and bound: a policy whose compute
(at the chip's peak) plus the best policy's communication is no shorter than the best step
found is not compiled (a policy that recomputes more communicates no less: with FSDP the
recomputed forward gathers its weights again).
Offloading policies cost no FLOPs but move bytes over the host link; `measure` counts
them in its step (aot_analysis), so they win only where nothing cheaper fits.

Used by `launch.aot` (compile-only devices of a TPU slice, `aot_analysis.analyse` as
`measure`) and by the trainer (the real devices: `resolve`).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

from penguin_jax import layers

HEADROOM = 0.9        # a chosen policy's peak is at most this fraction of usable memory
POLICIES = ("none", *layers.REMAT_POLICIES)


@dataclasses.dataclass
class Trial:
  """One candidate: its recomputed FLOPs, and once measured, whether it fits."""
  policy: str
  recompute_flops: float
  compute_s: Optional[float] = None          # hardware FLOPs at peak (None: no peak known)
  measured: bool = False
  fits: Optional[bool] = None
  fraction: Optional[float] = None           # peak / usable memory
  step_s: Optional[float] = None
  communication_s: float = 0.0
  mfu: Optional[float] = None
  note: str = ""

  @property
  def chosen_ok(self) -> bool:
    return bool(self.fits) and (self.fraction is None or self.fraction <= HEADROOM)


def ranked(program, peak_flops_total: float = 0.0) -> list[Trial]:
  """Every policy with the FLOPs its step recomputes, cheapest first (ties: POLICIES'
  order), a policy that keeps activations on the device before one that offloads them."""
  trials = []
  for policy in POLICIES:
    fl = program.flops(remat=policy)
    trials.append(Trial(policy, fl["recompute"],
                        fl["hardware"] / peak_flops_total if peak_flops_total else None))
  offloads = lambda p: bool(layers.REMAT_NAMED.get(p, ((), ()))[1])
  return sorted(trials, key=lambda t: (t.recompute_flops, offloads(t.policy)))  # stable


def search(trials: list[Trial], measure: Callable[[str], dict],
           log=lambda *_: None) -> tuple[Optional[Trial], list[Trial]]:
  """Measure the trials in order; `measure(policy)` -> {"fits", "fraction", "step_s",
  "mfu", "communication_s"} (step_s None where no prediction is possible: the first that
  fits is taken).
  Returns (the chosen trial or None, the trials with what was learnt of each)."""
  best = None
  for t in trials:
    bound = None if t.compute_s is None or best is None else t.compute_s + best.communication_s
    if best is not None and (best.step_s is None or (bound is not None and bound >= best.step_s)):
      t.note = (f"not compiled: compute + communication at least {bound:.2f} s, no shorter "
                f"than {best.policy}'s step" if bound is not None and best.step_s is not None
                else f"not compiled: {best.policy} recomputes less")
      continue
    r = measure(t.policy)
    t.measured = True
    t.fits, t.fraction, t.step_s, t.mfu = (r.get("fits"), r.get("fraction"), r.get("step_s"),
                                           r.get("mfu"))
    t.communication_s = r.get("communication_s") or 0.0
    if not t.fits:
      why = r.get("oom") or (f"peak {100 * t.fraction:.1f}% of usable memory"
                             if t.fraction is not None else "")
      t.note = "does not fit" + (f" ({why})" if why else "")
    elif not t.chosen_ok:
      t.note = f"fits at {100 * t.fraction:.1f}% of usable memory, above {100 * HEADROOM:.0f}%"
    log(f"remat {t.policy}: " + (t.note or (
        f"fits at {100 * t.fraction:.1f}%" if t.fraction is not None else "fits") + (
        f", predicted step {t.step_s:.2f} s, MFU {t.mfu:.3f}" if t.step_s is not None else "")))
    if t.chosen_ok and (best is None or (t.step_s or 0) < (best.step_s or 0)):
      best = t
  return best, trials


def resolve(cfg, mesh, build, log=lambda *_: None):
  """`cfg` with remat_policy "auto" replaced by the policy chosen on `mesh`'s devices
  (their memory limit from the runtime; a platform without one, such as the CPU, takes the
  cheapest policy, "none"). `build(cfg)` -> the training program. Others: `cfg` as is."""
  if cfg.model.remat_policy != "auto":
    return cfg
  device = mesh.devices.flat[0]
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  limit = (stats or {}).get("bytes_limit")
  trials = ranked(build(with_policy(cfg, "none")))
  if not limit:
    log(f"remat_policy auto: {trials[0].policy} (no memory limit on {device.platform})")
    return with_policy(cfg, trials[0].policy)

  def measure(policy):
    compiled = build(with_policy(cfg, policy)).lower().compile()
    ma = compiled.memory_analysis()
    peak = (ma.argument_size_in_bytes + ma.output_size_in_bytes - ma.alias_size_in_bytes +
            ma.temp_size_in_bytes)
    return {"fits": peak <= limit, "fraction": peak / limit, "step_s": None}

  best, _ = search(trials, measure, log)
  if best is None:
    raise ValueError(f"remat_policy auto: no policy fits {100 * HEADROOM:.0f}% of "
                     f"{limit / 2**30:.2f} GiB per device; use more devices or a smaller "
                     "data.rows_per_chip")
  log(f"remat_policy auto: {best.policy}")
  return with_policy(cfg, best.policy)


def with_policy(cfg, policy: str):
  """A copy of the stage config `cfg` with model.remat_policy set."""
  out = cfg.copy_and_resolve_references()
  out.model.remat_policy = policy
  return out
