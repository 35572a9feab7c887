"""Hugging Face interop: `config.json` + safetensors in the release's layout (DESIGN 1.5).

One key map per module, built from the config:

  LLM      model.embed_tokens.weight, model.layers.{i}...., model.norm.weight, lm_head.weight
  encoder  [model.vision_encoder.vision_encoder.]embeddings.patch_embedding.{weight,bias},
           encoder.layers.{i}...., encoder.norm.weight
  projector model.vision_projector.readout.{0,2}.{weight,bias}
  distill  vision_distill_layer.{weight,bias}
  teacher  embeddings.patch_embedding.{weight,bias}, encoder.layers.{i}.{layer_norm1,
           layer_norm2, self_attn.{q,k,v,out}_proj, mlp.fc1, mlp.fc2}.{weight,bias},
           post_layernorm.{weight,bias} (VL3-SigLIP-NaViT, DESIGN 1.6; the same names in
           transformers' VideoLlama3VisionModel and the hub's remote-code layout)

A PyTorch Linear weight is (out, in); our kernels are (in..., out...), e.g. q_proj
[embed, heads, head_dim]. The Conv2d patch embedding (out, 3, 14, 14) is our
[3*14*14, hidden] kernel. Scanned models (`scan_layers=True`) stack the layers on a
leading axis; conversion handles both layouts.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import logging
import math
import os
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util

from penguin_jax import preprocessor, safetensors_io
from penguin_jax.configs import (ENCODER_DIRNAME, ENCODER_MODEL_TYPE, LLM_MODEL_TYPE,
                                 VLM_MODEL_TYPE, EncoderConfig, Qwen3Config, TeacherConfig,
                                 VLMConfig, config_from_hf_dict)
from penguin_jax.encoder import PenguinEncoder
from penguin_jax.qwen3 import Qwen3ForCausalLM
from penguin_jax.teacher import ViTTeacher
from penguin_jax.vlm import PenguinVL, dummy_inputs

log = logging.getLogger(__name__)

VLM_ENCODER_PREFIX = "model.vision_encoder.vision_encoder."
DISTILL_KEY = "vision_distill_layer.weight"   # an attribute of the release's ForCausalLM
# Other spellings of a tensor met in checkpoints -> ours (DESIGN 1.5 writes the distill
# head under `model.`; the release's module puts it at the top level).
KEY_ALIASES = {"model.vision_distill_layer.weight": "vision_distill_layer.weight",
               "model.vision_distill_layer.bias": "vision_distill_layer.bias"}


class Entry(NamedTuple):
  """One tensor: HF key, our (unscanned) parameter path, how to convert.
  kind "copy": same array. kind "linear": HF (out, in) <-> ours (in..., out...), with
  `n_out` trailing output dims; `hf_shape` overrides the 2D HF shape (Conv2d).
  kind "flat": HF (n,) <-> ours (heads, head_dim), a per-head bias."""
  hf_key: str
  path: tuple
  kind: str = "copy"
  n_out: int = 1
  hf_shape: Optional[tuple] = None


# --------------------------------------------------------------------------- key maps
def _layer_entries(hf_prefix: str, path_prefix: tuple, num_layers: int) -> list[Entry]:
  out = []
  for i in range(num_layers):
    h, p = f"{hf_prefix}layers.{i}.", path_prefix + ("layers", f"layers_{i}")
    out += [
        Entry(h + "self_attn.q_proj.weight", p + ("self_attn", "q_proj", "kernel"), "linear", 2),
        Entry(h + "self_attn.k_proj.weight", p + ("self_attn", "k_proj", "kernel"), "linear", 2),
        Entry(h + "self_attn.v_proj.weight", p + ("self_attn", "v_proj", "kernel"), "linear", 2),
        Entry(h + "self_attn.o_proj.weight", p + ("self_attn", "o_proj", "kernel"), "linear", 1),
        Entry(h + "self_attn.q_norm.weight", p + ("self_attn", "q_norm", "scale")),
        Entry(h + "self_attn.k_norm.weight", p + ("self_attn", "k_norm", "scale")),
        Entry(h + "mlp.gate_proj.weight", p + ("mlp", "gate_proj", "kernel"), "linear"),
        Entry(h + "mlp.up_proj.weight", p + ("mlp", "up_proj", "kernel"), "linear"),
        Entry(h + "mlp.down_proj.weight", p + ("mlp", "down_proj", "kernel"), "linear"),
        Entry(h + "input_layernorm.weight", p + ("input_layernorm", "scale")),
        Entry(h + "post_attention_layernorm.weight", p + ("post_attention_layernorm", "scale")),
    ]
  return out


def llm_entries(cfg: Qwen3Config, path_prefix: tuple = ()) -> list[Entry]:
  out = [Entry("model.embed_tokens.weight", path_prefix + ("embed_tokens", "embedding"))]
  out += _layer_entries("model.", path_prefix, cfg.num_layers)
  out.append(Entry("model.norm.weight", path_prefix + ("norm", "scale")))
  if not cfg.tie_word_embeddings:
    out.append(Entry("lm_head.weight", path_prefix + ("lm_head", "kernel"), "linear"))
  return out


def encoder_entries(cfg: EncoderConfig, hf_prefix: str = "", path_prefix: tuple = ()) -> list[Entry]:
  conv = (cfg.hidden_size, cfg.num_channels, cfg.patch_size, cfg.patch_size)
  out = [Entry(hf_prefix + "embeddings.patch_embedding.weight",
               path_prefix + ("patch_embedding", "kernel"), "linear", 1, conv),
         Entry(hf_prefix + "embeddings.patch_embedding.bias", path_prefix + ("patch_embedding", "bias"))]
  out += _layer_entries(hf_prefix + "encoder.", path_prefix, cfg.num_layers)
  out.append(Entry(hf_prefix + "encoder.norm.weight", path_prefix + ("norm", "scale")))
  return out


def teacher_entries(cfg: TeacherConfig) -> list[Entry]:
  conv = (cfg.hidden_size, cfg.num_channels, cfg.patch_size, cfg.patch_size)
  out = [Entry("embeddings.patch_embedding.weight", ("patch_embedding", "kernel"), "linear", 1, conv),
         Entry("embeddings.patch_embedding.bias", ("patch_embedding", "bias"))]
  for i in range(cfg.num_layers):
    h, p = f"encoder.layers.{i}.", ("layers", f"layers_{i}")
    for ln in ("layer_norm1", "layer_norm2"):
      out += [Entry(h + ln + ".weight", p + (ln, "scale")), Entry(h + ln + ".bias", p + (ln, "bias"))]
    for n in ("q_proj", "k_proj", "v_proj"):
      out += [Entry(h + f"self_attn.{n}.weight", p + (n, "kernel"), "linear", 2),
              Entry(h + f"self_attn.{n}.bias", p + (n, "bias"), "flat")]
    out += [Entry(h + "self_attn.out_proj.weight", p + ("out_proj", "kernel"), "linear"),
            Entry(h + "self_attn.out_proj.bias", p + ("out_proj", "bias"))]
    for n in ("fc1", "fc2"):
      out += [Entry(h + f"mlp.{n}.weight", p + (n, "kernel"), "linear"),
              Entry(h + f"mlp.{n}.bias", p + (n, "bias"))]
  out += [Entry("post_layernorm.weight", ("post_layernorm", "scale")),
          Entry("post_layernorm.bias", ("post_layernorm", "bias"))]
  return out


def vlm_entries(cfg: VLMConfig) -> list[Entry]:
  out = llm_entries(cfg.llm, ("llm",))
  out += encoder_entries(cfg.encoder, VLM_ENCODER_PREFIX, ("vision_encoder",))
  for i in (0, 2):
    p = ("vision_projector", f"readout_{i}")
    out += [Entry(f"model.vision_projector.readout.{i}.weight", p + ("kernel",), "linear"),
            Entry(f"model.vision_projector.readout.{i}.bias", p + ("bias",))]
  if cfg.teacher_hidden_size is not None:
    p = ("vision_distill_layer", "linear")
    out += [Entry("vision_distill_layer.weight", p + ("kernel",), "linear"),
            Entry("vision_distill_layer.bias", p + ("bias",))]
  return out


def _hf_shape(e: Entry, flax_shape: tuple) -> tuple:
  if e.kind == "copy":
    return tuple(flax_shape)
  if e.kind == "flat":
    return (math.prod(flax_shape),)
  if e.hf_shape is not None:
    return tuple(e.hf_shape)
  n_in = len(flax_shape) - e.n_out
  return (math.prod(flax_shape[n_in:]), math.prod(flax_shape[:n_in]))


def _to_flax(e: Entry, t: np.ndarray, flax_shape: tuple) -> np.ndarray:
  if e.kind == "copy":
    return t
  if e.kind == "flat":
    return t.reshape(flax_shape)
  out = t.shape[0]
  return t.reshape(out, -1).T.reshape(flax_shape)


def _to_hf(e: Entry, x: np.ndarray, hf_shape: tuple) -> np.ndarray:
  if e.kind == "copy":
    return x
  if e.kind == "flat":
    return x.reshape(hf_shape)
  return x.reshape(-1, hf_shape[0]).T.reshape(hf_shape)


# --------------------------------------------------------------------------- layouts
def _layer_stack_paths(cfg) -> list[tuple[tuple, int]]:
  """(path prefix of a LayerStack, num_layers) for every tower of a model config."""
  if isinstance(cfg, VLMConfig):
    return [(("llm", "layers"), cfg.llm.num_layers),
            (("vision_encoder", "layers"), cfg.encoder.num_layers)]
  return [(("layers",), cfg.num_layers)]


def scan_layout(params: dict, cfg) -> dict:
  """Unscanned params (`.../layers/layers_{i}/...`) -> scanned (`.../layers/layers/...`
  with a leading layer axis), for the towers whose config has scan_layers."""
  params = traverse_util.unflatten_dict(traverse_util.flatten_dict(params))
  towers = _towers(cfg)
  for (prefix, n), tcfg in zip(_layer_stack_paths(cfg), towers):
    if not tcfg.scan_layers:
      continue
    node = _get(params, prefix)
    layers = [node.pop(f"layers_{i}") for i in range(n)]
    node["layers"] = jax.tree.map(lambda *xs: np.stack(xs), *layers)
  return params


def unscan_layout(params: dict, cfg) -> dict:
  """Inverse of `scan_layout`."""
  params = traverse_util.unflatten_dict(traverse_util.flatten_dict(params))
  for (prefix, n), tcfg in zip(_layer_stack_paths(cfg), _towers(cfg)):
    if not tcfg.scan_layers:
      continue
    node = _get(params, prefix)
    stacked = node.pop("layers")
    for i in range(n):
      node[f"layers_{i}"] = jax.tree.map(lambda x: np.asarray(x)[i], stacked)
  return params


def _towers(cfg):
  return [cfg.llm, cfg.encoder] if isinstance(cfg, VLMConfig) else [cfg]


def _get(tree, path):
  for k in path:
    tree = tree[k]
  return tree


# --------------------------------------------------------------------------- models
def build_model(cfg):
  """The Flax module for a config."""
  if isinstance(cfg, VLMConfig):
    return PenguinVL(cfg)
  if isinstance(cfg, EncoderConfig):
    return PenguinEncoder(cfg)
  if isinstance(cfg, Qwen3Config):
    return Qwen3ForCausalLM(cfg)
  if isinstance(cfg, TeacherConfig):
    return ViTTeacher(cfg)
  raise TypeError(f"no model for config {type(cfg).__name__}")


def init_inputs(cfg) -> tuple[tuple, dict]:
  """(args, kwargs) of a tiny forward used to initialise / shape a model."""
  if isinstance(cfg, VLMConfig):
    d = dummy_inputs(cfg)
    return (d.pop("input_ids"),), d
  if isinstance(cfg, (EncoderConfig, TeacherConfig)):   # patches in
    patch_dim = cfg.num_channels * cfg.patch_size ** 2
    return (jnp.zeros((1, 4, patch_dim)), jnp.ones((1, 4), jnp.int32),
            jnp.zeros((1, 4, 2), jnp.int32)), {}
  return (jnp.zeros((1, 4), jnp.int32),), {}


def _init_cfg(cfg):
  """The config used to create parameters: attention "xla", since the tiny init inputs
  are not on splash attention's block grid and the backend does not change parameters."""
  if isinstance(cfg, VLMConfig):
    return cfg.replace_runtime(attention="xla")
  return dataclasses.replace(cfg, attention="xla")


def init_params(model, rng, boxed: bool = False):
  """Random parameters (unboxed unless `boxed`, which keeps the logical-axis metadata)."""
  args, kwargs = init_inputs(model.cfg)
  variables = model.clone(cfg=_init_cfg(model.cfg)).init(rng, *args, **kwargs)
  return variables["params"] if boxed else nn.unbox(variables["params"])


def abstract_params(model, boxed: bool = False):
  """Shapes/dtypes of the parameters, without computing them."""
  return jax.eval_shape(lambda: init_params(model, jax.random.PRNGKey(0), boxed))


def _entries(cfg) -> list[Entry]:
  if isinstance(cfg, VLMConfig):
    return vlm_entries(cfg)
  if isinstance(cfg, EncoderConfig):
    return encoder_entries(cfg)
  if isinstance(cfg, TeacherConfig):
    return teacher_entries(cfg)
  return llm_entries(cfg)


def _unscanned(cfg):
  if isinstance(cfg, VLMConfig):
    return cfg.replace_runtime(scan_layers=False)
  return dataclasses.replace(cfg, scan_layers=False)


def hf_to_params(tensors: dict[str, np.ndarray], cfg, dtype=None, source: str = "checkpoint") -> dict:
  """HF tensors -> our parameter tree (NumPy), in the layout `cfg.scan_layers` asks for.
  Raises KeyError / ValueError naming the key, the expected and the found shape."""
  shapes = traverse_util.flatten_dict(abstract_params(build_model(_unscanned(cfg))))
  flat, used = {}, set()
  for e in _entries(cfg):
    fshape = tuple(shapes[e.path].shape)
    want = _hf_shape(e, fshape)
    if e.hf_key not in tensors:
      raise KeyError(f"{source}: missing tensor {e.hf_key!r} (expected shape {want})")
    t = tensors[e.hf_key]
    if tuple(t.shape) != want:
      raise ValueError(f"{source}: tensor {e.hf_key!r} has shape {tuple(t.shape)}, "
                       f"expected {want}")
    x = _to_flax(e, np.asarray(t), fshape)
    flat[e.path] = x.astype(dtype) if dtype is not None else x
    used.add(e.hf_key)
  missing_paths = set(shapes) - set(flat)
  if missing_paths:  # a key map bug, never the user's
    raise AssertionError(f"key map misses parameters {sorted(missing_paths)[:5]}")
  unused = [k for k in tensors if k not in used]
  if unused:
    log.warning("%s: %d tensor(s) loaded by no module of this model and ignored: %s%s",
                source, len(unused), ", ".join(unused[:8]), " ..." if len(unused) > 8 else "")
  return scan_layout(traverse_util.unflatten_dict(flat), cfg)


def _hf_tensors(params: dict, cfg, entries: list[Entry], dtype=None):
  """(HF key, NumPy tensor) one at a time, so that a writer holds one shard, not a copy
  of the model (the layers of a scanned model are views of the stacked arrays)."""
  flat = traverse_util.flatten_dict(unscan_layout(jax.device_get(params), cfg))
  for e in entries:
    if e.path not in flat:
      raise KeyError(f"parameter {'/'.join(e.path)} missing for HF key {e.hf_key!r}")
    x = np.asarray(flat[e.path])
    x = _to_hf(e, x, _hf_shape(e, x.shape))
    yield e.hf_key, np.ascontiguousarray(x.astype(dtype) if dtype is not None else x)


def params_to_hf(params: dict, cfg, dtype=None) -> dict[str, np.ndarray]:
  """Our parameter tree -> HF tensors (NumPy)."""
  return dict(_hf_tensors(params, cfg, _entries(cfg), dtype))


# --------------------------------------------------------------------------- files
def read_config(path: str) -> dict:
  f = os.path.join(path, "config.json")
  if not os.path.isfile(f):
    raise FileNotFoundError(f"{path}: no config.json (expected a Hugging Face model directory)")
  with open(f) as fh:
    return json.load(fh)


def read_tensors(path: str) -> dict[str, np.ndarray]:
  """All tensors of an HF directory: `model.safetensors`, or shards listed in
  `model.safetensors.index.json`, or every `*.safetensors` file."""
  index = os.path.join(path, "model.safetensors.index.json")
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
  return out


def hf_cache_dirs() -> list[str]:
  """Where Hugging Face keeps downloaded models: $HF_HUB_CACHE, else $HF_HOME/hub, else
  ~/.cache/huggingface/hub (huggingface_hub's order)."""
  if os.environ.get("HF_HUB_CACHE"):
    return [os.environ["HF_HUB_CACHE"]]
  home = os.environ.get("HF_HOME") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface")
  return [os.path.join(home, "hub")]


def _cached_snapshot(repo_id: str) -> list[str]:
  """The snapshot folders of `ORG/NAME` in the local HF cache, the `main` one first."""
  out = []
  for cache in hf_cache_dirs():
    repo = os.path.join(cache, "models--" + repo_id.replace("/", "--"))
    ref = os.path.join(repo, "refs", "main")
    if os.path.isfile(ref):
      with open(ref) as f:
        out.append(os.path.join(repo, "snapshots", f.read().strip()))
    out += sorted(glob.glob(os.path.join(repo, "snapshots", "*")), key=os.path.getmtime,
                  reverse=True)
  return out or [os.path.join(hf_cache_dirs()[0], "models--" + repo_id.replace("/", "--"),
                              "snapshots", "*")]


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
      out += _cached_snapshot(name)
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
        + ", ".join(looked) + ". Download it (huggingface-cli download NAME), or pass "
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
  tensors = {KEY_ALIASES.get(k, k): v for k, v in read_tensors(path).items()}
  cfg = config_from_hf(path, vision_encoder_dir, tensors, **runtime)
  params = hf_to_params(tensors, cfg, dtype=np.dtype(dtype), source=path)
  return build_model(cfg), jax.tree.map(jnp.asarray, params)


def _write_safetensors(out_dir: str, tensors, sizes: list[int], max_shard_bytes: int):
  """Write (key, array) pairs as `model.safetensors`, or as shards of at most
  `max_shard_bytes` with `model.safetensors.index.json`; `sizes` (bytes, in order) plan
  the shards so that only one shard is in memory."""
  for old in glob.glob(os.path.join(out_dir, "model*.safetensors*")):
    os.remove(old)
  plan, cur = [], 0
  for n in sizes:
    if not plan or (cur and cur + n > max_shard_bytes):
      plan.append(0)
      cur = 0
    plan[-1] += 1
    cur += n
  names = (["model.safetensors"] if len(plan) == 1 else
           [f"model-{i + 1:05d}-of-{len(plan):05d}.safetensors" for i in range(len(plan))])
  it, weight_map = iter(tensors), {}
  for name, count in zip(names, plan):
    shard = dict(next(it) for _ in range(count))
    safetensors_io.save_file(shard, os.path.join(out_dir, name))
    weight_map.update({k: name for k in shard})
    del shard
  if len(plan) > 1:
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as fh:
      json.dump({"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map}, fh, indent=2)


def _sizes(shapes: dict, entries, dtype) -> list[int]:
  """Bytes of each entry's tensor in `dtype`; `shapes`: the unscanned model's flat
  abstract parameters (nothing computed)."""
  return [math.prod(shapes[e.path].shape) * np.dtype(dtype).itemsize for e in entries]


def _write_json(path: str, d: dict):
  with open(path, "w") as fh:
    json.dump(d, fh, indent=2)


def save_pretrained(model, params, out_dir: str, dtype=None,
                    max_shard_bytes: int = 5 * 1024 ** 3, *, encoder_ref: Optional[str] = None,
                    preprocessor_config: Optional[dict] = None,
                    extra_config: Optional[dict] = None) -> str:
  """Write `config.json` + safetensors (sharded with an index above `max_shard_bytes`).
  An LLM loads in transformers' Qwen3ForCausalLM. A VLM directory is what the release's
  `PenguinVLQwen3ForCausalLM.from_pretrained` loads unchanged (DESIGN 1.5): the encoder
  folder `penguin_encoder/` (its config.json, preprocessor_config.json and weights, a
  standalone encoder checkpoint), `preprocessor_config.json` also beside config.json, and
  `mm_vision_encoder` / `vision_encoder` = `encoder_ref`, by default the encoder folder's
  absolute path (the release resolves it from the working directory; from_pretrained here
  also finds it inside the folder after a move). `preprocessor_config`: the image
  settings (default: the release's, `preprocessor.make()`); `extra_config`: more
  config.json fields (e.g. `loss_reduction_scope`)."""
  cfg = model.cfg
  os.makedirs(out_dir, exist_ok=True)
  params = jax.device_get(params)          # once; the writers take views of it
  entries = _entries(cfg)
  shapes = traverse_util.flatten_dict(abstract_params(build_model(_unscanned(cfg))))
  dtype = np.dtype(dtype if dtype is not None else jax.tree.leaves(params)[0].dtype)
  dtype_name = dtype.name
  if isinstance(cfg, VLMConfig):
    enc_dir = os.path.join(os.path.abspath(out_dir), ENCODER_DIRNAME)
    encoder_ref = encoder_ref or enc_dir
    _check_release_encoder_name(encoder_ref)
    hf_cfg = cfg.to_hf_dict(encoder_ref)
    pp = preprocessor_config or preprocessor.make()
    preprocessor.write(out_dir, pp)          # the release's AutoProcessor(model folder)
    preprocessor.write(enc_dir, pp)          # its PenguinVLImageProcessor(encoder)
    enc_cfg = {**cfg.encoder.to_hf_dict(), "torch_dtype": dtype_name}
    _write_json(os.path.join(enc_dir, "config.json"), enc_cfg)
    enc_entries = encoder_entries(cfg.encoder, "", ("vision_encoder",))
    _write_safetensors(enc_dir, _hf_tensors(params, cfg, enc_entries, dtype),
                       _sizes(shapes, enc_entries, dtype), max_shard_bytes)
  else:
    hf_cfg = cfg.to_hf_dict()
  hf_cfg.update(extra_config or {}, torch_dtype=dtype_name)
  _write_json(os.path.join(out_dir, "config.json"), hf_cfg)
  _write_safetensors(out_dir, _hf_tensors(params, cfg, entries, dtype),
                     _sizes(shapes, entries, dtype), max_shard_bytes)
  return out_dir


def _check_release_encoder_name(name: str):
  """The release picks the encoder class by substring, "clip" and "siglip" before
  "penguin" (DESIGN 1.5): a name with those would build the wrong encoder there."""
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
  llm_cfg = Qwen3Config.from_hf_dict(d)
  enc_cfg = dataclasses.replace(EncoderConfig.from_llm(llm_cfg, patch_size), **runtime)
  tensors = read_tensors(path)
  # The encoder's layers are the LLM's, under `encoder.` instead of `model.`.
  renamed = {"encoder." + k[len("model."):]: v for k, v in tensors.items()
             if k.startswith("model.layers.") or k == "model.norm.weight"}
  model = PenguinEncoder(enc_cfg)
  fresh = init_params(model, rng if rng is not None else jax.random.PRNGKey(0))
  fresh = jax.device_get(fresh)
  conv = Entry("", ("patch_embedding", "kernel"), "linear", 1,
               (enc_cfg.hidden_size, enc_cfg.num_channels, patch_size, patch_size))
  renamed["embeddings.patch_embedding.weight"] = _to_hf(
      conv, np.asarray(fresh["patch_embedding"]["kernel"]), conv.hf_shape)
  renamed["embeddings.patch_embedding.bias"] = np.asarray(fresh["patch_embedding"]["bias"])
  params = hf_to_params(renamed, enc_cfg, dtype=np.dtype(dtype), source=path)
  return model, jax.tree.map(jnp.asarray, params)
