"""Accelerators: the one table of chip figures, and slice names -> compile-only devices.

Figures per chip (public spec sheets, docs/design.md §4): bf16 peak FLOP/s, HBM, HBM bandwidth and
the bidirectional inter-chip interconnect (ICI) bandwidth; `usable_hbm` is what libtpu's
compiler allows a program (read from its out-of-memory message, libtpu 0.0.42). GPUs are
listed for MFU only.

Slice names as MaxText spells them: `v5e-16` (chips), `v5p-8` / `v4-8` (TensorCores, two
per chip), `v6e-16`; or a topology directly, `v5e:4x4`; or `cpu:8` for that many CPU
devices of this host (no libtpu needed).
"""
from __future__ import annotations

import dataclasses
import os
import re
from importlib import metadata
from typing import Optional

import jax
from jax.experimental import topologies

GiB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str                  # the slice-name prefix: v5e, v5p, v6e, v4
  device_kinds: tuple        # jax's device_kind strings
  peak_flops: float          # bf16 dense FLOP/s
  hbm_bytes: float
  usable_hbm_bytes: float    # what the compiler lets a program use
  hbm_bandwidth: float       # bytes/s
  ici_bandwidth: Optional[float]   # bytes/s per chip, bidirectional (None: not on the sheet)
  topology_prefix: str       # get_topology_desc's name prefix
  chip_config: str           # get_topology_desc's chip_config_name
  cores_per_chip: int        # how the slice name counts (v4 / v5p count TensorCores)
  # bytes/s between a chip's HBM and its host's memory (PCIe; one direction): what remat
  # offload and optimizer-state offload move per step. Not on Google's spec sheets; the
  # figure of "How to Scale Your Model" (jax-ml.github.io/scaling-book, part 2: about
  # 1.5e10 bytes/s per chip), the same for every generation here.
  host_bandwidth: float = 1.5e10
  # int8 dense OP/s (Google's spec sheets: v5e 394 TOPS, v6e 1836, v5p 918; v4 as bf16)
  int8_flops: float = 0.0


CHIPS = {
    "v4": Chip("v4", ("TPU v4",), 275e12, 32 * GiB, 30.75 * GiB, 1200e9, None, "v4",
               "megacore", 2, int8_flops=275e12),
    "v5e": Chip("v5e", ("TPU v5 lite", "TPU v5e"), 197e12, 16 * GiB, 15.75 * GiB, 819e9, 400e9,
                "v5e", "default", 1, int8_flops=394e12),
    "v5p": Chip("v5p", ("TPU v5p", "TPU v5"), 459e12, 96 * GiB, 95.74 * GiB, 2765e9, 1200e9,
                "v5", "megacore", 2, int8_flops=918e12),
    "v6e": Chip("v6e", ("TPU v6 lite", "TPU v6e"), 918e12, 32 * GiB, 31.25 * GiB, 1638e9, 800e9,
                "v6e", "default", 1, int8_flops=1836e12),
}
# Peak bf16 FLOP/s of GPUs (dense), for the trainer's MFU.
GPU_PEAK_FLOPS = {"NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA A100": 312e12}


def chip_for_kind(device_kind: str) -> Optional[Chip]:
  """The chip of a jax device_kind (longest matching prefix first: "TPU v5 lite" is v5e)."""
  best = None
  for chip in CHIPS.values():
    for k in chip.device_kinds:
      if device_kind.startswith(k) and (best is None or len(k) > len(best[0])):
        best = (k, chip)
  return best[1] if best else None


def peak_flops(device_kind: str) -> float:
  """bf16 peak FLOP/s of one device; 0.0 if unknown (CPU)."""
  chip = chip_for_kind(device_kind)
  if chip is not None:
    return chip.peak_flops
  return next((v for k, v in GPU_PEAK_FLOPS.items() if device_kind.startswith(k)), 0.0)


# Slice shapes by chip count (Google's lists, as MaxText spells them).
SHAPES_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16",
             256: "16x16"}                                            # v5e, v6e
SHAPES_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8",
             256: "4x8x8", 512: "8x8x8", 1024: "8x8x16"}              # v4, v5p


@dataclasses.dataclass(frozen=True)
class Slice:
  name: str                  # as the user wrote it
  chip: Optional[Chip]       # None for cpu:N
  topology: str              # "v5e:4x4" / "cpu:8"
  num_devices: int


def parse_slice(spec: str) -> Slice:
  """`v5e-16`, `v5p-8`, `v5e:4x4` or `cpu:8` -> Slice."""
  m = re.fullmatch(r"cpu:(\d+)", spec)
  if m:
    return Slice(spec, None, spec, int(m.group(1)))
  m = re.fullmatch(r"(v4|v5e|v5p|v6e)-(\d+)", spec)
  if m:
    chip = CHIPS[m.group(1)]
    n = int(m.group(2))
    if n % chip.cores_per_chip:
      raise ValueError(f"{spec}: {chip.name} slices count {chip.cores_per_chip} cores per chip")
    chips = n // chip.cores_per_chip
    shapes = SHAPES_3D if chip.cores_per_chip == 2 else SHAPES_2D
    if chips not in shapes:
      raise ValueError(f"{spec}: no {chip.name} slice of {chips} chips is known; give the "
                       f"topology instead, e.g. {chip.topology_prefix}:{shapes[16]}")
    return Slice(spec, chip, f"{chip.topology_prefix}:{shapes[chips]}", chips)
  m = re.fullmatch(r"(v4|v5e|v5|v5p|v6e):(\d+(?:x\d+)+)", spec)
  if m:
    key = {"v5": "v5p"}.get(m.group(1), m.group(1))
    chip = CHIPS[key]
    n = 1
    for d in m.group(2).split("x"):
      n *= int(d)
    return Slice(spec, chip, f"{chip.topology_prefix}:{m.group(2)}", n)
  raise ValueError(f"unknown topology {spec!r}: use e.g. v5e-16, v5p-8, v6e-16, v5e:4x4 or cpu:8")


def slice_name(sl: Slice) -> str:
  """The slice's name as `parse_slice` reads it (v5e-16 for v5e:4x4; cpu:N as given)."""
  return sl.name if sl.chip is None else _slice_name(sl.chip, sl.num_devices)


def running_slice_name(devices) -> Optional[str]:
  """The name of the TPU slice `devices` (every device of the run) make, e.g. v5e-16;
  None off TPU."""
  chip = chip_for_kind(devices[0].device_kind)
  return None if chip is None else _slice_name(chip, len(devices))


def _slice_name(chip: Chip, chips: int) -> str:
  return f"{chip.name}-{chips * chip.cores_per_chip}"   # v4 / v5p names count cores


# libtpu's name of a slice (TPU_ACCELERATOR_TYPE), by chip: v5e counts chips as
# "v5litepod-N"; v4 / v5p count TensorCores.
ACCELERATOR_TYPES = {"v4": "v4-{cores}", "v5e": "v5litepod-{chips}", "v5p": "v5p-{cores}",
                     "v6e": "v6e-{chips}"}


def compile_env(topology: Optional[str]) -> dict:
  """Environment for a compile-only process, set before JAX starts: `cpu:N` gets N host
  devices and every compile runs on the CPU; a TPU topology tells libtpu that it is on
  one host of that slice (TPU_WORKER_HOSTNAMES, TPU_ACCELERATOR_TYPE), which it would
  otherwise ask the cloud metadata server for and, off a TPU VM, print errors about.
  Variables already set are kept."""
  env = {"JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
  sl = parse_slice(topology) if topology else None
  if sl is not None and sl.chip is None:
    env["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                        f" --xla_force_host_platform_device_count={sl.num_devices}").strip()
  elif sl is not None:
    kind = ACCELERATOR_TYPES[sl.chip.name].format(chips=sl.num_devices,
                                                  cores=sl.num_devices * sl.chip.cores_per_chip)
    env["TPU_ACCELERATOR_TYPE"] = os.environ.get("TPU_ACCELERATOR_TYPE", kind)
    env["TPU_WORKER_HOSTNAMES"] = os.environ.get("TPU_WORKER_HOSTNAMES", "localhost")
  return env


def compile_devices(sl: Slice):
  """Devices to compile for: compile-only TPU devices from libtpu's topology (no TPU
  needed), or this host's CPU devices for cpu:N (the caller sets XLA's host device count
  before JAX starts)."""
  if sl.chip is None:
    devs = jax.devices("cpu")
    if len(devs) < sl.num_devices:
      raise ValueError(f"{sl.name}: {len(devs)} CPU devices visible; set XLA_FLAGS="
                       f"--xla_force_host_platform_device_count={sl.num_devices} before JAX starts")
    return devs[:sl.num_devices]
  hosts = (1, 1, 1) if sl.num_devices == 1 else (2, 2, 1)   # a single chip: one on its host
  desc = topologies.get_topology_desc(sl.topology, "tpu", chip_config_name=sl.chip.chip_config,
                                      chips_per_host_bounds=hosts)
  return list(desc.devices)


def libtpu_problem() -> Optional[str]:
  """None if the installed libtpu is the one the installed jax pins (its `tpu` extra),
  else what to install."""
  want = None
  for req in metadata.requires("jax") or []:
    m = re.match(r"libtpu\s*([=<>!~][^;]*);.*extra\s*==\s*['\"]tpu['\"]", req)
    if m:
      want = m.group(1).strip()
  jax_version = metadata.version("jax")
  fix = (f'pip install "jax[tpu]=={jax_version}"  (or pip install -e ".[aot]" in penguin-jax)')
  try:
    have = metadata.version("libtpu")
  except metadata.PackageNotFoundError:
    return f"libtpu is not installed: {fix}"
  if want and want.startswith("=="):
    pattern = want[2:].strip().replace(".", r"\.").replace("*", ".*")
    if not re.fullmatch(pattern, have):
      return f"libtpu {have} does not match jax {jax_version}, which pins libtpu{want}: {fix}"
  return None
