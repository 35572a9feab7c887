"""A training run -> a Hugging Face folder that the release and `penguin_jax.from_pretrained`
load as it is (`launch.convert workdir-to-hf`; docs/export.md).

The folder: config.json (model_type `penguinvl_qwen3`, `mm_vision_encoder` naming the
encoder folder), safetensors under the release's key names, `penguin_encoder/` (a
standalone encoder checkpoint with the run's `preprocessor_config.json`), the tokenizer
with `<image>` and the chat template, and a README.md. Only the parameters are read from
the checkpoint (no optimizer state).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
from typing import Optional

import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from ml_collections import ConfigDict

from data_pipelines.chat import CHAT_TEMPLATE
from data_pipelines.tokenizer import save_hf
from penguin_jax import hf, hf_keys, lora as lora_lib, preprocessor, registry, safetensors_io
from penguin_jax.inference import from_workdir
from penguin_jax.model_config import ENCODER_DIRNAME
from penguin_jax.train import checkpoint as ckpt
from penguin_jax.train.program import lora_config

log = logging.getLogger(__name__)


def export_run(workdir: str, out: str, *, step: Optional[int] = None, dtype="bfloat16",
               keep_distill_head: bool = False, teacher: Optional[str] = None,
               encoder_ref: Optional[str] = None, max_shard_bytes: int = 5 * 1024 ** 3,
               remote_code_from: Optional[str] = None):
  """The run's parameters (checkpoint `step`, default the latest), config and tokenizer ->
  an HF folder in `out`; -> (model, params). `teacher`: with `keep_distill_head`, the
  release's `vision_encoder_teacher` (default: the run's `init.teacher` folder). A LoRA
  run is merged (W + (alpha / r) A B in float32, the base dequantized, then `dtype`).
  `remote_code_from`: a model folder whose code files and `auto_map` entries the export
  carries (default: the run's `init.init_from` when that is such a folder)."""
  dtype = jnp.dtype(dtype)
  lora = lora_config(ConfigDict(ckpt.run_info(workdir)[1]))
  run = from_workdir(workdir, step, None if lora.on else dtype, keep_distill_head=keep_distill_head)
  cfg, tok, params, vcfg = run.run_config, run.tokenizer, run.params, run.model.cfg
  if lora.on:                        # the plain model: adapters merged, unscanned
    params, vcfg = merged(params, vcfg, lora)
    log.info("LoRA adapters merged (rank %d, alpha %g, base %s)", lora.rank, lora.alpha,
             lora.base_dtype)
  has_head = "vision_distill_layer" in params
  if keep_distill_head and not has_head:
    raise ValueError(f"{workdir}: --keep_distill_head, but this run ({cfg.stage}) has no "
                     "distill head")
  if cfg.model.use_teacher and not has_head:
    log.info("distill head dropped (inference does not use it; --keep_distill_head keeps it)")
  elif has_head:
    run_teacher = cfg.init.get("teacher", "")
    run_teacher = os.path.abspath(run_teacher) if run_teacher not in ("", "random") else ""
    vcfg = dataclasses.replace(vcfg, teacher_name=teacher or run_teacher or vcfg.teacher_name)
  d = cfg.data
  model = registry.build_model(vcfg)
  hf.save_pretrained(
      model, params, out, dtype=dtype, max_shard_bytes=max_shard_bytes, encoder_ref=encoder_ref,
      preprocessor_config=preprocessor.make(d.image_mean, d.image_std, d.min_tokens, d.max_tokens),
      extra_config={"loss_reduction_scope": cfg.loss.scope, "tokenizer_model_max_length": d.seq_len,
                    "bos_token_id": tok.pad_id, "eos_token_id": tok.eos_id,   # the run's tokenizer
                    "max_frames": d.max_frames, "penguin_jax_run": {
                        "workdir": os.path.abspath(run.workdir), "stage": cfg.stage,
                        "variant": cfg.variant, "step": run.step}})
  save_hf(tok, out, CHAT_TEMPLATE, d.seq_len)
  code = remote_code_from or _code_folder(cfg.init.get("init_from", ""))
  if code:
    carry_remote_code(code, out)
  with open(os.path.join(out, "README.md"), "w") as f:
    f.write(README.format(stage=cfg.stage, variant=cfg.variant, step=run.step,
                          workdir=os.path.abspath(run.workdir), dtype=dtype.name,
                          head="kept" if has_head and keep_distill_head else "none",
                          out=os.path.abspath(out)))
  return model, params


def merged(params: dict, vcfg, lora: lora_lib.LoraConfig):
  """A LoRA run's parameters -> (the plain model's, unscanned; its config)."""
  plain = lora_lib.without(vcfg).replace_runtime(scan_layers=False)
  shapes = traverse_util.flatten_dict(registry.abstract_params(registry.build_model(plain)))
  params = lora_lib.merge(hf_keys.unscan_layout(params, vcfg), lora,
                          {p: x.shape for p, x in shapes.items()})
  return params, plain


def export_adapters(workdir: str, out: str, *, step: Optional[int] = None) -> dict:
  """A LoRA run's adapters as a PEFT adapter folder (`peft.PeftModel.from_pretrained(base,
  out)` loads it onto the release's model): `adapter_config.json` and
  `adapter_model.safetensors`, keys `base_model.model.<module>.lora_A.weight` ([r, in])
  and `.lora_B.weight` ([out, r]) for the modules the HF key maps name; modules the run
  trained in full (`lora.train_in_full`) go to `non_lora_trainables.safetensors` under
  their HF keys (as the release saves them). -> the adapter config."""
  run = from_workdir(workdir, step, None)
  lora = lora_config(run.run_config)
  if not lora.on:
    raise ValueError(f"{workdir}: --adapters_only, but this run has no LoRA adapters "
                     "(config.lora.rank is 0)")
  vcfg = run.model.cfg
  plain = lora_lib.without(vcfg).replace_runtime(scan_layers=False)
  flat = traverse_util.flatten_dict(hf_keys.unscan_layout(run.params, vcfg))
  hf_key = {e.path: e.hf_key for e in hf_keys.entries(plain)}
  tensors, targets = {}, []
  for node in sorted({p[:-1] for p in flat if lora_lib.is_adapter(p)}):
    module = hf_key[(*node, "kernel")].removesuffix(".weight")
    a, b = np.asarray(flat[(*node, "lora_a")], np.float32), np.asarray(flat[(*node, "lora_b")], np.float32)
    tensors[f"base_model.model.{module}.lora_A.weight"] = np.ascontiguousarray(a.reshape(-1, lora.rank).T)
    tensors[f"base_model.model.{module}.lora_B.weight"] = np.ascontiguousarray(b.reshape(lora.rank, -1).T)
    targets.append(module)
  os.makedirs(out, exist_ok=True)
  safetensors_io.save_file(tensors, os.path.join(out, "adapter_model.safetensors"))
  config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": lora.rank,
            "lora_alpha": lora.alpha, "lora_dropout": lora.dropout, "bias": "none",
            # a full-match regex: exactly the modules with adapters (PEFT matches bare names
            # by suffix, which would also reach the encoder's layers of the same names)
            "target_modules": "(" + "|".join(re.escape(m) for m in targets) + ")",
            "base_model_name_or_path": run.run_config.init.get("init_from", ""),
            "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True,
            "modules_to_save": None, "use_rslora": False, "use_dora": False,
            "rank_pattern": {}, "alpha_pattern": {}}
  with open(os.path.join(out, "adapter_config.json"), "w") as f:
    json.dump(config, f, indent=2)
  full = {hf_key[p]: np.asarray(x) for p, x in flat.items()
          if p[0] in lora.train_in_full and p in hf_key}
  if full:
    safetensors_io.save_file(full, os.path.join(out, "non_lora_trainables.safetensors"))
  return config


def _code_folder(path: str) -> Optional[str]:
  """`path` when it is a model folder that carries its own code (`auto_map`), else None."""
  f = os.path.join(path, "config.json") if path else ""
  if not os.path.isfile(f):
    return None
  with open(f) as fh:
    return path if json.load(fh).get("auto_map") else None


# The files whose `auto_map` a remote-code model folder's users read: config.json (model,
# config), preprocessor_config.json (image processor, processor), processor_config.json
# and tokenizer_config.json (processor).
AUTO_MAP_FILES = ("config.json", "preprocessor_config.json", "processor_config.json",
                  "tokenizer_config.json")


def carry_remote_code(src: str, out: str) -> list[str]:
  """Copy the model code of folder `src` into the export `out`, as transformers does for a
  custom-code model on `save_pretrained`: its `*.py` files, and the `auto_map` entries of
  its config files merged into the export's (a file the export lacks is copied whole).
  Files of the user's own checkpoint into the user's export: the project ships no code of
  the release. -> the files written."""
  if not os.path.isdir(src):
    raise FileNotFoundError(f"--remote_code_from={src}: no such folder")
  written = []
  for name in sorted(os.listdir(src)):
    if name.endswith(".py"):
      shutil.copyfile(os.path.join(src, name), os.path.join(out, name))
      written.append(name)
  for name in AUTO_MAP_FILES:
    there = os.path.join(src, name)
    if not os.path.isfile(there):
      continue
    with open(there) as f:
      theirs = json.load(f)
    mine_path = os.path.join(out, name)
    if not os.path.isfile(mine_path):
      shutil.copyfile(there, mine_path)
    elif theirs.get("auto_map"):
      with open(mine_path) as f:
        mine = json.load(f)
      mine["auto_map"] = {**mine.get("auto_map", {}), **theirs["auto_map"]}
      with open(mine_path, "w") as f:
        json.dump(mine, f, indent=2)
    written.append(name)
  if not any(n.endswith(".py") for n in written):
    raise ValueError(f"--remote_code_from={src}: no model code (*.py) there")
  log.info("model code carried from %s: %s", src, ", ".join(written))
  return written


def set_encoder(hf_dir: str, encoder_ref: Optional[str] = None) -> str:
  """Point an exported VLM's `mm_vision_encoder` / `vision_encoder` to its encoder folder
  (default: HF_DIR/penguin_encoder, after a move) or to a hub id; -> the new reference."""
  f = os.path.join(hf_dir, "config.json")
  ref = encoder_ref or os.path.abspath(os.path.join(hf_dir, ENCODER_DIRNAME))
  if not os.path.isfile(f) or (encoder_ref is None and not os.path.isdir(ref)):
    raise FileNotFoundError(f"{hf_dir}: no config.json and {ENCODER_DIRNAME}/ there (not an "
                            "exported Penguin-VL folder)")
  with open(f) as fh:
    d = json.load(fh)
  d["mm_vision_encoder"] = d["vision_encoder"] = ref
  with open(f, "w") as fh:
    json.dump(d, fh, indent=2)
  return ref


README = """# Penguin-VL, exported by penguin-jax

- run: `{workdir}`, stage `{stage}:{variant}`, step {step}
- tensors: {dtype}; distill head: {head}
- encoder: `penguin_encoder/` (a standalone Penguin-Encoder checkpoint). `mm_vision_encoder`
  in config.json names it by absolute path, as the release resolves it from any working
  directory; after moving this folder run
  `python -m launch.convert set-encoder --hf_dir=NEW_PLACE` (penguin_jax finds it anyway)

PyTorch, with the Penguin-VL release (github tencent-ailab/Penguin-VL) on the path:

```python
from penguinvl.model import load_pretrained_model
tokenizer, model, processor, _ = load_pretrained_model("{out}", None, "penguinvl", device_map="cpu")
```

JAX: `model, params = penguin_jax.from_pretrained("{out}")`.
"""
