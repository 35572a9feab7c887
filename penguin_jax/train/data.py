"""A run's data: its settings, its tokenizer, its TFDS splits, and the demo corpus.

`config.data` holds three groups: the per-sample settings (`SampleConfig`), the packing
settings (`PipelineConfig`) and where the data is (this module: `tfds_name`,
`tfds_data_dir`, `split`, the demo corpus's `demo*`, `tokenizer`, `preprocessor_config`).
`prepare(cfg, workdir)` gives the training data (its phases: `data.phases`, else one
phase, `data.mixture` or `data.split`), the tokenizer and the sample settings; with
`data.demo` it first makes the demo corpus (generated, tokenizer trained, built as the
TFDS dataset `penguin_vl/demo`), once, on process 0.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os

import jax
from jax.experimental import multihost_utils

from data_pipelines import demo_data, images, mixture, pipeline, sample as sample_lib, tfds_penguin
from data_pipelines.tokenizer import SentencePieceTokenizer, from_spec
from penguin_jax import settings
from penguin_jax.train import workdir as workdir_lib

log = logging.getLogger("train")

# The demo corpus's splits (data_pipelines/demo_data.py): the corpus, and its text alone.
DEMO_SPLITS = ("train", "val", "train_text", "val_text")
DEMO_TFDS = "penguin_vl/demo"     # the demo corpus as a TFDS dataset, in DEMO_ROOT/tfds
BUILD_HINT = ("build the release's JSONL as a TFDS dataset: python -m data_pipelines.tfds_build "
              "--manual_dir=DATA --data_dir=DIR, then --config.data.tfds_name=penguin_vl/release "
              "--config.data.tfds_data_dir=DIR")


def sample_config(cfg) -> sample_lib.SampleConfig:
  """The run's per-sample settings (`config.data`'s SampleConfig fields)."""
  return settings.from_config(sample_lib.SampleConfig, cfg.data)


def prompt_sample_config(cfg) -> sample_lib.SampleConfig:
  """The run's per-sample settings for generation prompts: no row length (a prompt is
  never packed or cut)."""
  return dataclasses.replace(sample_config(cfg), seq_len=None)


def pipeline_config(cfg) -> pipeline.PipelineConfig:
  """The run's packing settings (`config.data`'s PipelineConfig fields)."""
  return settings.from_config(pipeline.PipelineConfig, cfg.data)


def demo_root(cfg, workdir: str) -> str:
  """The demo corpus's folder: data.demo_dir, else WORKDIR/demo_data (a local WORKDIR:
  its TFDS dataset and the tokenizer are local files)."""
  if cfg.data.demo_dir:
    return os.path.abspath(cfg.data.demo_dir)
  if workdir_lib.is_remote(workdir):
    raise ValueError(f"data.demo with a remote workdir ({workdir}): set "
                     "--config.data.demo_dir to a local (or shared) folder for the corpus")
  return os.path.join(os.path.abspath(workdir), "demo_data")


def tokenizer(cfg, workdir: str):
  """The tokenizer a run trains with: the demo corpus's SentencePiece model (made by
  `prepare`), else the Qwen3 tokenizer of `data.tokenizer` (offline when empty)."""
  if cfg.data.demo:
    spm = os.path.join(demo_root(cfg, workdir), "spm.model")
    if not os.path.isfile(spm):
      raise FileNotFoundError(f"{spm}: the demo tokenizer of this run is missing")
    return SentencePieceTokenizer(spm)
  return from_spec(cfg.data.tokenizer)


def prepare(cfg, workdir: str):
  """-> (the training data: [(start step, [(name, source, weight)])], the tokenizer, the
  SampleConfig). A checkpoint's
  `data.preprocessor_config` sets the image normalisation (recorded in the run's config).
  Missing data is one line naming the command that builds it."""
  d = cfg.data
  for key in ("demo_dir", "tokenizer", "preprocessor_config", "tfds_data_dir"):
    if d[key] and not workdir_lib.is_remote(d[key]):   # recorded so: exports run elsewhere
      d[key] = os.path.abspath(d[key])
  if d.preprocessor_config:
    norm = images.read_preprocessor_config(d.preprocessor_config)
    if norm is None:
      raise FileNotFoundError(f"config.data.preprocessor_config: no preprocessor_config.json "
                              f"at {d.preprocessor_config}")
    d.image_mean, d.image_std = norm
    log.info("image normalisation from %s: mean %s, std %s", d.preprocessor_config, *norm)
  if d.demo and d.tfds_name:
    raise ValueError(f"config.data.tfds_name={d.tfds_name} and data.demo are both set: add "
                     "--config.data.demo=False to train on the dataset")
  if not (d.demo or d.tfds_name):
    raise ValueError(f"no training data: {BUILD_HINT}")
  scfg = sample_config(cfg)
  if d.demo:
    if jax.process_index() == 0:
      build_demo(cfg, workdir, scfg)
    multihost_utils.sync_global_devices("demo data")
  return phases(cfg, workdir), tokenizer(cfg, workdir), scfg


def phases(cfg, workdir: str) -> list:
  """The training data's phases: [(start step, [(name, source, weight), ...])]. One phase
  from step 0 unless `data.phases`; its mixture is `data.mixture`, else `data.split`."""
  d = cfg.data
  if d.phases and d.mixture:
    raise ValueError("config.data.mixture and data.phases are both set: give the mixture as "
                     "the first phase (0=MIXTURE)")
  specs = (mixture.parse_phases(d.phases) if d.phases else
           [(0, mixture.parse(d.mixture if d.mixture else f"{d.split}:1"))])
  opened = {}
  out = []
  for start, comps in specs:
    srcs = []
    for c in comps:
      if c.name not in opened:
        opened[c.name] = source(cfg, workdir, c)
      srcs.append((c.name, opened[c.name], c.weight))
    out.append((start, srcs))
  return out


def source(cfg, workdir: str, c: mixture.Component) -> tfds_penguin.Split:
  """A mixture's component: a split of the run's dataset, or of TFDS dataset c.dataset
  (in its `data.tfds_data_dirs` folder, else `data.tfds_data_dir`)."""
  if not c.dataset:
    return split(cfg, workdir, c.split)
  return tfds_penguin.Split(c.dataset, c.split, data_dirs(cfg).get(c.dataset, cfg.data.tfds_data_dir))


def data_dirs(cfg) -> dict:
  """`data.tfds_data_dirs` ("NAME/CONFIG=DIR,...") -> {dataset: DIR}."""
  out = {}
  for part in [p.strip() for p in cfg.data.tfds_data_dirs.split(",") if p.strip()]:
    name, sep, folder = part.partition("=")
    if not sep or "/" not in name or not folder:
      raise ValueError(f"config.data.tfds_data_dirs: {part!r} is not NAME/CONFIG=DIR")
    out[name.strip()] = folder.strip()
  return out


def build_demo(cfg, workdir: str, scfg: sample_lib.SampleConfig):
  """The demo corpus (JSONL + media in DEMO_ROOT/raw), its tokenizer (DEMO_ROOT/spm.model)
  and its TFDS dataset (DEMO_ROOT/tfds): each made once."""
  d, root = cfg.data, demo_root(cfg, workdir)
  raw, spm = os.path.join(root, "raw"), os.path.join(root, "spm")
  if not os.path.isfile(spm + ".model"):
    log.info("building the demo corpus in %s (%d samples)", root, d.demo_samples)
    demo_data.generate(raw, d.demo_samples, d.demo_val_samples, seed=0)
    with open(os.path.join(raw, "train.jsonl")) as f:
      texts = [t["value"] for l in f for t in json.loads(l)["conversations"]]
    SentencePieceTokenizer.train(texts * 4, spm + ".tmp", vocab_size=1024)
    os.replace(spm + ".tmp.model", spm + ".model")   # the corpus is complete
  config = tfds_penguin.PenguinConfig(name="demo", tokenizer=spm + ".model", sample=scfg,
                                      splits={s: f"{s}.jsonl" for s in DEMO_SPLITS})
  tfds_penguin.prepare(raw, os.path.join(root, "tfds"), config)   # a no-op once built


def split(cfg, workdir: str, name: str) -> tfds_penguin.Split:
  """A split of the run's TFDS dataset: data.tfds_name's, or the demo corpus's (with
  `data.demo_text_only`, the text without the media)."""
  d = cfg.data
  if d.demo:
    name += "_text" if d.demo_text_only else ""
    return tfds_penguin.Split(DEMO_TFDS, name, os.path.join(demo_root(cfg, workdir), "tfds"))
  return tfds_penguin.Split(d.tfds_name, name, d.tfds_data_dir)


def eval_sources(cfg, workdir: str) -> list:
  """The held-out sources of `config.eval`: [(name, Split)] of `eval.split`, a split of the
  run's TFDS dataset (the demo corpus's validation split) or several, comma-separated,
  each a split or NAME/CONFIG:SPLIT (as a mixture names its sources, without weights)."""
  if not (cfg.data.demo or cfg.data.tfds_name or "/" in cfg.eval.split):
    raise ValueError("config.eval.every is set but there is no held-out data: set "
                     "config.data.tfds_name and config.eval.split")
  comps = mixture.parse(",".join(f"{p.strip()}:1" for p in cfg.eval.split.split(",") if p.strip()))
  return [(c.name, source(cfg, workdir, c)) for c in comps]
