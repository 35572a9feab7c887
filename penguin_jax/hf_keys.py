"""Hugging Face key maps: our parameter paths <-> the release's tensor names
(docs/design.md §1.5, §1.6), as data, used both ways (import and export).

One key map per model type (`KEY_MAPS`, by config type), built from the config:

  LLM       model.embed_tokens.weight, model.layers.{i}...., model.norm.weight, lm_head.weight
  encoder   [model.vision_encoder.vision_encoder.]embeddings.patch_embedding.{weight,bias},
            encoder.layers.{i}...., encoder.norm.weight
  projector model.vision_projector.readout.{0,2}.{weight,bias}
  distill   vision_distill_layer.{weight,bias}
  teacher   embeddings.patch_embedding.{weight,bias}, encoder.layers.{i}.{layer_norm1,
            layer_norm2, self_attn.{q,k,v,out}_proj, mlp.fc1, mlp.fc2}.{weight,bias},
            post_layernorm.{weight,bias} (VL3-SigLIP-NaViT; the same names in transformers'
            VideoLlama3VisionModel and the hub's remote-code layout)

A PyTorch Linear weight is (out, in); our kernels are (in..., out...), e.g. q_proj
[embed, heads, head_dim]. The Conv2d patch embedding (out, 3, 14, 14) is our
[3*14*14, hidden] kernel. Scanned towers (`scan_layers=True`) stack their layers on a
leading axis; conversion handles both layouts, one parameter at a time (`iter_params`),
so that an import never holds two copies of the model.
"""
from __future__ import annotations

import logging
import math
from typing import Iterator, NamedTuple, Optional

import jax
import numpy as np
from flax import traverse_util

from penguin_jax import registry
from penguin_jax.model_config import EncoderConfig, Qwen3Config, TeacherConfig, VLMConfig

log = logging.getLogger(__name__)

VLM_ENCODER_PREFIX = "model.vision_encoder.vision_encoder."
DISTILL_KEY = "vision_distill_layer.weight"   # an attribute of the release's ForCausalLM
# Other spellings of a tensor met in checkpoints -> ours (docs/design.md §1.5 names the
# distill head under `model.`; the release's module puts it at the top level).
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


KEY_MAPS = {VLMConfig: vlm_entries, EncoderConfig: encoder_entries, Qwen3Config: llm_entries,
            TeacherConfig: teacher_entries}


def entries(cfg) -> list[Entry]:
  """The key map of a model config."""
  return KEY_MAPS[type(cfg)](cfg)


# --------------------------------------------------------------------------- one tensor
def hf_shape(e: Entry, flax_shape: tuple) -> tuple:
  if e.kind == "copy":
    return tuple(flax_shape)
  if e.kind == "flat":
    return (math.prod(flax_shape),)
  if e.hf_shape is not None:
    return tuple(e.hf_shape)
  n_in = len(flax_shape) - e.n_out
  return (math.prod(flax_shape[n_in:]), math.prod(flax_shape[:n_in]))


def to_flax(e: Entry, t: np.ndarray, flax_shape: tuple) -> np.ndarray:
  if e.kind == "copy":
    return t
  if e.kind == "flat":
    return t.reshape(flax_shape)
  out = t.shape[0]
  return t.reshape(out, -1).T.reshape(flax_shape)


def to_hf(e: Entry, x: np.ndarray, shape: tuple) -> np.ndarray:
  if e.kind == "copy":
    return x
  if e.kind == "flat":
    return x.reshape(shape)
  return x.reshape(-1, shape[0]).T.reshape(shape)


# --------------------------------------------------------------------------- layouts
def unscanned(cfg):
  return cfg.replace_runtime(scan_layers=False)


def _scanned_path(path: tuple, cfg) -> tuple[tuple, Optional[int]]:
  """An unscanned path -> (its path in `cfg`'s layout, the layer index when it lands in a
  stacked array of a scanned tower, else None)."""
  for prefix, tower in registry.towers(cfg):
    n = len(prefix)
    if tower.scan_layers and path[:n] == prefix and path[n].startswith("layers_"):
      return prefix + ("layers",) + path[n + 1:], int(path[n][len("layers_"):])
  return path, None


def scan_layout(params: dict, cfg) -> dict:
  """Unscanned params (`.../layers/layers_{i}/...`) -> `cfg`'s layout (scanned towers:
  `.../layers/layers/...` with a leading layer axis)."""
  groups: dict = {}
  for path, x in traverse_util.flatten_dict(params).items():
    new, i = _scanned_path(path, cfg)
    groups.setdefault(new, []).append((i, x))
  out = {p: (xs[0][1] if xs[0][0] is None else np.stack([x for _, x in sorted(xs)]))
         for p, xs in groups.items()}
  return traverse_util.unflatten_dict(out)


def unscan_layout(params: dict, cfg) -> dict:
  """Inverse of `scan_layout` (the layers of a scanned tower become views of the stack)."""
  flat = {}
  stacks = {prefix: t for prefix, t in registry.towers(cfg) if t.scan_layers}
  for path, x in traverse_util.flatten_dict(params).items():
    prefix = next((p for p in stacks if path[:len(p) + 1] == p + ("layers",)), None)
    if prefix is None:
      flat[path] = x
      continue
    n = len(prefix)
    for i in range(stacks[prefix].num_layers):
      flat[prefix + (f"layers_{i}",) + path[n + 1:]] = np.asarray(x)[i]
  return traverse_util.unflatten_dict(flat)


# --------------------------------------------------------------------------- whole models
def iter_params(tensors, cfg, dtype=None, source: str = "checkpoint") -> Iterator[tuple]:
  """HF tensors (a mapping that may be lazy: memory-mapped files) -> (path in `cfg`'s
  layout, NumPy array), one parameter at a time: a stacked parameter of a scanned tower is
  built from its layers' tensors and handed out before the next is read. Raises KeyError /
  ValueError naming the key, the expected and the found shape."""
  shapes = traverse_util.flatten_dict(registry.abstract_params(registry.build_model(unscanned(cfg))))
  by_path: dict = {}
  for e in entries(cfg):
    by_path.setdefault(_scanned_path(e.path, cfg)[0], []).append(e)
  covered = {e.path for es in by_path.values() for e in es}
  if set(shapes) - covered:  # a key map bug, never the user's
    raise AssertionError(f"key map misses parameters {sorted(set(shapes) - covered)[:5]}")
  for path, es in by_path.items():
    parts = []
    for e in es:
      fshape = tuple(shapes[e.path].shape)
      want = hf_shape(e, fshape)
      if e.hf_key not in tensors:
        raise KeyError(f"{source}: missing tensor {e.hf_key!r} (expected shape {want})")
      t = tensors[e.hf_key]
      if tuple(t.shape) != want:
        raise ValueError(f"{source}: tensor {e.hf_key!r} has shape {tuple(t.shape)}, "
                         f"expected {want}")
      x = to_flax(e, np.asarray(t), fshape)
      parts.append(x.astype(dtype) if dtype is not None else x)
    yield path, (parts[0] if _scanned_path(es[0].path, cfg)[1] is None else np.stack(parts))


def unused_keys(tensors, cfg) -> list[str]:
  """Tensors of a checkpoint that no parameter of `cfg` reads."""
  used = {e.hf_key for e in entries(cfg)}
  return [k for k in tensors if k not in used]


def hf_to_params(tensors, cfg, dtype=None, source: str = "checkpoint") -> dict:
  """HF tensors -> our parameter tree (NumPy), in the layout `cfg.scan_layers` asks for;
  tensors no module reads are a warning naming them."""
  params = traverse_util.unflatten_dict(dict(iter_params(tensors, cfg, dtype, source)))
  unused = unused_keys(tensors, cfg)
  if unused:
    log.warning("%s: %d tensor(s) loaded by no module of this model and ignored: %s%s",
                source, len(unused), ", ".join(unused[:8]), " ..." if len(unused) > 8 else "")
  return params


def flat_unscanned(params: dict, cfg) -> dict:
  """Our parameter tree on the host, flat by unscanned path (a scanned tower's layers are
  views of its stacked arrays: nothing is copied)."""
  return traverse_util.flatten_dict(unscan_layout(jax.device_get(params), cfg))


def hf_tensor(flat: dict, e: Entry, dtype=None) -> np.ndarray:
  """The HF tensor of one key-map entry, from `flat_unscanned`'s tree."""
  if e.path not in flat:
    raise KeyError(f"parameter {'/'.join(e.path)} missing for HF key {e.hf_key!r}")
  x = np.asarray(flat[e.path])
  x = to_hf(e, x, hf_shape(e, x.shape))
  return np.ascontiguousarray(x.astype(dtype) if dtype is not None else x)


def params_to_hf(params: dict, cfg, dtype=None) -> dict[str, np.ndarray]:
  """Our parameter tree -> HF tensors (NumPy)."""
  flat = flat_unscanned(params, cfg)
  return {e.hf_key: hf_tensor(flat, e, dtype) for e in entries(cfg)}
