"""The training run, top to bottom: set-up, the loop, and how it stops.

`run(cfg, workdir)`: the data (`data.prepare`), the program (`program.build`, the step
`launch.aot` compiles too), the state (`init.restore_or_initialise`: a resume wins), the
step compiled once, then the loop: next batch, step, and on log / checkpoint / eval steps
the only device-to-host reads. It returns the process's exit code:

  0  done, or SIGTERM (a preemption): the current step saved
  3  `max_nonfinite_in_a_row` steps with a non-finite loss or gradient
  4  `checkpoint_failures_before_stop` checkpoint writes failed in a row, or the last one
  5  the data pipeline failed (a worker process died, a read failed for good)
  6  another process of a multi-process run is lost (`runtime.PeerWatch`; the process
     exits from its watch thread)

Each stop is one line naming the step on disk to resume from (docs/faults.md).
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import time

import jax
from jax.experimental import multihost_utils

from data_pipelines import pipeline
from penguin_jax.train import checkpoint as ckpt, data as data_lib, init as init_lib
from penguin_jax.train import program as program_lib, remat as remat_lib, runtime
from penguin_jax.train import workdir as workdir_lib
from penguin_jax.train.evaluate import make_evaluator
from penguin_jax.train.feed import DataFeed
from penguin_jax.train.metrics import MetricsWriter, Profiler

log = logging.getLogger("train")


class Stop(Exception):
  """Stop(exit code, reason): the run cannot go on; `run` logs the reason in one line."""


class Preempted(Exception):
  """SIGTERM while the data pipeline was busy."""


def missing_inputs(cfg) -> list[str]:
  """What a real-size run needs and its config does not name: the data, stage 1a's
  teacher, and the weights of a module that stays frozen (a frozen random LLM teaches the
  encoder nothing). Tiny configs make their own."""
  if cfg.stage == "finetune" and not cfg.init.init_from:
    return ["the model to fine-tune (--config.init.init_from=FOLDER: a released Penguin-VL, "
            "e.g. hf download tencent/Penguin-VL-2B --local-dir FOLDER, or an export or run)"]
  if cfg.data.demo:
    return []
  out, init = [], cfg.init
  if not cfg.data.tfds_name:
    out.append("training data (--config.data.tfds_name=penguin_vl/NAME "
               "--config.data.tfds_data_dir=DIR; python -m data_pipelines.tfds_build builds it)")
  if cfg.model.use_teacher and not init.teacher:
    out.append("the teacher (--config.init.teacher=DIR; hf download DAMO-NLP-SG/VL3-SigLIP-NaViT "
               "--local-dir DIR)")
  if "llm" not in cfg.optim.trainable and not (init.llm or init.init_from):
    out.append("the LLM, frozen in this stage (--config.init.llm=DIR, e.g. hf download "
               "Qwen/Qwen3-1.7B --local-dir DIR; or --config.init.init_from=RUN)")
  return out


def run(cfg, workdir: str, t_start: float, explicit=(), benchmarks=None) -> int:
  """Train `cfg` in `workdir` (local or gs://); -> the exit code (module docstring).
  `explicit`: the config fields the command line set (a checkpoint's model sizes win over
  the others; `init.resolve`). `benchmarks`: for `eval.benchmarks`, the evaluator's maker
  (`penguin_jax.benchmark.training_evaluator`, handed in by launch.train, as big_vision
  hands evaluators to its trainer: training does not import the answering side)."""
  missing = missing_inputs(cfg)
  if missing:
    raise ValueError(f"{cfg.stage}:{cfg.variant} needs " + "; ".join(missing) +
                     f". On a laptop, the tiny variant makes its own: python -m launch.train "
                     f"--config=configs/{cfg.stage}.py:tiny --workdir=W")
  workdir_lib.make(workdir)                   # a local path or gs://... (workdir.py)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  workdir_lib.make(ckpt_dir, f"the checkpoint folder {ckpt_dir}")
  if jax.process_index() == 0:
    workdir_lib.lock(workdir)
  runtime.compilation_cache(cfg, workdir)
  mesh = runtime.mesh(cfg)                    # before any work: a mesh that does not fit
  savers, watch = [], None                    # the saver, once made (for PeerWatch's line)
  if jax.process_count() > 1:
    watch = runtime.PeerWatch(runtime.lost_process_timeout(cfg), lambda line: log.error(
        "stopping: %s; the latest checkpoint on disk is step %s: run again to resume from it",
        line, savers[0].latest_on_disk() if savers else "none"))
  log.info("stage %s:%s, %d process(es), %d device(s)", cfg.stage, cfg.variant,
           jax.process_count(), jax.device_count())
  init_lib.resolve(cfg, explicit)             # sizes, tokenizer, normalisation of init_from
  source, tokenizer, _ = data_lib.prepare(cfg, workdir)
  if tokenizer.vocab_size > cfg.model.vocab_size:
    raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens, config.model.vocab_size "
                     f"is {cfg.model.vocab_size}")
  build = lambda c: program_lib.build(c, mesh, image_token_id=tokenizer.image_token_id)
  cfg = remat_lib.resolve(cfg, mesh, build, log.info)   # remat_policy "auto": compile, choose
  program = build(cfg)
  counts = program.param_counts()
  adapted = ", ".join(program.lora.adapted())
  log.info("parameters: %s (trainable: %s%s); %d micro-batch(es) of %d rows per step",
           f"{counts['total']:,}", ", ".join(program.trainable),
           f"; LoRA adapters in {adapted}, its base frozen" if adapted else "",
           program.grad_accum, cfg.data.global_batch // program.grad_accum)
  log.info("trainable parameters: %s (%s frozen)", f"{counts['trainable']:,}",
           f"{counts['frozen']:,}")
  feed = DataFeed(source, tokenizer, cfg, program.abstract_batch)
  log.info("training data: %s", feed.describe())
  # benchmark files read now: a missing one stops the run before any work
  if cfg.eval.every and cfg.eval.benchmarks and benchmarks is None:
    raise ValueError("eval.benchmarks needs loop.run(benchmarks=benchmark.training_evaluator)")
  bench = benchmarks(
      cfg, program.model, tokenizer, data_lib.prompt_sample_config(cfg), program.mesh,
      log=log.info) if cfg.eval.every and cfg.eval.benchmarks else None
  rng = jax.random.PRNGKey(cfg.seed)
  mgr, state, step, teacher = init_lib.restore_or_initialise(cfg, program, feed, rng, workdir)
  saver = ckpt.Saver(mgr, log)
  savers.append(saver)
  t = time.time()
  train_step = program.lower().compile()      # once, before the loop: no step holds it
  log.info("train step compiled in %.1f s", time.time() - t)
  writer = MetricsWriter(workdir, program, process_index=jax.process_index(),
                         process_count=jax.process_count(), device_count=jax.device_count(),
                         device_kind=jax.devices()[0].device_kind, t_start=t_start,
                         totals=feed.totals)
  evaluate = make_evaluator(cfg, program, workdir, tokenizer) \
      if cfg.eval.every and cfg.eval.batches else None
  profiler, sigterm = Profiler(cfg.profile, workdir), Sigterm(jax.process_count())
  nonfinite = NonFinite(cfg, int(jax.device_get(state.skipped_total)))
  save = lambda s: saver.save(s, state, feed.get_state(), cfg.to_dict(), teacher)
  try:
    with program.context():
      while step < cfg.total_steps and not sigterm.received:
        t = time.time()
        got = next_batch(feed, sigterm, cfg, step, saver)
        if got is None:                         # SIGTERM inside the pipeline
          break
        batch, local = got
        writer.wait(time.time() - t)
        profiler.before(step)
        with jax.transfer_guard("disallow"):    # no implicit host <-> device copy
          state, metrics = train_step(state, batch, teacher)
        step += 1
        profiler.after(step, metrics)
        writer.count(local)
        saver.poll()                            # a failed write is reported at once
        _stop_after_failed_writes(saver, cfg)
        log_now = step % cfg.log_every == 0 or step == cfg.total_steps
        save_now = step % cfg.checkpoint_every == 0 and step < cfg.total_steps
        if log_now or save_now:                 # the only device -> host reads
          m = jax.device_get(metrics)
          nonfinite.check(step, m, saver)
          if log_now:
            writer.write(step, m, {k: float(s(step)) for k, s in program.schedules.items()})
        if (evaluate or bench) and step % cfg.eval.every == 0:
          t = time.time()
          writer.write_eval(step, {**(evaluate(state.params, teacher, step) if evaluate else {}),
                                   **(bench(state.params) if bench else {})})
          writer.wait(time.time() - t)
        if save_now:
          t = time.time()
          save(step)
          writer.wait(time.time() - t)
          _stop_after_failed_writes(saver, cfg)
        sigterm.after_step(step)
    if saver.latest_on_disk() != step:
      save(step)
    return final(saver, step, sigterm.received)
  except Stop as e:
    saver.finish()
    log.error("stopping: %s", e.args[1])
    return e.args[0]
  except jax.errors.JaxRuntimeError as e:
    if watch is None:
      raise
    watch.after_failure(e)      # a lost process: one line, exit 6 (never returns)
  finally:
    profiler.close()
    saver.close()
    writer.close()


def _stop_after_failed_writes(saver: ckpt.Saver, cfg):
  """`checkpoint_failures_before_stop` failed writes in a row (an async write's failure is
  known when it is polled, steps after its save) stop the run."""
  if saver.failures_in_a_row >= cfg.checkpoint_failures_before_stop:
    raise Stop(4, f"{saver.failures_in_a_row} checkpoint writes failed in a row; the "
               f"latest checkpoint on disk is step {saver.latest_on_disk()}")


def next_batch(feed: DataFeed, sigterm: "Sigterm", cfg, step: int, saver: ckpt.Saver):
  """-> (global batch, local rows), or None when SIGTERM came while the pipeline was busy
  (the batch begun is rewound, to be read again whole after a resume)."""
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
    saver.finish()
    raise Stop(5, f"the data pipeline failed after step {step} ({ckpt.one_line(e)}); the "
               f"latest checkpoint on disk is step {saver.latest_on_disk()}: run again to "
               "resume from it") from None


class Sigterm:
  """SIGTERM (a preemption). One process: honoured at any point: between steps it ends
  the loop after the step; inside `interruptible()` (the data pipeline, which can be busy
  for long, e.g. skipping samples) it raises `Preempted` at once. Several processes: a
  signal to any of them stops all at one step, agreed through JAX's coordination service
  (`multihost_utils.reached_preemption_sync_point`, called after every step; its handler
  owns SIGTERM then, so a busy pipeline finishes its batch first): every process saves
  that step and exits 0."""

  def __init__(self, processes: int = 1):
    self.received, self._inside = False, False
    self.agreed = processes > 1
    if not self.agreed:
      signal.signal(signal.SIGTERM, self._handle)

  def after_step(self, step: int) -> bool:
    """Whether to stop after `step` (steps done); every process calls it every step."""
    if self.agreed and multihost_utils.reached_preemption_sync_point(step):
      self.received = True
    return self.received

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


class NonFinite:
  """Updates skipped for a non-finite loss or gradient: reported, and the run stopped
  after `max_nonfinite_in_a_row` in a row. The counters live in the train state (no
  per-step host read); `check` sees them on log and checkpoint steps."""

  def __init__(self, cfg, seen: int):
    self.limit, self.seen = cfg.max_nonfinite_in_a_row, seen

  def check(self, step: int, m: dict, saver: ckpt.Saver):
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


def final(saver: ckpt.Saver, step: int, preempted: bool) -> int:
  """After the last save (end of training or SIGTERM): 0 only once it is on disk."""
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
