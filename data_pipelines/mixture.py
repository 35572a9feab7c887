"""Data mixtures: several sources sampled by weight, and phases (mixtures by step range).

Every stage of the paper trains on a mixture of many sources (docs/design.md §6), and its
SFT runs in two phases (image and video, then video-centric). A mixture is written

    SOURCE:WEIGHT,SOURCE:WEIGHT,...      e.g.  "train:3,penguin_vl/video:train:1"

where SOURCE is a split of the run's dataset (`data.tfds_name`) or `NAME/CONFIG:SPLIT` of
another TFDS dataset; weights are relative (3:1 = three samples of the first for one of
the second, in expectation). Phases are `START=MIXTURE` entries, the first starting at
step 0: ("0=image:1,video:1", "5000=video:3,image:1"); a phase START gives the batches of
steps START + 1 on.

The mixed stream is Grain's `MapDataset.mix` of the sources, each shuffled with its own
seed and repeated: a pure function of (seed, position), so it resumes exactly from a
checkpointed iterator state. Each record is tagged with its source's index
(`SOURCE_KEY`), which the pipeline carries into the batch as a count per source.
"""
from __future__ import annotations

import dataclasses

import grain

from data_pipelines.records import Skipped

SOURCE_KEY = "source"        # a record's source index in its mixture (0-based)


@dataclasses.dataclass(frozen=True)
class Component:
  """One source of a mixture: `split` of TFDS dataset `dataset` ("" = the run's own)."""
  dataset: str
  split: str
  weight: float

  @property
  def name(self) -> str:
    """How metrics name it: the split, or NAME/CONFIG:SPLIT."""
    return f"{self.dataset}:{self.split}" if self.dataset else self.split


def parse(spec: str) -> tuple[Component, ...]:
  """"SOURCE:WEIGHT,..." -> its components. Raises ValueError (one line naming the part)."""
  out = []
  for part in [p.strip() for p in spec.split(",") if p.strip()]:
    source, sep, weight = part.rpartition(":")
    try:
      w = float(weight)
    except ValueError:
      w = -1.0
    if not sep or not source or not w > 0:
      raise ValueError(f"mixture {spec!r}: {part!r} is not SOURCE:WEIGHT with a weight > 0")
    if "/" in source:
      dataset, sep, split = source.rpartition(":")
      if not sep or not split or "/" in split:
        raise ValueError(f"mixture {spec!r}: {source!r} is not NAME/CONFIG:SPLIT")
    else:
      dataset, split = "", source
    out.append(Component(dataset, split, w))
  if not out:
    raise ValueError(f"mixture {spec!r}: no source")
  names = [c.name for c in out]
  if len(set(names)) < len(names):
    raise ValueError(f"mixture {spec!r}: a source named twice")
  return tuple(out)


def parse_phases(phases) -> tuple[tuple[int, tuple[Component, ...]], ...]:
  """("START=MIXTURE", ...) -> ((start, components), ...) sorted, the first at step 0.
  Raises ValueError."""
  out = []
  for entry in phases:
    start, sep, spec = str(entry).partition("=")
    if not sep or not start.strip().isdigit():
      raise ValueError(f"data.phases entry {entry!r} is not START=MIXTURE (e.g. 0=train:1)")
    out.append((int(start), parse(spec)))
  out.sort(key=lambda p: p[0])
  if out and out[0][0] != 0:
    raise ValueError(f"data.phases: the first phase starts at step {out[0][0]}, not 0")
  if len({s for s, _ in out}) < len(out):
    raise ValueError("data.phases: two phases start at the same step")
  return tuple(out)


def _tagged(index: int):
  def tag(rec):
    return rec if isinstance(rec, Skipped) else {**rec, SOURCE_KEY: index}
  return tag


def mixed(sources, weights, seed: int) -> grain.MapDataset:
  """Random-access sources and their weights -> one endless MapDataset of tagged records:
  each source shuffled (seed + its index) and repeated, mixed by weight."""
  parts = [grain.MapDataset.source(s).shuffle(seed=seed + i).repeat(None).map(_tagged(i))
           for i, s in enumerate(sources)]
  if len(parts) == 1:
    return parts[0]
  return grain.MapDataset.mix(parts, weights=list(weights))
