"""The `penguin_vl` build as an Apache Beam pipeline: many workers, one machine or a cluster.

At the paper's scale (stage 1a alone is about 223M samples, docs/design.md §6) checking
every sample in one process takes core-months; TFDS's answer for datasets of this size is
Beam. The builder (`tfds_penguin.py`) takes this path when the build is given Beam
options (`--beam_pipeline_options=...` of `data_pipelines.tfds_build`, `--workers=N` of
`data_pipelines.build`):

    JSONL -> chunks of lines (the driver scans the file once for their byte offsets)
          -> reshuffle (spread over workers) -> each line parsed and checked
             (`validate.valid_records`, the same checks as the one-process build)
          -> (line number, example)

The keys are the JSONL's line numbers, and the dataset keeps the JSONL order
(`disable_shuffling`): the example files are the same whatever the number of workers. A
worker holds one chunk's lines and one sample's media at a time. Counts (written,
skipped by reason, tokens, patches) are Beam metrics in namespace `METRICS`, read back into the
dataset's metadata when the pipeline is done (`counts_from`).
"""
from __future__ import annotations

import collections
import io
import sys

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from etils import epath

from data_pipelines import records, validate
from data_pipelines.errors import BadSample
from data_pipelines.tokenizer import from_spec

METRICS = "penguin_vl"
LINES_PER_CHUNK = 256         # lines a worker takes at once


def line_chunks(path: str, lines_per_chunk: int = LINES_PER_CHUNK) -> list:
  """[(first line number, byte offset, byte length)] covering the file's lines, in
  `lines_per_chunk` lines each."""
  out, first, start, pos, n = [], 1, 0, 0, 0
  with epath.Path(path).open("rb") as f:
    for n, raw in enumerate(f, 1):
      pos += len(raw)
      if n - first + 1 == lines_per_chunk:
        out.append((first, start, pos - start))
        first, start = n + 1, pos
  if pos > start:
    out.append((first, start, pos - start))
  return out


def _say(line: str):
  """A skip line from a worker: to its stderr, once (a Python log record there would also
  be relayed to the runner's log, a second, longer copy)."""
  print(line, file=sys.stderr, flush=True)


class CheckLines(beam.DoFn):
  """A chunk of JSONL lines -> (line number, example) of its good samples; bad ones are
  one line each (`_say`) and counted in the Beam metrics `SPLIT/skipped/REASON`."""

  def __init__(self, path, folder, tokenizer, scfg, strict, allow_outside, split):
    self.path, self.folder, self.tokenizer_spec, self.scfg = path, folder, tokenizer, scfg
    self.strict, self.allow_outside, self.split = strict, allow_outside, split

  def setup(self):
    self.tokenizer = from_spec(self.tokenizer_spec)        # once per worker
    self.written = Metrics.counter(METRICS, f"{self.split}/written")
    self.tokens = Metrics.counter(METRICS, f"{self.split}/tokens")
    self.patches = Metrics.counter(METRICS, f"{self.split}/patches")

  def process(self, chunk):
    first, offset, length = chunk
    with epath.Path(self.path).open("rb") as f:
      f.seek(offset)
      data = f.read(length)
    items = ((n, records.parse_line(raw, n)) for n, raw in enumerate(io.BytesIO(data), first)
             if raw.strip())
    reasons, at = collections.Counter(), [0]

    def tracked():                    # at[0]: the line being checked
      for n, item in items:
        at[0] = n
        yield n, item
    try:
      for key, rec in validate.valid_records(tracked(), self.folder, self.tokenizer, self.scfg,
                                             reasons, self.strict, _say, self.allow_outside):
        self.written.inc()
        self.tokens.inc(rec["num_tokens"])
        self.patches.inc(rec["num_patches"])
        yield key, records.to_example(rec)
    except BadSample:
      # strict: not raised inside Beam (a worker's failure is retried, then reported as
      # pages of tracebacks); its line is a metric, named by the driver (`first_strict_failure`)
      Metrics.distribution(METRICS, f"{self.split}/strict_failure_line").update(at[0])
    for reason, k in reasons.items():
      Metrics.counter(METRICS, f"{self.split}/skipped/{reason}").inc(k)


@beam.ptransform_fn
def examples(root, path: str, folder: str, tokenizer: str, scfg, strict: bool,
             allow_outside: bool, split: str):
  """The split's (line number, example) PCollection (see the module docstring)."""
  return (root
          | "chunks" >> beam.Create(line_chunks(path))
          | "spread" >> beam.Reshuffle()
          | "check" >> beam.ParDo(CheckLines(path, folder, tokenizer, scfg, strict,
                                             allow_outside, split)))


def no_counts() -> dict:
  return {"written": 0, "skipped": 0, "reasons": {}, "tokens": 0, "patches": 0}


def first_strict_failure(result, split: str, path: str, folder: str, tokenizer, scfg,
                         allow_outside: bool):
  """A strict build's first bad sample of `split` (by line; none: None), as the BadSample
  the one-process build raises: its line is read and checked again here."""
  lines = [d.committed or d.attempted for d in result.metrics().query(
      MetricsFilter().with_namespace(METRICS).with_name(f"{split}/strict_failure_line"))["distributions"]]
  lines = [d.min for d in lines if d is not None and d.count]
  if not lines:
    return None
  first = min(lines)
  for n, item in records.read_jsonl(path):
    if n == first:
      try:
        list(validate.valid_records([(n, item)], folder, tokenizer, scfg, collections.Counter(),
                                    True, _say, allow_outside))
      except BadSample as e:
        return e
      break
  return BadSample("unknown", f"line {first} of {path} failed in a worker, not here")


def counts_from(result) -> dict:
  """The pipeline's metrics -> {split: {"written", "skipped", "reasons", "tokens",
  "patches"}}, as the one-process build counts them."""
  out = collections.defaultdict(no_counts)
  for c in result.metrics().query(MetricsFilter().with_namespace(METRICS))["counters"]:
    value = c.committed if c.committed is not None else c.attempted
    split, _, what = c.key.metric.name.partition("/")
    if what.startswith("skipped/"):
      reason = what.partition("/")[2]
      out[split]["reasons"][reason] = out[split]["reasons"].get(reason, 0) + int(value)
      out[split]["skipped"] += int(value)
    else:
      out[split][what] += int(value)
  return dict(out)
