"""Train Penguin-VL: one command for the four stages, laptop to pod slice.

  python -m launch.train --config=configs/stage1.py:tiny --workdir=/tmp/stage1
  python -m launch.train --config=configs/stage1.py:tiny --workdir=/tmp/stage1 --config.total_steps=30

Resuming from WORKDIR's latest checkpoint always wins over initialisation. Multi-host:
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I` (or nothing on a TPU
pod slice, where jax.distributed finds its peers). Output: a console line every
`log_every` steps, WORKDIR/metrics.jsonl, checkpoints in WORKDIR/checkpoints.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import sys
import time

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "stage config, e.g. configs/stage1.py:tiny",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "where checkpoints and metrics go")
flags.DEFINE_string("coordinator_address", None, "multi-host: HOST:PORT of process 0")
flags.DEFINE_integer("num_processes", None, "multi-host: number of processes")
flags.DEFINE_integer("process_id", None, "multi-host: this process's id")
flags.DEFINE_integer("local_device_count", None,
                     "CPU only: devices per process (sets XLA's host device count)")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS
log = logging.getLogger("train")


def _setup_jax():
  if FLAGS.local_device_count:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={FLAGS.local_device_count}")
  import jax
  if FLAGS.coordinator_address:
    if jax.config.jax_platforms in (None, "", "cpu") and FLAGS.local_device_count:
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  elif os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
    jax.distributed.initialize()
  return jax


def prepare_data(cfg, workdir: str):
  """-> (ArrayRecord paths, tokenizer, SampleConfig). For `data.demo`, generates the demo
  corpus, trains a small SentencePiece tokenizer on it and builds it (once, process 0)."""
  import jax
  from jax.experimental import multihost_utils
  from data_pipelines import build as build_lib, demo_data, sample as sample_lib
  from data_pipelines.tokenizer import Qwen3Tokenizer, SentencePieceTokenizer
  d = cfg.data
  scfg = sample_lib.SampleConfig(image_merge_size=d.image_merge_size,
                                 video_merge_size=d.video_merge_size, min_tokens=d.min_tokens,
                                 max_tokens=d.max_tokens, fps=d.fps, max_frames=d.max_frames,
                                 max_length=d.seq_len)
  if not d.demo:
    if not d.train_files:
      raise ValueError("config.data.train_files is empty: build shards with "
                       "`python -m data_pipelines.build` and list them, or set data.demo=True")
    missing = [f for f in d.train_files if not os.path.isfile(f)]
    if missing:
      raise FileNotFoundError(f"config.data.train_files: {len(missing)} of "
                              f"{len(d.train_files)} files not found, e.g. {missing[0]}")
    return list(d.train_files), Qwen3Tokenizer.load(d.tokenizer or None), scfg
  root = d.demo_dir or os.path.join(workdir, "demo_data")
  done = os.path.join(root, "ready.json")
  if jax.process_index() == 0 and not os.path.isfile(done):
    log.info("building the demo corpus in %s (%d samples)", root, d.demo_samples)
    demo_data.generate(os.path.join(root, "raw"), d.demo_samples, 0, seed=0)
    with open(os.path.join(root, "raw", "train.jsonl")) as f:
      texts = [t["value"] for l in f for t in json.loads(l)["conversations"]]
    SentencePieceTokenizer.train(texts * 4, os.path.join(root, "spm"), vocab_size=1024)
    tok = SentencePieceTokenizer(os.path.join(root, "spm.model"))
    stats = build_lib.build(os.path.join(root, "raw", "train.jsonl"), os.path.join(root, "raw"),
                            os.path.join(root, "ar"), scfg, tok, log=log.info)
    with open(done, "w") as f:
      json.dump(stats, f)
  multihost_utils.sync_global_devices("demo data")
  with open(done) as f:
    stats = json.load(f)
  tok = SentencePieceTokenizer(os.path.join(root, "spm.model"))
  return [os.path.join(root, "ar", s) for s in stats["shards"]], tok, scfg


def model_config(cfg, tokenizer):
  import jax.numpy as jnp
  from penguin_jax.configs import EncoderConfig, Qwen3Config, VLMConfig
  from penguin_jax.teacher import TeacherConfig
  m = cfg.model
  rt = dict(dtype=jnp.dtype(m.dtype), param_dtype=jnp.float32, attention=m.attention,
            scan_layers=m.scan_layers, remat_policy=m.remat_policy)
  vocab = 151_936 if tokenizer.vocab_size > 100_000 else tokenizer.vocab_size
  vcfg = VLMConfig(llm=Qwen3Config(vocab_size=vocab, **m.llm.to_dict(), **rt),
                   encoder=EncoderConfig(**m.encoder.to_dict(), **rt),
                   image_token_index=tokenizer.image_token_id,
                   teacher_hidden_size=m.teacher.hidden_size if m.use_teacher else None)
  tcfg = TeacherConfig(**m.teacher.to_dict(), dtype=rt["dtype"]) if m.use_teacher else None
  return vcfg, tcfg


def main(argv):
  del argv
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
  for noisy in ("absl", "jax._src", "orbax", "grain"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  jax = _setup_jax()
  import jax.numpy as jnp
  import numpy as np
  from flax import linen as nn
  from jax.sharding import NamedSharding, PartitionSpec as PS
  from data_pipelines import pipeline as pipe
  from penguin_jax import hf
  from penguin_jax.sharding import LOGICAL_RULES, make_mesh, params_shardings
  from penguin_jax.teacher import ViTTeacher
  from penguin_jax.train import checkpoint as ckpt, flops as flops_lib
  from penguin_jax.train.optim import make_optimizer
  from penguin_jax.train.step import TrainState, make_train_step
  from penguin_jax.vlm import PenguinVL

  cfg, workdir = FLAGS.config, FLAGS.workdir
  os.makedirs(workdir, exist_ok=True)
  pid, nproc = jax.process_index(), jax.process_count()
  log.info("stage %s:%s, %d process(es), %d device(s)", cfg.stage, cfg.variant, nproc,
           jax.device_count())

  paths, tokenizer, scfg = prepare_data(cfg, workdir)
  vcfg, tcfg = model_config(cfg, tokenizer)
  model = PenguinVL(vcfg)
  mesh = make_mesh(**cfg.mesh.to_dict())
  dp = mesh.shape["data"] * mesh.shape["fsdp"]
  if cfg.data.global_batch % dp or cfg.data.global_batch % nproc:
    raise ValueError(f"config.data.global_batch={cfg.data.global_batch} must be a multiple of "
                     f"the data-parallel size {dp} (mesh data x fsdp) and of {nproc} processes; "
                     "change the batch or --config.mesh")
  n_shards = cfg.data.num_shards or nproc
  if n_shards % nproc or cfg.data.global_batch % n_shards:
    raise ValueError(f"config.data.num_shards={n_shards} must be a multiple of the {nproc} "
                     f"processes and divide global_batch={cfg.data.global_batch}")
  pcfg = pipe.PipelineConfig(seq_len=cfg.data.seq_len, max_patches=cfg.data.max_patches,
                             max_visual_tokens=cfg.data.max_visual_tokens,
                             batch_size=cfg.data.global_batch // n_shards,
                             packing=cfg.data.packing, num_packing_bins=cfg.data.packing_bins,
                             seed=cfg.seed, worker_count=cfg.data.workers)
  per = n_shards // nproc
  my_shards = list(range(pid * per, (pid + 1) * per))
  data_iters = [iter(pipe.make_dataset(paths, tokenizer, scfg, pcfg, s, n_shards))
                for s in my_shards]

  rng = jax.random.PRNGKey(cfg.seed)
  with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
    abstract = hf.abstract_params(model, boxed=True)
    p_shard = params_shardings(abstract, mesh)
    params = jax.jit(lambda r: hf.init_params(model, r), out_shardings=p_shard)(rng)
    modules = list(params)
    lr = {k: float(v) for k, v in cfg.optim.lr.items() if k in modules}
    trainable = [t for t in cfg.optim.trainable if t in modules]
    opt, schedules = make_optimizer(params, lr, cfg.total_steps, trainable=trainable,
                                    warmup_frac=cfg.optim.warmup_frac,
                                    weight_decay=cfg.optim.weight_decay,
                                    grad_clip=cfg.optim.grad_clip, grad_accum=cfg.optim.grad_accum)
    teacher = teacher_params = None
    if tcfg is not None:
      teacher = ViTTeacher(tcfg)
      args, _ = hf.init_inputs(vcfg.encoder)
      teacher_params = jax.jit(lambda r: nn.unbox(teacher.init(r, *args)["params"]))(
          jax.random.fold_in(rng, 7))  # frozen stand-in teacher (see teacher.py)

    mgr = ckpt.manager(workdir, cfg.keep_checkpoints)
    state = TrainState(jnp.zeros((), jnp.int32), params, None)
    state = dataclasses.replace(state, opt_state=jax.jit(opt.init)(params))
    abstract_state = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    restored = ckpt.restore(mgr, abstract_state)
    if restored is not None:
      start, state, data_state = restored
      if len(data_state["shards"]) != n_shards:
        raise ValueError(f"the checkpoint has {len(data_state['shards'])} data shards, this run "
                         f"{n_shards}: set config.data.num_shards={len(data_state['shards'])}")
      for it, s in zip(data_iters, my_shards):
        it.set_state(data_state["shards"][s])
      log.info("resumed from step %d (%s)", start, mgr.directory)
    else:
      start = 0
      state = _initialise(cfg, state, model, vcfg, hf, ckpt, log)
      state = dataclasses.replace(state, opt_state=jax.jit(opt.init)(state.params))

    loss_kw = dict(scope=cfg.loss.scope, chunk_size=cfg.loss.chunk_size,
                   max_label_tokens=cfg.loss.max_label_tokens or None)
    if teacher is not None:
      loss_kw.update(reconstruction_weight=cfg.loss.reconstruction_weight,
                     relation_scope=cfg.loss.relation_scope)
    step_fn = make_train_step(model, opt, teacher=teacher, **loss_kw)
    data_sh = NamedSharding(mesh, PS(("data", "fsdp")))
    state_sh = jax.tree.map(lambda x: x.sharding, state)
    train_step = jax.jit(step_fn, in_shardings=(state_sh, data_sh, None),
                         out_shardings=(state_sh, None), donate_argnums=0)

    counts = {k: sum(x.size for x in jax.tree.leaves(v)) for k, v in state.params.items()}
    counts["llm_body"] = counts.get("llm", 0) - vcfg.llm.vocab_size * vcfg.llm.hidden_size
    n_params = sum(v for k, v in counts.items() if k != "llm_body")
    log.info("parameters: %s (trainable: %s)", f"{n_params:,}", ", ".join(trainable))
    shapes = {"tokens": (cfg.data.global_batch, cfg.data.seq_len),
              "patches": (cfg.data.global_batch, cfg.data.max_patches),
              "visual": (cfg.data.global_batch, cfg.data.max_visual_tokens)}
    tparams = sum(x.size for x in jax.tree.leaves(teacher_params)) if teacher_params else 0
    model_flops = flops_lib.step_flops(counts, vcfg, shapes, set(trainable), tcfg, tparams,
                                       cfg.loss.max_label_tokens or None)
    peak = flops_lib.peak_flops_per_device() * jax.device_count()

    stop = {"signal": None}
    signal.signal(signal.SIGTERM, lambda s, f: stop.update(signal=s))
    metrics_file = open(os.path.join(workdir, "metrics.jsonl"), "a") if pid == 0 else None
    tb = None
    if pid == 0:
      from tensorboardX import SummaryWriter
      tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
    bad_in_a_row, t_last, step = 0, time.time(), start
    acc = {"tokens": 0, "visual": 0}
    try:
      while step < cfg.total_steps:
        parts = [next(it) for it in data_iters]
        local = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        if step + 1 in tuple(cfg.debug_nan_steps):
          local = {**local, "patches": local["patches"] * np.float32("nan")}
        batch = jax.make_array_from_process_local_data(data_sh, local) if nproc > 1 else \
            jax.device_put(local, data_sh)
        state, m = train_step(state, batch, teacher_params)
        step += 1
        acc["tokens"] += int((local["segment_ids"] > 0).sum()) * nproc
        acc["visual"] += int((local["visual_positions"] < cfg.data.seq_len).sum()) * nproc
        skipped = int(m["skipped"])
        if skipped:
          bad_in_a_row += 1
          log.warning("step %d: non-finite loss or gradient (loss=%s, grad_norm=%s); update "
                      "skipped (%d in a row)", step, float(m["loss"]), float(m["grad_norm"]),
                      bad_in_a_row)
          if bad_in_a_row >= cfg.max_nonfinite_in_a_row:
            log.error("stopping: %d non-finite steps in a row; the last good checkpoint is "
                      "step %s in %s", bad_in_a_row, mgr.latest_step(), mgr.directory)
            return 3
        else:
          bad_in_a_row = 0
        if step % cfg.log_every == 0 or step == cfg.total_steps:
          dt = time.time() - t_last
          t_last = time.time()
          rec = {"step": step, **{k: float(v) for k, v in m.items()
                                  if k not in ("label_tokens", "dropped_label_tokens", "skipped")},
                 "skipped": skipped, "dropped_label_tokens": int(m["dropped_label_tokens"]),
                 "lr": {k: float(s(step)) for k, s in schedules.items()},
                 "tokens_per_s": acc["tokens"] / dt, "visual_tokens_per_s": acc["visual"] / dt,
                 "step_time_s": dt / cfg.log_every}
          if peak:
            rec["mfu"] = model_flops * cfg.log_every / dt / peak
          acc = {"tokens": 0, "visual": 0}
          parts = " ".join(f"{k}={rec[k]:.4f}" for k in
                           ("lm_loss", "amplitude", "direction", "relation") if k in rec)
          log.info("step %d loss=%.4f %s lr=%s grad_norm=%.3f tokens/s=%.0f visual/s=%.0f "
                   "step_time=%.2fs%s", step, rec["loss"], parts,
                   ",".join(f"{v:.2e}" for v in rec["lr"].values()), rec["grad_norm"],
                   rec["tokens_per_s"], rec["visual_tokens_per_s"], rec["step_time_s"],
                   f" mfu={rec['mfu']:.3f}" if "mfu" in rec else "")
          if metrics_file:
            metrics_file.write(json.dumps(rec) + "\n")
            metrics_file.flush()
            for k, v in rec.items():
              if isinstance(v, dict):
                for kk, vv in v.items():
                  tb.add_scalar(f"{k}/{kk}", vv, step)
              elif k != "step":
                tb.add_scalar(k, v, step)
            tb.flush()
        if step % cfg.checkpoint_every == 0 or step == cfg.total_steps or stop["signal"]:
          shards = ckpt.gather_json([it.get_state() for it in data_iters])
          try:
            ckpt.save(mgr, step, state, {"shards": shards}, cfg.to_dict(), force=True)
          except Exception as e:  # orbax writes to a temporary folder: the last one stays
            log.error("checkpoint write at step %d failed (%s: %s); the previous checkpoint "
                      "(step %s) is intact", step, type(e).__name__, e, mgr.latest_step())
            if stop["signal"]:
              raise
        if stop["signal"]:
          log.warning("SIGTERM: saved step %d, exiting", step)
          break
    finally:
      mgr.wait_until_finished()
      mgr.close()
      if metrics_file:
        metrics_file.close()
        tb.close()
  log.info("done at step %d", step)
  return 0


def _initialise(cfg, state, model, vcfg, hf, ckpt, log):
  """Initialisation (only when not resuming): init_from, else HF checkpoints, else random."""
  import jax
  params = dict(state.params)
  init = cfg.init

  def put(name, new):
    old = params[name]
    shapes_old = jax.tree.map(lambda x: x.shape, old)
    shapes_new = jax.tree.map(lambda x: x.shape, new)
    if shapes_old != shapes_new:
      raise ValueError(f"init: module {name} shapes differ from this config's model")
    params[name] = jax.tree.map(lambda o, n: jax.device_put(n, o.sharding).astype(o.dtype), old, new)

  if init.init_from:
    loaded, step = ckpt.restore_params(init.init_from, list(init.modules))
    for name, v in loaded.items():
      put(name, v)
    log.info("initialised %s from %s (step %d)", ", ".join(loaded), init.init_from, step)
  else:
    if init.encoder_from_qwen3:
      _, enc = hf.encoder_from_qwen3(init.encoder_from_qwen3, scan_layers=vcfg.encoder.scan_layers)
      enc["patch_embedding"] = params["vision_encoder"]["patch_embedding"]
      put("vision_encoder", enc)
      log.info("encoder initialised from text-only Qwen3 %s", init.encoder_from_qwen3)
    if init.llm:
      _, llm = hf.from_pretrained(init.llm, scan_layers=vcfg.llm.scan_layers)
      put("llm", llm)
      log.info("LLM initialised from %s", init.llm)
  return dataclasses.replace(state, params=params)


def _main(argv):
  try:
    sys.exit(main(argv))
  except (FileNotFoundError, ValueError, KeyError) as e:  # configuration / input problems
    logging.getLogger("train").error("error: %s", e.args[0] if e.args else e)
    sys.exit(2)


if __name__ == "__main__":
  app.run(_main)
