"""The release's training data as a TensorFlow Datasets builder: `penguin_vl`.

Build (offline; no TensorFlow needed; `data_pipelines.tfds_build` is TFDS's own `tfds build`
command for this file):

  python -m data_pipelines.tfds_build --manual_dir=DATA --data_dir=~/tensorflow_datasets \\
      [--config=release | --config='{"name": "mine", "tokenizer": "DIR", "sample": {"seq_len": 8192}}']

With Beam options (`--beam_pipeline_options=direct_running_mode=multi_processing,
direct_num_workers=N`, or Dataflow's, Spark's, Flink's) the samples are checked by a Beam
pipeline (`beam_build.py`, `pip install -e ".[beam]"`) into the same files.

DATA holds the release's JSONL files and the media their paths are relative to. Each
`NAME.jsonl` in DATA is split NAME (`train.jsonl` -> "train", `val.jsonl` -> "val"), or
the config's `splits` names them. Every sample is checked (`validate.valid_records`: JSON,
conversation, media decoding, image budget, TRA, tokenisation, length, with the config's
`sample` settings, a `SampleConfig`); a bad one is one line `skip ID: REASON (detail)`, counted and left
out, and each split's counts are in the dataset's metadata (`metadata.json`: written,
skipped, reasons, tokens, patches: the ratio of
patches to tokens is what a row's `max_patches` should follow, docs/data.md). `strict` stops at the first one. The examples keep the JSONL
order (the training pipeline shuffles with its own seed).

Read: `tfds.data_source("penguin_vl/release", split="train", data_dir=...)`, which the
Grain pipeline takes through `Split` (config: data.tfds_name, data.tfds_data_dir,
data.split). An example holds exactly what training reads:

    id              text    the JSONL `id` (else "line N")
    conversations   [{from, value}] text
    images          [encoded image file bytes]      a sample has images,
    video           encoded video file bytes, b''   or one video, or neither (text)
    video_frames    [encoded image file bytes]      a video given as a frame folder (its
                                                    files in name order), else []
    num_tokens      int32   tokens of the formatted sample (visual tokens included)
    num_patches     int32   14x14 patches of its images / video frames
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import sys

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from data_pipelines import records, sample as sample_lib, validate
from data_pipelines.records import Skipped
from data_pipelines.tokenizer import from_spec
from penguin_jax import settings

log = logging.getLogger(__name__)


@dataclasses.dataclass
class PenguinConfig(tfds.core.BuilderConfig):
  """What a build depends on: where the data is, and the sample settings it is checked
  with (`sample`, a SampleConfig; in a JSON config a dict of its fields). Default: the
  paper's stage settings (`sample.STAGES`)."""
  splits: dict = dataclasses.field(default_factory=dict)  # split -> JSONL; {}: each NAME.jsonl
  data_folder: str = ""          # media root, relative to the manual dir ("" = the manual dir)
  tokenizer: str = ""            # "" = offline Qwen3; Qwen3 tokenizer.json dir; SentencePiece .model
  sample: sample_lib.SampleConfig = dataclasses.field(default_factory=lambda: sample_lib.STAGES)
  allow_outside: bool = False    # media paths may leave the data folder
  strict: bool = False           # stop at the first bad sample

  def __post_init__(self):
    if isinstance(self.sample, dict):   # a JSON --config
      self.sample = settings.from_mapping(sample_lib.SampleConfig, self.sample)


class PenguinVl(tfds.core.GeneratorBasedBuilder):
  """The release's JSONL + media folder -> validated examples in ArrayRecord files."""

  VERSION = tfds.core.Version("1.1.0")
  SUPPORTED_VERSIONS = [tfds.core.Version("1.0.0")]   # read as before (no video_frames)
  RELEASE_NOTES = {"1.0.0": "The release's JSONL layout, validated as data_pipelines.build.",
                   "1.1.0": "Videos given as frame folders (video_frames)."}
  BUILDER_CONFIGS = [PenguinConfig(name="release", description="the real stages' settings")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Put the release's JSONL files (each NAME.jsonl is split NAME) and their media "
      "folder in the manual dir (--manual_dir).")

  def __init__(self, **kwargs):
    kwargs.setdefault("file_format", "array_record")   # random access for Grain
    super().__init__(**kwargs)
    self._beam, self._beam_splits = False, {}

  def _info(self) -> tfds.core.DatasetInfo:
    T = tfds.features.Text
    blob = lambda doc: tfds.features.Tensor(shape=(), dtype=np.object_, doc=doc)
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__.split("\n\n")[0],
        features=tfds.features.FeaturesDict({
            "id": T(doc="the JSONL id"),
            "conversations": tfds.features.Sequence({"from": T(), "value": T()}),
            "images": tfds.features.Sequence(blob("an encoded image file")),
            "video": blob("the encoded video file; b'' when the sample has none"),
            "video_frames": tfds.features.Sequence(blob(
                "a frame folder's files (encoded images) in name order; [] otherwise")),
            "num_tokens": tfds.features.Scalar(np.int32, doc="tokens, visual ones included"),
            "num_patches": tfds.features.Scalar(np.int32, doc="14x14 patches"),
        }),
        metadata=tfds.core.MetadataDict(),
        disable_shuffling=True,            # the JSONL order; Grain shuffles with its seed
        homepage="https://github.com/tencent-ailab/Penguin-VL")

  # TFDS prints a download-size line in bold to stdout before a build and another after it
  # ("Downloading and preparing dataset Unknown size ..."): nothing is downloaded here, so
  # one log line each instead.
  def _log_download_bytes(self):
    log.info("building %s/%s in %s", self.name, self.builder_config.name, self.data_dir)

  def _log_download_done(self):
    log.info("built %s/%s in %s", self.name, self.builder_config.name, self.data_dir)

  def _split_generators(self, dl_manager):
    c = self.builder_config
    root = os.fspath(dl_manager.manual_dir)     # local, or gs://... (records.py)
    splits = dict(c.splits) or {f.name[:-len(".jsonl")]: f.name
                                for f in sorted(epath.Path(root).iterdir())
                                if f.name.endswith(".jsonl")}
    if not splits:
      raise FileNotFoundError(f"{root} holds no .jsonl file: put the release's JSONL files "
                              "there (each NAME.jsonl is split NAME), or give the config's splits")
    files = {s: records.under(root, f) for s, f in splits.items()}
    missing = [f for f in files.values() if not epath.Path(f).is_file()]
    if missing:
      raise FileNotFoundError(f"{missing[0]}: no such JSONL file (config splits {splits})")
    spec = c.tokenizer and records.under(root, c.tokenizer)
    tokenizer = from_spec(spec)          # here too with Beam: a bad one is one line, at once
    folder = records.under(root, c.data_folder)
    if self._beam:
      from data_pipelines import beam_build  # here: Apache Beam is an optional extra
      self._beam_splits = {s: (f, folder, tokenizer) for s, f in files.items()}
      return {s: beam_build.examples(f, folder, spec, c.sample, c.strict, c.allow_outside, s)
              for s, f in files.items()}
    return {s: self._generate_examples(f, folder, tokenizer, s) for s, f in files.items()}

  def _generate_splits(self, dl_manager, download_config):
    """Beam options given (`--beam_pipeline_options`, a runner): the Beam build."""
    self._beam = bool(download_config.beam_options or download_config.beam_runner)
    return super()._generate_splits(dl_manager, download_config)

  def _process_pipeline_result(self, pipeline_result):
    """The Beam build's counts (its metrics) -> the dataset's metadata, as the one-process
    build writes them."""
    from data_pipelines import beam_build  # here: Apache Beam is an optional extra
    c = self.builder_config
    if c.strict:
      for split, (path, folder, tokenizer) in self._beam_splits.items():
        bad = beam_build.first_strict_failure(pipeline_result, split, path, folder, tokenizer,
                                              c.sample, c.allow_outside)
        if bad is not None:
          raise bad                      # before TFDS finishes: no dataset is left behind
    counts_of = beam_build.counts_from(pipeline_result)
    for split in self._beam_splits:
      counts = counts_of.get(split, beam_build.no_counts())
      self.info.metadata[split] = counts
      log.info("split %s: %d written, %d skipped %s", split, counts["written"],
               counts["skipped"], counts["reasons"])

  def _generate_examples(self, path, data_folder, tokenizer, split):
    c = self.builder_config
    reasons, written, tokens, patches = collections.Counter(), 0, 0, 0
    for n, rec in validate.valid_records(records.read_jsonl(path), data_folder, tokenizer,
                                         c.sample, reasons, c.strict, log.warning,
                                         c.allow_outside):
      written += 1
      tokens += rec["num_tokens"]
      patches += rec["num_patches"]
      yield n, records.to_example(rec)
    counts = {"written": written, "skipped": sum(reasons.values()), "reasons": dict(reasons),
              "tokens": tokens, "patches": patches}
    self.info.metadata[split] = counts
    log.info("split %s: %d written, %d skipped %s", split, written, counts["skipped"],
                dict(reasons))


def prepare(manual_dir: str, data_dir: str, config: PenguinConfig | str,
            workers: int = 0) -> PenguinVl:
  """Build (once; a prepared dataset is reused) -> the builder. `config`: a PenguinConfig
  or a built-in config's name ("release"). `workers` > 0: the Beam build on this machine
  (the DirectRunner's multi-processing mode with that many worker processes). Progress
  bars only on a terminal (the skip lines and a count every 1,000 samples are logged
  either way)."""
  if not sys.stderr.isatty():
    tfds.disable_progress_bar()
  with _quiet_custom_config():
    builder = PenguinVl(config=config, data_dir=data_dir)
  beam_options = None
  if workers:
    try:
      from apache_beam.options.pipeline_options import PipelineOptions  # optional extra
    except ImportError:
      raise ValueError("a build with workers needs Apache Beam: pip install -e \".[beam]\"") from None
    beam_options = PipelineOptions(direct_running_mode="multi_processing",
                                   direct_num_workers=workers)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir, beam_options=beam_options))
  return builder


@contextlib.contextmanager
def _quiet_custom_config():
  """TFDS warns "Using custom data configuration: <the whole config>" (a 500-character
  line) for every config not in BUILDER_CONFIGS, i.e. every dataset a user names: that
  one warning is dropped, the config is logged by `_log_download_bytes` when built."""
  drop = lambda r: not str(r.msg).startswith("Using custom data configuration")
  logger = logging.getLogger("absl")
  logger.addFilter(drop)
  try:
    yield
  finally:
    logger.removeFilter(drop)


class Split:
  """One split of a prepared `penguin_vl` dataset as the Grain pipeline's random-access
  source (`tfds.data_source`), each example in the record layout; an example that cannot
  be read (a corrupt chunk) is a `records.Skipped` naming split and index, which the
  pipeline counts and skips as "corrupt_record". `name`: "penguin_vl/CONFIG[:VERSION]"."""

  def __init__(self, name: str, split: str, data_dir: str | None = None):
    try:
      self.source = tfds.data_source(name, split=split, data_dir=data_dir or None)
      n = len(self.source)
    except Exception as e:   # not prepared, no such split: tfds's message, first line
      raise FileNotFoundError(
          f"TFDS {name} split {split!r} in {data_dir or 'the default data_dir'}: "
          f"{str(e).strip().splitlines()[0][:300]} (build it: python -m "
          "data_pipelines.tfds_build --manual_dir=DATA --data_dir=DIR)") from None
    if n == 0:
      raise FileNotFoundError(f"TFDS {name} split {split!r} holds no example")
    self.where = f"{name}:{split}"

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i: int):
    try:
      example = self.source[i]
    except Exception as e:
      return Skipped(f"{self.where}[{i}]", "corrupt_record",
                     f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
    return records.to_record(example)

  def __repr__(self):
    return f"Split({self.where}, {len(self)} examples)"
