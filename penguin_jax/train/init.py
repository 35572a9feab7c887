"""Where a run's parameters come from: its own newest checkpoint (a resume always wins),
else `config.init` (an earlier stage's run, HF checkpoints of the paper's starting points),
else random; and stage 1a's frozen teacher.

`config.init` (configs/common.py): `init_from` (an earlier stage's workdir: its modules
`init.modules`), or `encoder_from_qwen3` (a text-only Qwen3 HF folder, the paper's
encoder) and `llm` (the Qwen3 decoder's HF folder); `teacher` (VL3-SigLIP-NaViT's HF
folder, or "random": one of the config's size written once into the workdir).
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile

import jax
import numpy as np
from jax.experimental import multihost_utils

from penguin_jax import hf
from penguin_jax.train import checkpoint as ckpt, workdir as workdir_lib
from penguin_jax.train.program import TrainProgram, put_global

log = logging.getLogger("train")
TEACHER_HINT = ("stage 1a distils from VL3-SigLIP-NaViT: download it (hf download "
                "DAMO-NLP-SG/VL3-SigLIP-NaViT --local-dir DIR) and pass --config.init.teacher=DIR "
                "('random' for a smoke test)")


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
    feed.set_state(data_state)
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


def initial_params(cfg, program: TrainProgram, params: dict) -> dict:
  """Parameters for a new run: `init_from` (an earlier stage), else the HF checkpoints the
  config names, else the random `params` given (already on their shards)."""
  params, init, vcfg = dict(params), cfg.init, program.model_config

  def put(name, new):
    old = params[name]
    if jax.tree.map(lambda x: x.shape, old) != jax.tree.map(lambda x: x.shape, new):
      raise ValueError(f"init: module {name} shapes differ from this config's model")
    params[name] = put_global(jax.tree.map(lambda o, n: np.asarray(n, o.dtype), old, new),
                              jax.tree.map(lambda o: o.sharding, old))

  if init.init_from:
    loaded, step = ckpt.restore_params(init.init_from, list(init.modules))
    for name, v in loaded.items():
      put(name, v)
    log.info("initialised %s from %s (step %d)", ", ".join(loaded), init.init_from, step)
    return params
  if init.encoder_from_qwen3:
    _, enc = hf.encoder_from_qwen3(init.encoder_from_qwen3, scan_layers=vcfg.encoder.scan_layers)
    enc["patch_embedding"] = params["vision_encoder"]["patch_embedding"]
    put("vision_encoder", enc)
    log.info("encoder initialised from text-only Qwen3 %s", init.encoder_from_qwen3)
  if init.llm:
    _, llm = hf.from_pretrained(init.llm, scan_layers=vcfg.llm.scan_layers)
    put("llm", llm)
    log.info("LLM initialised from %s", init.llm)
  return params
