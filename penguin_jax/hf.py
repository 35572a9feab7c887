"""Hugging Face folders: `config.json` + safetensors in the release's layout
(docs/design.md §1.5), read and written.

`from_pretrained(path)` reads any of the four model types (`registry.KINDS`: the Qwen3 LLM,
the Penguin-Encoder, the VLM, the stage-1a teacher), ours or as the release publishes it
(a VLM's encoder named by hub id and found in the local Hugging Face cache);
`save_pretrained(model, params, out)` writes what the release's classes and transformers
load. The tensor names come from `hf_keys` (the key maps); the model from `registry`.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import logging
import math
import os
from typing import Optional

import huggingface_hub
from huggingface_hub import constants as hub_constants
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from huggingface_hub.errors import LocalEntryNotFoundError

from penguin_jax import hf_keys, preprocessor, registry, safetensors_io
from penguin_jax.hf_keys import DISTILL_KEY, KEY_ALIASES, Entry
from penguin_jax.model_config import (ENCODER_DIRNAME, ENCODER_MODEL_TYPE, LLM_MODEL_TYPE,
                                      VLM_MODEL_TYPE, EncoderConfig, Qwen3Config, VLMConfig,
                                      config_from_hf_dict)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- reading
def read_config(path: str) -> dict:
  f = os.path.join(path, "config.json")
  if not os.path.isfile(f):
    raise FileNotFoundError(f"{path}: no config.json (expected a Hugging Face model directory)")
  with open(f) as fh:
    return json.load(fh)


def read_tensors(path: str) -> dict[str, np.ndarray]:
  """All tensors of an HF directory, memory-mapped (nothing is read until used):
  `model.safetensors`, or the shards of `model.safetensors.index.json`, or every
  `*.safetensors` file; distill-head spellings normalised (`hf_keys.KEY_ALIASES`)."""
  index = os.path.join(path, hub_constants.SAFETENSORS_INDEX_FILE)
  if os.path.isfile(index):
    with open(index) as fh:
      files = sorted(set(json.load(fh)["weight_map"].values()))
    files = [os.path.join(path, f) for f in files]
  else:
    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
  if not files:
    raise FileNotFoundError(f"{path}: no *.safetensors files (PyTorch .bin checkpoints are "
                            "not read; re-save with safe_serialization=True)")
  out = {}
  for f in files:
    if not os.path.isfile(f):
      raise FileNotFoundError(f"{path}: shard {os.path.basename(f)} listed in the index is missing")
    out.update(safetensors_io.load_file(f))
  return {KEY_ALIASES.get(k, k): v for k, v in out.items()}


def cached_snapshot(repo_id: str) -> Optional[str]:
  """The local Hugging Face cache's snapshot of hub repo `ORG/NAME` (huggingface_hub's
  lookup: $HF_HUB_CACHE, $HF_HOME/hub, ~/.cache/huggingface/hub), or None; never a
  download."""
  try:
    return huggingface_hub.snapshot_download(repo_id, local_files_only=True)
  except (LocalEntryNotFoundError, ValueError):   # not cached; not a valid repo id
    return None


def encoder_dir_candidates(model_dir: str, d: dict) -> list[str]:
  """Where a VLM config.json's encoder may be, in the order tried: the model folder (the
  name relative to it, then its last component: an exported folder that was moved), the
  name as the release reads it (absolute, or from the working directory), and the local
  HF cache for a hub id. `mm_vision_encoder` first, as the release reads it."""
  out = []
  for name in dict.fromkeys(n for n in (d.get("mm_vision_encoder"), d.get("vision_encoder"))
                            if isinstance(n, str) and n):
    if not os.path.isabs(name):
      out.append(os.path.join(model_dir, name))
    out.append(os.path.join(model_dir, os.path.basename(name.rstrip("/"))))
    out.append(os.path.abspath(name))
    if not os.path.isabs(name) and name.count("/") == 1 and not name.startswith("."):
      out.append(cached_snapshot(name) or
                 f"the local Hugging Face cache ({hub_constants.HF_HUB_CACHE}) "
                 f"for {name}")
  return list(dict.fromkeys(out))


def resolve_encoder_dir(model_dir: str, d: dict, vision_encoder_dir: Optional[str] = None):
  """The encoder folder of a VLM directory (with its config.json), or None when none is
  found but the config carries the encoder's config inline. Raises FileNotFoundError
  listing the places looked at."""
  looked = [vision_encoder_dir] if vision_encoder_dir else encoder_dir_candidates(model_dir, d)
  for c in looked:
    if os.path.isfile(os.path.join(c, "config.json")):
      return c
  if vision_encoder_dir or "vision_encoder_config" not in d:
    name = d.get("mm_vision_encoder") or d.get("vision_encoder")
    raise FileNotFoundError(
        f"{model_dir}: vision encoder {name!r} not found; looked for config.json in "
        + ", ".join(looked) + ". Download it (hf download NAME), or pass "
        "vision_encoder_dir=FOLDER")
  return None


def config_from_hf(path: str, vision_encoder_dir: Optional[str] = None,
                   tensors: Optional[dict] = None, **runtime):
  """Our config for an HF directory, dispatched on `model_type`. A VLM's encoder config
  comes from its encoder folder (`resolve_encoder_dir`), else the inline
  `vision_encoder_config`; a stage-1 config (`use_reconstruct`) gets its distill head's
  width from `tensors` when it does not state one (released configs name the teacher)."""
  d = read_config(path)
  enc, width = None, None
  if d.get("model_type") == VLM_MODEL_TYPE:
    enc_dir = resolve_encoder_dir(path, d, vision_encoder_dir)
    if enc_dir is not None:
      enc = read_config(enc_dir)
      if enc.get("model_type") != ENCODER_MODEL_TYPE:
        log.warning("%s: encoder config model_type %r, expected %r", enc_dir,
                    enc.get("model_type"), ENCODER_MODEL_TYPE)
    if d.get("use_reconstruct") and tensors is not None and DISTILL_KEY in tensors:
      width = int(tensors[DISTILL_KEY].shape[0])   # PyTorch Linear: (out = teacher width, in)
  try:
    return config_from_hf_dict(d, enc, teacher_hidden_size=width, **runtime)
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from None


def from_pretrained(path: str, dtype=jnp.float32, vision_encoder_dir: Optional[str] = None,
                    **runtime):
  """Load an HF directory -> (model, params): ours, or one laid out as the release
  publishes it (encoder named by hub id, found in the local HF cache).

  `dtype` is the parameter dtype (also the compute dtype unless `runtime` says
  otherwise); `runtime` sets other runtime fields, e.g. attention="splash", scan_layers=True.
  `vision_encoder_dir` overrides where a VLM's encoder folder is looked for.
  """
  runtime = {"param_dtype": dtype, "dtype": runtime.pop("compute_dtype", dtype), **runtime}
  tensors = read_tensors(path)
  cfg = config_from_hf(path, vision_encoder_dir, tensors, **runtime)
  params = hf_keys.hf_to_params(tensors, cfg, dtype=np.dtype(dtype), source=path)
  return registry.build_model(cfg), jax.tree.map(jnp.asarray, params)


# --------------------------------------------------------------------------- writing
def _write_safetensors(out_dir: str, tensor, sizes: dict[str, int], max_shard_bytes: int):
  """Write the tensors named in `sizes` (bytes per HF key) as `model.safetensors`, or as
  shards with their index (huggingface_hub's plan and file names). The plan needs the
  sizes alone; `tensor(key)` makes each tensor when its shard is written, so that only
  one shard is in memory at a time."""
  for old in glob.glob(os.path.join(out_dir, "model*.safetensors*")):
    os.remove(old)
  plan = huggingface_hub.split_state_dict_into_shards_factory(
      sizes, get_storage_size=lambda n: n, filename_pattern="model{suffix}.safetensors",
      max_shard_size=max_shard_bytes)
  for name, keys in plan.filename_to_tensors.items():
    safetensors_io.save_file({k: tensor(k) for k in keys}, os.path.join(out_dir, name))
  if plan.is_sharded:
    _write_json(os.path.join(out_dir, hub_constants.SAFETENSORS_INDEX_FILE),
                {"metadata": plan.metadata, "weight_map": plan.tensor_to_filename})


def _sizes(shapes: dict, key_map: list[Entry], dtype) -> dict[str, int]:
  """Bytes of each entry's tensor in `dtype`, by HF key, in the key map's order;
  `shapes`: the unscanned model's flat abstract parameters (nothing computed)."""
  return {e.hf_key: math.prod(shapes[e.path].shape) * np.dtype(dtype).itemsize for e in key_map}


def _write_json(path: str, d: dict):
  with open(path, "w") as fh:
    json.dump(d, fh, indent=2)


def save_pretrained(model, params, out_dir: str, dtype=None,
                    max_shard_bytes: int = 5 * 1024 ** 3, *, encoder_ref: Optional[str] = None,
                    preprocessor_config: Optional[dict] = None,
                    extra_config: Optional[dict] = None) -> str:
  """Write `config.json` + safetensors (sharded with an index above `max_shard_bytes`).
  An LLM loads in transformers' Qwen3ForCausalLM. A VLM directory is what the release's
  `PenguinVLQwen3ForCausalLM.from_pretrained` loads unchanged (docs/design.md §1.5): the
  encoder folder `penguin_encoder/` (its config.json, preprocessor_config.json and
  weights, a standalone encoder checkpoint), `preprocessor_config.json` also beside
  config.json, and `mm_vision_encoder` / `vision_encoder` = `encoder_ref`, by default the
  encoder folder's absolute path (the release resolves it from the working directory;
  from_pretrained here also finds it inside the folder after a move).
  `preprocessor_config`: the image settings (default: the release's, `preprocessor.make()`);
  `extra_config`: more config.json fields (e.g. `loss_reduction_scope`)."""
  cfg = model.cfg
  os.makedirs(out_dir, exist_ok=True)
  flat = hf_keys.flat_unscanned(params, cfg)   # on the host once; tensors are made from views
  key_map = hf_keys.entries(cfg)
  by_key = {e.hf_key: e for e in key_map}
  tensor = lambda k: hf_keys.hf_tensor(flat, by_key[k], dtype)
  shapes = traverse_util.flatten_dict(
      registry.abstract_params(registry.build_model(hf_keys.unscanned(cfg))))
  dtype = np.dtype(dtype if dtype is not None else next(iter(flat.values())).dtype)
  if isinstance(cfg, VLMConfig):            # the VLM alone has an encoder folder
    enc_dir = os.path.join(os.path.abspath(out_dir), ENCODER_DIRNAME)
    encoder_ref = encoder_ref or enc_dir
    _check_release_encoder_name(encoder_ref)
    hf_cfg = cfg.to_hf_dict(encoder_ref)
    pp = preprocessor_config or preprocessor.make()
    preprocessor.write(out_dir, pp)          # the release's AutoProcessor(model folder)
    preprocessor.write(enc_dir, pp)          # its PenguinVLImageProcessor(encoder)
    _write_json(os.path.join(enc_dir, "config.json"),
                {**cfg.encoder.to_hf_dict(), "torch_dtype": dtype.name})
    enc_map = hf_keys.encoder_entries(cfg.encoder, "", ("vision_encoder",))
    enc_keys = {e.hf_key: e for e in enc_map}
    _write_safetensors(enc_dir, lambda k: hf_keys.hf_tensor(flat, enc_keys[k], dtype),
                       _sizes(shapes, enc_map, dtype), max_shard_bytes)
  else:
    hf_cfg = cfg.to_hf_dict()
  hf_cfg.update(extra_config or {}, torch_dtype=dtype.name)
  _write_json(os.path.join(out_dir, "config.json"), hf_cfg)
  _write_safetensors(out_dir, tensor, _sizes(shapes, key_map, dtype), max_shard_bytes)
  return out_dir


def _check_release_encoder_name(name: str):
  """The release picks the encoder class by substring, "clip" and "siglip" before
  "penguin" (docs/design.md §1.5): a name with those would build the wrong encoder there."""
  if "penguin" not in name.lower() or "clip" in name or "siglip" in name:
    log.warning("encoder name %r: the release picks its encoder class by substring and "
                "needs 'penguin' without 'clip' / 'siglip'; pass encoder_ref= (e.g. the "
                "hub id you will publish the encoder under)", name)


def encoder_from_qwen3(path: str, rng=None, patch_size: int = 14, dtype=jnp.float32, **runtime):
  """Penguin-Encoder initialised from a text-only Qwen3 checkpoint (the paper's key idea):
  layers and final norm copied, `embed_tokens` / `lm_head` dropped, a new patch embedding.
  Returns (encoder model, params)."""
  d = read_config(path)
  if d.get("model_type") != LLM_MODEL_TYPE:
    raise ValueError(f"{path}: model_type {d.get('model_type')!r}, expected a text-only "
                     f"{LLM_MODEL_TYPE!r} checkpoint")
  runtime = {"param_dtype": dtype, "dtype": dtype, **runtime}
  enc_cfg = dataclasses.replace(EncoderConfig.from_llm(Qwen3Config.from_hf_dict(d), patch_size),
                                **runtime)
  tensors = read_tensors(path)
  # The encoder's layers are the LLM's, under `encoder.` instead of `model.`.
  renamed = {"encoder." + k[len("model."):]: v for k, v in tensors.items()
             if k.startswith("model.layers.") or k == "model.norm.weight"}
  model = registry.build_model(enc_cfg)
  fresh = jax.device_get(registry.init_params(
      model, rng if rng is not None else jax.random.PRNGKey(0)))
  conv = hf_keys.encoder_entries(enc_cfg)[0]           # the patch embedding's kernel
  renamed[conv.hf_key] = hf_keys.to_hf(conv, np.asarray(fresh["patch_embedding"]["kernel"]),
                                       conv.hf_shape)
  renamed["embeddings.patch_embedding.bias"] = np.asarray(fresh["patch_embedding"]["bias"])
  params = hf_keys.hf_to_params(renamed, enc_cfg, dtype=np.dtype(dtype), source=path)
  return model, jax.tree.map(jnp.asarray, params)
