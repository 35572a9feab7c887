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
from typing import Optional

import jax.numpy as jnp

from data_pipelines.chat import CHAT_TEMPLATE
from data_pipelines.tokenizer import save_hf
from penguin_jax import hf, preprocessor, registry
from penguin_jax.inference import from_workdir
from penguin_jax.model_config import ENCODER_DIRNAME

log = logging.getLogger(__name__)


def export_run(workdir: str, out: str, *, step: Optional[int] = None, dtype="bfloat16",
               keep_distill_head: bool = False, teacher: Optional[str] = None,
               encoder_ref: Optional[str] = None, max_shard_bytes: int = 5 * 1024 ** 3):
  """The run's parameters (checkpoint `step`, default the latest), config and tokenizer ->
  an HF folder in `out`; -> (model, params). `teacher`: with `keep_distill_head`, the
  release's `vision_encoder_teacher` (default: the run's `init.teacher` folder)."""
  dtype = jnp.dtype(dtype)
  run = from_workdir(workdir, step, dtype, keep_distill_head=keep_distill_head)
  cfg, tok, params, vcfg = run.run_config, run.tokenizer, run.params, run.model.cfg
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
  with open(os.path.join(out, "README.md"), "w") as f:
    f.write(README.format(stage=cfg.stage, variant=cfg.variant, step=run.step,
                          workdir=os.path.abspath(run.workdir), dtype=dtype.name,
                          head="kept" if has_head and keep_distill_head else "none",
                          out=os.path.abspath(out)))
  return model, params


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
