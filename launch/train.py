"""Train Penguin-VL: one command for the four stages, laptop to pod slice.

  python -m launch.train --config=configs/stage1.py:tiny --workdir=/tmp/stage1
  python -m launch.train --config=configs/stage1.py:tiny --workdir=/tmp/stage1 --config.total_steps=30

Resuming from WORKDIR's latest checkpoint always wins over initialisation. Multi-host:
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I` (or nothing on a TPU
pod slice, where jax.distributed finds its peers). Output: a console line every
`log_every` steps, WORKDIR/metrics.jsonl, checkpoints in WORKDIR/checkpoints.
"""
from __future__ import annotations

import contextlib
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
  if FLAGS.config.jax_cache_dir:   # compiled programs kept: a restart loads, not compiles
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(FLAGS.config.jax_cache_dir))
  if FLAGS.coordinator_address:
    if jax.config.jax_platforms in (None, "", "cpu") and FLAGS.local_device_count:
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  elif os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
    jax.distributed.initialize()
  return jax


def run_tokenizer(cfg, workdir: str):
  """The tokenizer a run trains with: the demo corpus's SentencePiece model (built by
  `prepare_data`), else the Qwen3 tokenizer of `data.tokenizer` (offline when empty)."""
  from data_pipelines.tokenizer import Qwen3Tokenizer, SentencePieceTokenizer
  d = cfg.data
  if d.demo:
    spm = os.path.join(_demo_root(cfg, workdir), "spm.model")
    if not os.path.isfile(spm):
      raise FileNotFoundError(f"{spm}: the demo tokenizer of this run is missing")
    return SentencePieceTokenizer(spm)
  return Qwen3Tokenizer.load(d.tokenizer or None)


def sample_config(cfg):
  """The per-sample settings (`SampleConfig`) of a run's `config.data`."""
  from data_pipelines import sample as sample_lib
  d = cfg.data
  return sample_lib.SampleConfig(image_merge_size=d.image_merge_size,
                                 video_merge_size=d.video_merge_size, min_tokens=d.min_tokens,
                                 max_tokens=d.max_tokens, fps=d.fps, max_frames=d.max_frames,
                                 max_length=d.seq_len, image_mean=tuple(d.image_mean),
                                 image_std=tuple(d.image_std), multi_image=d.multi_image)


def _demo_root(cfg, workdir: str) -> str:
  """The demo corpus's folder: data.demo_dir, else WORKDIR/demo_data (a local WORKDIR:
  its TFDS dataset and the tokenizer are local files)."""
  from penguin_jax.train.workdir import is_remote
  if cfg.data.demo_dir:
    return cfg.data.demo_dir
  if is_remote(workdir):
    raise ValueError(f"data.demo with a remote workdir ({workdir}): set "
                     "--config.data.demo_dir to a local (or shared) folder for the corpus")
  return os.path.join(workdir, "demo_data")


# The demo corpus's splits (data_pipelines/demo_data.py): the corpus, and its text alone.
DEMO_SPLITS = ("train", "val", "train_text", "val_text")
DEMO_TFDS = "penguin_vl/demo"     # the demo corpus as a TFDS dataset, in DEMO_ROOT/tfds


def prepare_data(cfg, workdir: str):
  """-> (the training data: a TFDS split or ArrayRecord paths, tokenizer, SampleConfig).
  data.demo: generates the demo corpus, trains a small SentencePiece tokenizer on it and
  builds it as the TFDS dataset `penguin_vl/demo` (once, process 0)."""
  import jax
  from jax.experimental import multihost_utils
  from data_pipelines import pipeline
  from data_pipelines.images import read_preprocessor_config
  d = cfg.data
  if d.preprocessor_config:
    norm = read_preprocessor_config(d.preprocessor_config)
    if norm is None:
      raise FileNotFoundError(f"config.data.preprocessor_config: no preprocessor_config.json "
                              f"at {d.preprocessor_config}")
    d.image_mean, d.image_std = norm   # recorded in the run's config (its checkpoints)
    log.info("image normalisation from %s: mean %s, std %s", d.preprocessor_config, *norm)
  scfg = sample_config(cfg)
  if d.demo and d.tfds_name:
    raise ValueError(f"config.data.tfds_name={d.tfds_name} and data.demo are both set: add "
                     "--config.data.demo=False to train on the dataset")
  if d.demo:
    if jax.process_index() == 0:
      _build_demo(cfg, workdir, scfg)
    multihost_utils.sync_global_devices("demo data")
  if d.demo or d.tfds_name:
    return data_split(cfg, workdir, d.split), run_tokenizer(cfg, workdir), scfg
  if not d.train_files:
    raise ValueError("no training data: build the release's JSONL as a TFDS dataset (tfds build "
                     "data_pipelines/tfds_penguin.py --manual_dir=DATA --data_dir=DIR) and set "
                     "config.data.tfds_name=penguin_vl/release and data.tfds_data_dir=DIR; or "
                     "list plain ArrayRecord shards in data.train_files; or set data.demo=True")
  missing = [f for f in d.train_files if not os.path.isfile(f)]
  if missing:
    raise FileNotFoundError(f"config.data.train_files: {len(missing)} of "
                            f"{len(d.train_files)} files not found, e.g. {missing[0]}")
  pipeline.RecordSource(d.train_files)   # each opens and holds records, or one line now
  return list(d.train_files), run_tokenizer(cfg, workdir), scfg


def _build_demo(cfg, workdir: str, scfg):
  """The demo corpus (JSONL + media in DEMO_ROOT/raw), its tokenizer (DEMO_ROOT/spm.model)
  and its TFDS dataset (DEMO_ROOT/tfds): each made once."""
  from data_pipelines import demo_data, tfds_penguin
  from data_pipelines.tokenizer import SentencePieceTokenizer
  d, root = cfg.data, _demo_root(cfg, workdir)
  raw, spm = os.path.join(root, "raw"), os.path.join(root, "spm")
  if not os.path.isfile(spm + ".model"):
    log.info("building the demo corpus in %s (%d samples)", root, d.demo_samples)
    demo_data.generate(raw, d.demo_samples, d.demo_val_samples, seed=0)
    with open(os.path.join(raw, "train.jsonl")) as f:
      texts = [t["value"] for l in f for t in json.loads(l)["conversations"]]
    SentencePieceTokenizer.train(texts * 4, spm + ".tmp", vocab_size=1024)
    os.replace(spm + ".tmp.model", spm + ".model")   # the corpus is complete
  config = tfds_penguin.PenguinConfig.of("demo", scfg, tokenizer=spm + ".model",
                                        splits={s: f"{s}.jsonl" for s in DEMO_SPLITS})
  tfds_penguin.prepare(raw, os.path.join(root, "tfds"), config)   # a no-op once built


def data_split(cfg, workdir: str, split: str):
  """A split of the run's TFDS dataset (`tfds_penguin.Split`): data.tfds_name, or the
  demo corpus's (with `data.demo_text_only`, the text without the media)."""
  from data_pipelines import tfds_penguin
  d = cfg.data
  if d.demo:
    split += "_text" if d.demo_text_only else ""
    return tfds_penguin.Split(DEMO_TFDS, split, os.path.join(_demo_root(cfg, workdir), "tfds"))
  return tfds_penguin.Split(d.tfds_name, split, d.tfds_data_dir)


def data_name(data) -> str:
  """A run's data for a log line: a TFDS split, or its ArrayRecord files."""
  if isinstance(data, (list, tuple)):
    return ", ".join(os.path.basename(p) for p in data)
  return repr(data)


def eval_data(cfg, workdir: str):
  """The held-out data of `config.eval`: eval.files (plain ArrayRecord shards), else the
  split eval.split of the run's TFDS dataset (the demo corpus's validation split)."""
  if cfg.eval.files:
    missing = [f for f in cfg.eval.files if not os.path.isfile(f)]
    if missing:
      raise FileNotFoundError(f"config.eval.files: {missing[0]} not found")
    return list(cfg.eval.files)
  if not (cfg.data.demo or cfg.data.tfds_name):
    raise ValueError("config.eval.every is set but there is no held-out data: set "
                     "config.eval.split (a split of data.tfds_name) or eval.files")
  return data_split(cfg, workdir, cfg.eval.split)


def build_program(cfg, image_token_id=None):
  """The training program on this process's devices (`launch.aot` compiles the same
  builder's program for other devices; tests check the two lower identically)."""
  from penguin_jax.sharding import make_mesh
  from penguin_jax.train import program as program_lib
  return program_lib.build(cfg, make_mesh(**cfg.mesh.to_dict()), image_token_id=image_token_id)


def main(argv):
  del argv
  t_start = time.time()
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
  for noisy in ("absl", "jax._src", "orbax", "grain"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  # A failed checkpoint write is one line from checkpoint.Saver; orbax's threads would log
  # its traceback several times over (through absl, and asyncio's unretrieved tasks).
  logging.getLogger("absl").addFilter(
      lambda r: not (r.levelno >= logging.ERROR and f"{os.sep}orbax{os.sep}" in r.pathname))
  logging.getLogger("asyncio").setLevel(logging.CRITICAL)
  jax = _setup_jax()
  from data_pipelines import pipeline
  from data_pipelines.feed import DataFeed
  from penguin_jax.train import checkpoint as ckpt
  from penguin_jax.train import workdir as workdir_lib
  from penguin_jax.train.metrics import MetricsWriter, Profiler

  cfg, workdir = FLAGS.config, FLAGS.workdir
  workdir_lib.make(workdir)                   # a local path or gs://... (workdir.py)
  if jax.process_index() == 0:
    workdir_lib.lock(workdir)
  log.info("stage %s:%s, %d process(es), %d device(s)", cfg.stage, cfg.variant,
           jax.process_count(), jax.device_count())
  data, tokenizer, scfg = prepare_data(cfg, workdir)
  if tokenizer.vocab_size > cfg.model.vocab_size:
    raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens, config.model.vocab_size "
                     f"is {cfg.model.vocab_size}")
  program = build_program(cfg, tokenizer.image_token_id)
  counts = program.param_counts()
  log.info("parameters: %s (trainable: %s); %d micro-batch(es) of %d rows per step",
           f"{sum(v for k, v in counts.items() if k not in ('llm_body', 'teacher')):,}",
           ", ".join(program.trainable), program.grad_accum,
           cfg.data.global_batch // program.grad_accum)
  log.info("training data: %s", data_name(data))
  feed = DataFeed(data, tokenizer, scfg, cfg, program.abstract_batch)
  rng = jax.random.PRNGKey(cfg.seed)
  mgr, state, step, teacher_params = _restore_or_initialise(cfg, program, feed, rng, workdir)
  saver = ckpt.Saver(mgr, log)
  t = time.time()
  train_step = program.lower().compile()      # once, before the loop: no step holds it
  log.info("train step compiled in %.1f s", time.time() - t)
  writer = MetricsWriter(workdir, program, process_index=jax.process_index(),
                         process_count=jax.process_count(), device_count=jax.device_count(),
                         device_kind=jax.devices()[0].device_kind, t_start=t_start,
                         skipped=pipeline.SKIPPED)
  evaluate = _evaluator(cfg, program, workdir, tokenizer, scfg) if cfg.eval.every else None
  profiler, sigterm = Profiler(cfg.profile, workdir), _Sigterm()
  nonfinite = _NonFinite(cfg, int(jax.device_get(state.skipped_total)))
  try:
    with program.context():
      while step < cfg.total_steps and not sigterm.received:
        t = time.time()
        got = _next_batch(feed, sigterm, cfg, step, saver)
        if got is None:                         # SIGTERM inside the pipeline
          break
        batch, local = got
        writer.wait(time.time() - t)
        profiler.before(step)
        with jax.transfer_guard("disallow"):    # no implicit host <-> device copy
          state, metrics = train_step(state, batch, teacher_params)
        step += 1
        profiler.after(step, metrics)
        writer.count(local)
        saver.poll()                            # a failed write is reported at once
        log_now = step % cfg.log_every == 0 or step == cfg.total_steps
        save_now = step % cfg.checkpoint_every == 0 and step < cfg.total_steps
        if log_now or save_now:                 # the only device -> host reads
          m = jax.device_get(metrics)
          nonfinite.check(step, m, saver)
          if log_now:
            writer.write(step, m, {k: float(s(step)) for k, s in program.schedules.items()})
        if evaluate is not None and step % cfg.eval.every == 0:
          t = time.time()
          writer.write_eval(step, evaluate(state.params, teacher_params, step))
          writer.wait(time.time() - t)
        if save_now:
          t = time.time()
          saver.save(step, state, feed.get_state(), cfg.to_dict(), teacher_params)
          writer.wait(time.time() - t)
          if saver.failures_in_a_row >= cfg.checkpoint_failures_before_stop:
            raise Stop(4, f"{saver.failures_in_a_row} checkpoint writes failed in a row; the "
                       f"latest checkpoint on disk is step {saver.latest_on_disk()}")
    return _final_save(saver, step, state, feed, cfg, teacher_params, sigterm.received)
  except Stop as e:
    saver.finish()
    log.error("stopping: %s", e.args[1])
    return e.args[0]
  finally:
    profiler.close()
    saver.close()
    writer.close()


def _evaluator(cfg, program, workdir, tokenizer, scfg):
  """-> evaluate(params, teacher_params, step) -> {metric: value}: the held-out loss and
  per-token accuracy of `config.eval` over the first `eval.batches` batches of its
  shards, read by a fresh pipeline each time (the same batches every time; the training
  data's order and state are untouched); see `metrics.eval_summary`."""
  import jax
  from data_pipelines.feed import DataFeed
  from penguin_jax.train.metrics import eval_summary
  data = eval_data(cfg, workdir)
  ecfg = cfg.copy_and_resolve_references()
  ecfg.data.workers = 0                        # a few batches: no worker processes
  log.info("held-out loss every %d steps over %d batches of %s", cfg.eval.every,
           cfg.eval.batches, data_name(data))

  def evaluate(params, teacher_params, step):
    feed = DataFeed(data, tokenizer, scfg, ecfg, program.abstract_batch)
    total = None
    for _ in range(cfg.eval.batches):
      m = program.eval_step(params, feed.next()[0], teacher_params, step)
      total = m if total is None else jax.tree.map(lambda a, b: a + b, total, m)
    return eval_summary(jax.device_get(total), cfg.eval.batches)
  return evaluate


class Stop(Exception):
  """Stop(exit code, reason): the run cannot go on (3: non-finite steps, 4: checkpoint
  writes fail, 5: the data pipeline failed); main logs the reason in one line."""


def _next_batch(feed, sigterm, cfg, step, saver):
  """-> (global batch, local rows), or None when SIGTERM came while the pipeline was busy
  (the batch begun is rewound, to be read again whole after a resume)."""
  from data_pipelines import pipeline
  before = feed.position()                      # taken where SIGTERM cannot interrupt
  try:
    with sigterm.interruptible():               # the pipeline may be busy for long
      return feed.next(poison=step + 1 in tuple(cfg.debug_nan_steps))
  except Preempted:
    feed.rewind(before)
    return None
  except (pipeline.NoProgress, KeyboardInterrupt):
    raise
  except Exception as e:  # a data worker process died, a read failed for good
    from penguin_jax.train.checkpoint import one_line
    saver.finish()
    raise Stop(5, f"the data pipeline failed after step {step} ({one_line(e)}); the latest "
               f"checkpoint on disk is step {saver.latest_on_disk()}: run again to resume "
               "from it") from None


class Preempted(Exception):
  """SIGTERM while the data pipeline was busy."""


class _Sigterm:
  """SIGTERM (a preemption) is honoured at any point: between steps it ends the loop
  after the step; inside `interruptible()` (the data pipeline, which can be busy for
  long, e.g. skipping samples) it raises `Preempted` at once."""

  def __init__(self):
    self.received, self._inside = False, False
    signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    self.received = True
    if self._inside:
      self._inside = False
      raise Preempted

  @contextlib.contextmanager
  def interruptible(self):
    self._inside = True
    try:
      yield
    finally:
      self._inside = False


class _NonFinite:
  """Updates skipped for a non-finite loss or gradient: reported, and the run stopped
  after `max_nonfinite_in_a_row` in a row. The counters live in the train state (no
  per-step host read); `check` sees them on log and checkpoint steps."""

  def __init__(self, cfg, seen: int):
    self.limit, self.seen = cfg.max_nonfinite_in_a_row, seen

  def check(self, step, m, saver):
    new, self.seen = int(m["skipped_total"]) - self.seen, int(m["skipped_total"])
    if m["skipped"]:
      log.warning("step %d: non-finite loss or gradient (loss=%s, grad_norm=%s); update "
                  "skipped (%d in a row, %d since the last check)", step, m["loss"],
                  m["grad_norm"], m["nonfinite_in_a_row"], new)
    elif new:
      log.warning("steps up to %d: %d update(s) skipped for a non-finite loss or gradient",
                  step, new)
    if m["nonfinite_in_a_row"] >= self.limit:
      saver.finish()
      raise Stop(3, f"{m['nonfinite_in_a_row']} non-finite steps in a row; the last good "
                 f"checkpoint is step {saver.latest_on_disk()} in {saver.mgr.directory}")


def _final_save(saver, step, state, feed, cfg, teacher_params, preempted) -> int:
  """The last checkpoint (end of training or SIGTERM); 0 only once it is on disk."""
  if saver.latest_on_disk() != step:
    saver.save(step, state, feed.get_state(), cfg.to_dict(), teacher_params)
  saver.finish()
  if saver.latest_on_disk() != step:
    log.error("the final checkpoint (step %d) was not written; the latest checkpoint on disk "
              "is step %s", step, saver.latest_on_disk())
    return 4
  if preempted:
    log.warning("SIGTERM: saved step %d, exiting", step)
  else:
    log.info("done at step %d (checkpoint on disk)", step)
  return 0


def _restore_or_initialise(cfg, program, feed, rng, workdir):
  """-> (checkpoint manager, state, step, teacher params or None): the workdir's newest
  intact checkpoint (resuming always wins; the teacher comes back with it; checkpoints
  that do not restore are moved aside), else a new state initialised from init_from,
  else HF checkpoints, else random, and the teacher from `init.teacher`."""
  from penguin_jax.train import checkpoint as ckpt
  mgr, restored = ckpt.restore_intact(lambda: ckpt.manager(workdir, cfg.keep_checkpoints),
                                      program.abstract_state, program.abstract_teacher,
                                      log=log.error)
  if restored is not None:
    step, state, data_state, teacher = restored
    feed.set_state(data_state)
    log.info("resumed from step %d (%s)%s", step, mgr.directory,
             ", teacher included" if teacher is not None else "")
    if program.teacher is not None and teacher is None:   # a checkpoint without one
      teacher = _load_teacher(cfg, program, workdir, rng)
    return mgr, state, step, teacher
  state = program.new_state(_initialise(cfg, program.init_params(rng), program.model_config))
  return mgr, state, 0, _load_teacher(cfg, program, workdir, rng)


def _load_teacher(cfg, program, workdir, rng):
  """Stage 1a's frozen teacher from `config.init.teacher` (configs/common.py): an HF
  folder, or "random": one written once to WORKDIR/random_teacher by process 0 and read
  back through the same import path."""
  import shutil
  import tempfile
  import jax
  from jax.experimental import multihost_utils
  from penguin_jax.train import workdir as workdir_lib
  if program.teacher is None:
    return None
  path = cfg.init.teacher
  if not path:
    raise ValueError("config.init.teacher is empty: stage 1a distils from VL3-SigLIP-NaViT; "
                     "download it (huggingface-cli download DAMO-NLP-SG/VL3-SigLIP-NaViT "
                     "--local-dir DIR) and pass --config.init.teacher=DIR ('random' for a "
                     "smoke test)")
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
  teacher = program.load_teacher(path)
  log.info("teacher VL3-SigLIP-NaViT from %s: %s parameters, frozen", path,
           f"{program.param_counts()['teacher']:,}")
  return teacher


def _initialise(cfg, params, vcfg):
  """Parameters for a new run: init_from (an earlier stage), else the HF checkpoints the
  config names, else the random ones given."""
  import jax
  import numpy as np
  from penguin_jax import hf
  from penguin_jax.train import checkpoint as ckpt
  from penguin_jax.train.program import put_global
  params, init = dict(params), cfg.init

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


def _main(argv):
  try:
    sys.exit(main(argv))
  except (FileNotFoundError, ValueError, KeyError) as e:  # configuration / input problems
    logging.getLogger("train").error("error: %s", e.args[0] if e.args else e)
    sys.exit(2)


def _help() -> str:
  """--help: what to run, the stages and variants, every config field with its default
  (tiny stage 1's; stages and variants change some), and the flags."""
  from configs import common, stage1
  from ml_collections import config_dict
  stages = sorted(f[:-3] for f in os.listdir(os.path.join(os.path.dirname(__file__), "..", "configs"))
                  if f.startswith("stage") and f.endswith(".py"))
  fields = stage1.get_config("tiny")
  flat = []
  def walk(d, prefix):
    for k, v in d.items():
      if isinstance(v, config_dict.ConfigDict):
        walk(v, f"{prefix}{k}.")
      else:
        flat.append(f"  --config.{prefix}{k}={v!r}")
  walk(fields, "")
  return "\n".join([
      __doc__.strip(), "",
      f"Stages: --config=configs/STAGE.py:VARIANT, STAGE in {', '.join(stages)}; "
      f"VARIANT in {', '.join(common.VARIANTS)} (stage0, the demo's text-only LLM: tiny only).",
      "",
      "Config fields (override any with --config.FIELD=VALUE; defaults of stage1:tiny):",
      *flat, "", "Flags:", FLAGS.main_module_help()])


def _parse_flags(argv):
  """absl's parsing, with a misspelt or mistyped --config.FIELD, a missing config file or
  an unknown variant as one line (exit 2) instead of a traceback."""
  import re
  try:
    rest = FLAGS(argv)
    FLAGS.config.keys()  # the config file loads lazily: make its errors surface here
    return rest
  except (flags.Error, AttributeError, KeyError, OSError, ValueError) as e:
    text = str(e.args[0] if e.args else e)
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    hint = re.search(r'Did you mean "([^"]+)" instead of "([^"]+)"', text)
    if hint:
      text = f"no config field {hint.group(2)!r} (did you mean {hint.group(1)!r}?)"
    elif "Failed loading config file" in text:
      text = f"cannot load the config file: {lines[-1]}"
    elif "Traceback" in text:           # get_config(VARIANT) raised: its own message
      text = lines[-1]
    print(f"error: {' '.join(text.split())}; `python -m launch.train --help` lists the stages, "
          "variants and config fields", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  if any(a in ("-h", "--help", "--helpshort") for a in sys.argv[1:]):
    print(_help())
    sys.exit(0)
  app.run(_main, flags_parser=_parse_flags)
