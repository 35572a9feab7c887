"""A trained Penguin-VL for inference, with its tokenizer and its image settings.

From a training workdir (one checkpoint's parameters, never the optimizer state, and the
run's own config: tokenizer, normalisation, token budget) or from an HF folder (a
`workdir-to-hf` export, or a checkpoint in the release's layout: `preprocessor_config.json`
and config.json give the image settings). Used by `launch.generate`, `launch.eval` and
`launch.convert workdir-to-hf`.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional


@dataclasses.dataclass
class Loaded:
  model: Any                  # PenguinVL
  params: dict
  tokenizer: Any
  sample_config: Any          # data_pipelines.sample.SampleConfig
  source: str                 # for log lines: "WORKDIR step N" / "HF_DIR"
  run_config: Any = None      # the run's ConfigDict (workdir only)
  step: Optional[int] = None  # the checkpoint's step (workdir only)
  workdir: Optional[str] = None


def from_workdir(workdir: str, step: Optional[int] = None, dtype=None,
                 keep_distill_head: bool = False) -> Loaded:
  """A run's checkpoint (default: the latest). `dtype`: the parameters' dtype (cast while
  reading; default as stored). The stage-1 distill head is dropped unless asked for
  (inference does not use it)."""
  from ml_collections import ConfigDict
  from launch.train import run_tokenizer, sample_config
  from penguin_jax import hf, registry
  from penguin_jax.train import checkpoint as ckpt
  from penguin_jax.train.program import model_config
  step, run, params = ckpt.read_run(workdir, step, dtype=dtype)
  cfg = ConfigDict(run)
  root = workdir.rstrip("/")
  if os.path.basename(root) == "checkpoints":
    root = os.path.dirname(root)
  tok = run_tokenizer(cfg, root)
  vocab = params["llm"]["embed_tokens"]["embedding"].shape[0]
  vcfg, _ = model_config(cfg, vocab_size=vocab, image_token_id=tok.image_token_id)
  if "vision_distill_layer" in params and not keep_distill_head:
    params = {k: v for k, v in params.items() if k != "vision_distill_layer"}
    vcfg = dataclasses.replace(vcfg, teacher_hidden_size=None)
  scfg = dataclasses.replace(sample_config(cfg), max_length=None)
  return Loaded(registry.build_model(vcfg), params, tok, scfg, f"{root} step {step}", cfg, step,
                root)


def from_hf_dir(path: str, dtype=None) -> Loaded:
  """An HF folder (ours or the release's layout; see `penguin_jax.from_pretrained`)."""
  import jax.numpy as jnp
  from data_pipelines import sample as sample_lib
  from data_pipelines.tokenizer import from_model_dir
  from penguin_jax import hf, preprocessor
  if not os.path.isfile(os.path.join(path, "config.json")):
    raise FileNotFoundError(f"{path}: no config.json there (not a model folder)")
  model, params = hf.from_pretrained(path, dtype=jnp.dtype(dtype or "float32"))
  if not hasattr(model.cfg, "encoder"):
    raise ValueError(f"{path}: a {type(model).__name__}, not a Penguin-VL model")
  with open(os.path.join(path, "config.json")) as f:
    d = json.load(f)
  scfg = sample_lib.SampleConfig(max_frames=int(d.get("max_frames", 180)))
  norm = preprocessor.read(path)
  if norm is not None:
    with open(os.path.join(path, preprocessor.FILE)) as f:
      pc = json.load(f)
    scfg = dataclasses.replace(scfg, image_mean=norm[0], image_std=norm[1],
                               min_tokens=int(pc.get("min_tokens", scfg.min_tokens)),
                               max_tokens=int(pc.get("max_tokens", scfg.max_tokens)))
  return Loaded(model, params, from_model_dir(path), scfg, path)


def load(workdir: Optional[str] = None, hf_dir: Optional[str] = None,
         step: Optional[int] = None, dtype=None) -> Loaded:
  if (workdir is None) == (hf_dir is None):
    raise ValueError("give one of --workdir or --hf_dir")
  if hf_dir is not None:
    if step is not None:
      raise ValueError("--step goes with --workdir (an HF folder holds one model)")
    return from_hf_dir(hf_dir, dtype)
  return from_workdir(workdir, step, dtype)


def shard(loaded: Loaded, mesh, rules=None) -> dict:
  """The parameters placed on `mesh` by the logical-axis rules (tensor / fsdp split of
  weights, as in training)."""
  import jax
  from penguin_jax import hf, sharding
  boxed = registry.abstract_params(loaded.model, boxed=True)
  shardings = sharding.params_shardings(boxed, mesh, rules or sharding.LOGICAL_RULES)
  return jax.device_put(loaded.params, shardings)
