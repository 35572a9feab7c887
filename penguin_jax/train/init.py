"""Where a run's parameters come from: its own newest checkpoint (a resume always wins),
else `config.init`, else random; and stage 1a's frozen teacher.

`config.init.init_from` names any checkpoint (`source_of`):
  * a training workdir (an earlier stage; or its `checkpoints` folder),
  * an orbax checkpoint written by `launch.convert hf-to-orbax`,
  * a Hugging Face folder: a Penguin-VL (the release's layout, its encoder found by path or
    by hub id in the HF cache, a stage-1 one with its distill head; or a `workdir-to-hf`
    export), a Qwen3 LLM (the `llm` module only) or a Penguin-Encoder (`vision_encoder`).
The model's sizes come from it (`resolve`: a config size of 0 is taken from it, another
one that differs is one line naming both), and so do the tokenizer and the image
normalisation of an HF folder that has them. An HF folder is read one parameter at a time
onto its shards (`hf_keys.iter_params`), so an import holds about one parameter on the
host besides the memory-mapped files. Without `init_from`, `encoder_from_qwen3` and `llm`
name the paper's starting points (HF folders of a text-only Qwen3 and of the Qwen3
decoder). With LoRA (`config.lora`), the loaded base is cast to its frozen dtype or
quantized (QLoRA) and the adapters start as the program made them (B = 0: the base model).
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from typing import Any, Iterator, NamedTuple

import jax
import numpy as np
from flax import traverse_util
from jax.experimental import multihost_utils
from ml_collections import ConfigDict

from penguin_jax import hf, hf_keys, lora as lora_lib, orbax_params, preprocessor, registry
from penguin_jax.model_config import EncoderConfig, Qwen3Config, VLMConfig
from penguin_jax.train import checkpoint as ckpt, program as program_lib, workdir as workdir_lib
from penguin_jax.train.program import TrainProgram, put_global

log = logging.getLogger("train")
TEACHER_HINT = ("stage 1a distils from VL3-SigLIP-NaViT: download it (hf download "
                "DAMO-NLP-SG/VL3-SigLIP-NaViT --local-dir DIR) and pass --config.init.teacher=DIR "
                "('random' for a smoke test)")
SIZES = ("hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads", "head_dim")


class Source(NamedTuple):
  """A checkpoint `init_from` names: its kind, the modules it holds, its model config
  (a VLMConfig, Qwen3Config or EncoderConfig; a workdir's run config for a workdir)."""
  kind: str            # "workdir" | "orbax" | "hf"
  path: str
  modules: tuple
  config: Any


def _modules_of(model_cfg) -> tuple:
  if isinstance(model_cfg, VLMConfig):
    heads = ("vision_distill_layer",) if model_cfg.teacher_hidden_size else ()
    return ("vision_encoder", "vision_projector", "llm") + heads
  return ("llm",) if isinstance(model_cfg, Qwen3Config) else ("vision_encoder",)


def source_of(path: str) -> Source:
  """What `path` is (see the module docstring); one line when it is none of them."""
  if workdir_lib.is_remote(path) or os.path.isdir(os.path.join(path, "checkpoints")) \
      or os.path.basename(path.rstrip("/")) == "checkpoints":
    _, run, modules = ckpt.run_info(path)
    return Source("workdir", path, tuple(modules), ConfigDict(run))
  if os.path.isfile(os.path.join(path, orbax_params.CONFIG_FILE)):
    cfg = orbax_params.read_config(path)
    return Source("orbax", path, _modules_of(cfg), cfg)
  if os.path.isfile(os.path.join(path, "config.json")):
    cfg = hf.config_from_hf(path, tensors=hf.read_tensors(path))
    if isinstance(cfg, (VLMConfig, Qwen3Config, EncoderConfig)):
      return Source("hf", path, _modules_of(cfg), cfg)
    raise ValueError(f"init_from {path}: a {type(cfg).__name__} folder, not a Penguin-VL, "
                     "Qwen3 or encoder checkpoint")
  raise FileNotFoundError(
      f"init_from {path}: not a checkpoint (looked for a training workdir's checkpoints/, "
      f"an orbax checkpoint's {orbax_params.CONFIG_FILE}, an HF folder's config.json)")


def _sizes(src: Source) -> dict:
  """{"encoder" / "llm": {size: value}, "vocab_size": n} of a source's towers."""
  if src.kind == "workdir":
    m = src.config.model
    return {"encoder": dict(m.encoder), "llm": dict(m.llm), "vocab_size": m.vocab_size}
  cfg, out = src.config, {}
  towers = {"encoder": cfg.encoder, "llm": cfg.llm} if isinstance(cfg, VLMConfig) else \
      {"llm" if isinstance(cfg, Qwen3Config) else "encoder": cfg}
  for name, t in towers.items():
    out[name] = {k: getattr(t, k) for k in SIZES}
    if name == "llm":
      out[name]["tie_word_embeddings"] = t.tie_word_embeddings
      out["vocab_size"] = t.vocab_size
  return out


def resolve(cfg, explicit=()) -> Source | None:
  """Fill the run config from `init.init_from`: its model sizes (the checkpoint's win
  over the config file's; one the command line set, `explicit` (e.g. "model.llm.
  hidden_size"), that differs is an error naming both), and the tokenizer and image
  normalisation of an HF folder (unless the config names its own). -> the source."""
  if not cfg.init.init_from:
    return None
  src = source_of(cfg.init.init_from)
  if not workdir_lib.is_remote(src.path):          # recorded so: exports run elsewhere
    cfg.init.init_from = os.path.abspath(src.path)
  m, taken = cfg.model, []
  for tower, sizes in _sizes(src).items():
    if tower == "vocab_size":
      taken += _take(m, "vocab_size", sizes, src.path, "model.vocab_size", explicit)
      continue
    for k, v in sizes.items():
      taken += _take(m[tower], k, v, src.path, f"model.{tower}.{k}", explicit)
  if taken:
    log.info("model sizes from %s: %s", src.path, ", ".join(taken))
  if src.kind == "hf":
    if not cfg.data.tokenizer and os.path.isfile(os.path.join(src.path, "tokenizer.json")):
      cfg.data.tokenizer = src.path
    if not cfg.data.preprocessor_config:    # the folder's, else its encoder folder's
      places = [src.path]
      if isinstance(src.config, VLMConfig):
        places.append(hf.resolve_encoder_dir(src.path, hf.read_config(src.path)))
      cfg.data.preprocessor_config = next(
          (p for p in places if p and preprocessor.read(p) is not None), "")
  return src


def _take(node, key, want, path, name, explicit) -> list[str]:
  have = node[key]
  if have == want:
    return []
  if name in explicit:
    raise ValueError(f"--config.{name}={have}, but {path} has {want}: drop the override (the "
                     "model's sizes come from the checkpoint) or start from another one")
  node[key] = want
  return [f"{name}={want}"]


def restore_or_initialise(cfg, program: TrainProgram, feed, rng, workdir: str):
  """-> (checkpoint manager, state, step, teacher params or None): the workdir's newest
  intact checkpoint (resuming always wins; the teacher comes back with it; checkpoints
  that do not restore are moved aside, `checkpoint.restore_intact`), else a new state
  initialised from `config.init`, and the teacher from `init.teacher`."""
  mgr, restored = ckpt.restore_intact(lambda: ckpt.manager(workdir, cfg.keep_checkpoints),
                                      program.abstract_state, program.abstract_teacher,
                                      log=log.error)
  if restored is not None:
    step, state, data_state, teacher = restored
    feed.set_state({"batches": int(step), **data_state})   # older states lack "batches"
    log.info("resumed from step %d (%s)%s", step, mgr.directory,
             ", teacher included" if teacher is not None else "")
    if program.teacher is not None and teacher is None:   # a checkpoint without one
      teacher = load_teacher(cfg, program, workdir, rng)
    return mgr, state, step, teacher
  state = program.new_state(initial_params(cfg, program, program.init_params(rng)))
  return mgr, state, 0, load_teacher(cfg, program, workdir, rng)


def load_teacher(cfg, program: TrainProgram, workdir: str, rng):
  """Stage 1a's frozen teacher from `config.init.teacher` (None for other stages): an HF
  folder, or "random": one written once to WORKDIR/random_teacher by process 0 (a local
  cache for a remote WORKDIR) and read back through the same import path."""
  if program.teacher is None:
    return None
  path = cfg.init.teacher
  if not path:
    raise ValueError(f"config.init.teacher is empty: {TEACHER_HINT}")
  if path == "random":
    remote = workdir_lib.is_remote(workdir)   # then every process writes it to a local cache
    path = os.path.join(tempfile.gettempdir() if remote else workdir,
                        f"random_teacher_{cfg.seed}" if remote else "random_teacher")
    if (remote or jax.process_index() == 0) and not os.path.isdir(path):
      tmp = tempfile.mkdtemp(dir=os.path.dirname(path), prefix=".random_teacher_")
      program.write_random_teacher(tmp, jax.random.fold_in(rng, 7))
      try:
        os.rename(tmp, path)           # whole or absent, should the process die meanwhile
      except OSError:                  # another process of this host was first: the same
        shutil.rmtree(tmp)
    multihost_utils.sync_global_devices("random teacher")
  elif not os.path.isdir(path):
    raise FileNotFoundError(f"config.init.teacher={path}: no such folder; {TEACHER_HINT}")
  teacher = program.load_teacher(path)
  log.info("teacher VL3-SigLIP-NaViT from %s: %s parameters, frozen", path,
           f"{program.param_counts()['teacher']:,}")
  return teacher


def initial_params(cfg, program: TrainProgram, params: dict, src=None) -> dict:
  """Parameters for a new run: `init_from` (any checkpoint, `source_of`), else the HF
  checkpoints the config names, else the random `params` given (already on their
  shards)."""
  init = cfg.init
  if init.init_from:
    src = src or source_of(init.init_from)
    modules = [m for m in init.modules if m in src.modules and m in params]
    if not modules:
      raise ValueError(f"init_from {src.path}: holds {list(src.modules)}, none of "
                       f"config.init.modules {list(init.modules)}")
    params = load_modules(src, program, params, modules)
    log.info("initialised %s from %s (%s)", ", ".join(sorted(modules)), init.init_from,
             src.kind if src.kind != "workdir" else f"step {ckpt.run_info(src.path)[0]}")
    return params
  if init.encoder_from_qwen3:
    vcfg = program.model_config
    _, enc = hf.encoder_from_qwen3(init.encoder_from_qwen3, scan_layers=vcfg.encoder.scan_layers)
    flat = traverse_util.flatten_dict({"vision_encoder": jax.device_get(enc)})
    fresh = traverse_util.flatten_dict({"vision_encoder": jax.device_get(
        {"patch_embedding": params["vision_encoder"]["patch_embedding"]})})
    flat.update(fresh)        # the patch embedding stays the program's (new) one
    params = _place(program, params, flat.items(), ["vision_encoder"], init.encoder_from_qwen3)
    log.info("encoder initialised from text-only Qwen3 %s", init.encoder_from_qwen3)
  if init.llm:
    src = source_of(init.llm)
    params = load_modules(Source(src.kind, src.path, ("llm",), src.config), program, params, ["llm"])
    log.info("LLM initialised from %s", init.llm)
  return params


# --------------------------------------------------------------------------- loading
def _source_leaves(src: Source, program: TrainProgram, modules) -> Iterator[tuple]:
  """(path in the program's layout, host array) of the modules wanted, one at a time."""
  scan = program.model_config.llm.scan_layers
  if src.kind == "hf":
    tensors = hf.read_tensors(src.path)
    cfg = src.config.replace_runtime(scan_layers=scan)
    prefix = () if isinstance(cfg, VLMConfig) else (src.modules[0],)
    for path, x in hf_keys.iter_params(tensors, cfg, source=src.path):
      if (prefix + path)[0] in modules:
        yield prefix + path, x
    return
  if src.kind == "orbax":
    model, params = orbax_params.load_params(src.path, scan_layers=scan)
    prefix = () if isinstance(model.cfg, VLMConfig) else (src.modules[0],)
    params = {prefix[0]: params} if prefix else params
  else:                     # a training run: its layout, maybe its adapters, to the program's
    params, _ = ckpt.restore_params(src.path, list(modules))
    plain = lora_lib.without(program.model_config)
    params = hf_keys.unscan_layout(params, plain.replace_runtime(
        scan_layers=bool(src.config.model.scan_layers)))
    run_lora = program_lib.lora_config(src.config)
    if run_lora.on:
      shapes = traverse_util.flatten_dict(registry.abstract_params(registry.build_model(
          plain.replace_runtime(scan_layers=False))))
      params = lora_lib.merge(params, run_lora, {p: x.shape for p, x in shapes.items()})
    params = hf_keys.scan_layout(params, plain)
  for path, x in traverse_util.flatten_dict(jax.device_get(params)).items():
    if path[0] in modules:
      yield path, np.asarray(x)


def load_modules(src: Source, program: TrainProgram, params: dict, modules) -> dict:
  """`params` (the program's, on their shards) with `modules` replaced by the source's."""
  return _place(program, params, _source_leaves(src, program, modules), modules, src.path)


def _place(program: TrainProgram, params: dict, leaves, modules, where: str) -> dict:
  """`params` with the given (path, host array) leaves of `modules`: each cast to the
  program's dtype for it, a kernel the program keeps quantized (QLoRA) quantized, placed on
  the leaf's shards one at a time; adapters stay as the program made them (B = 0)."""
  target = traverse_util.flatten_dict(params)
  quant = program.lora.quant
  done = set()
  for path, x in leaves:
    if path in target:
      new = {path: x}
    elif path[-1] == "kernel" and (*path[:-1], "kernel_q") in target:
      new = _quantized(x, target[(*path[:-1], "kernel_q")].shape, quant, path[:-1])
    else:
      raise ValueError(f"{where}: {'/'.join(path)} has no place in this model")
    for p, v in new.items():
      old = target[p]
      if tuple(v.shape) != tuple(old.shape):
        raise ValueError(f"{where}: {'/'.join(p)} has shape {tuple(v.shape)}, "
                         f"this model {tuple(old.shape)}")
      target[p] = put_global(np.asarray(v, old.dtype), old.sharding)
      done.add(p)
  missing = [p for p in target if p[0] in modules and p not in done and not lora_lib.is_adapter(p)]
  if missing:
    raise ValueError(f"{where}: no value for {'/'.join(missing[0])} "
                     f"({len(missing)} parameters)")
  return traverse_util.unflatten_dict(target)


def _quantized(x, q_shape: tuple, quant: str, node: tuple) -> dict:
  """A kernel in its plain layout (a stack of layers when the quantized leaf `q_shape` is
  3D) -> its quantized leaves, each layer flattened to [in, out] as `layers.Linear` does."""
  stack = x if len(q_shape) == 3 else x[None]
  parts = [lora_lib.quantize(k.reshape(-1, q_shape[-1]), quant) for k in stack]
  q, s = np.stack([p["kernel_q"] for p in parts]), np.stack([p["kernel_scale"] for p in parts])
  if len(q_shape) == 2:
    q, s = q[0], s[0]
  return {(*node, "kernel_q"): q, (*node, "kernel_scale"): s}
