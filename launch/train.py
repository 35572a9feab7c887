"""Train Penguin-VL: one command for the four stages, laptop to pod slice.

  python -m launch.train --config=configs/stage1.py:tiny --workdir=/tmp/penguin/stage1
  python -m launch.train --config=configs/stage3.py:2b --workdir=gs://BUCKET/stage3 \\
      --config.init.init_from=gs://BUCKET/stage2 --config.data.tfds_name=penguin_vl/release

Resuming from WORKDIR's latest checkpoint always wins over initialisation. Multi-host:
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I` (or nothing on a TPU
pod slice, where jax.distributed finds its peers). Output: a console line every
`log_every` steps, WORKDIR/metrics.jsonl, TensorBoard events, checkpoints in
WORKDIR/checkpoints (docs/training.md). Exit codes: 0 done or preempted (saved), 2 a
configuration or input problem (one line), 3 non-finite steps, 4 checkpoint writes
failed, 5 the data pipeline failed (docs/faults.md).
"""
from __future__ import annotations

import logging
import os
import sys
import time

import jax
from absl import app, flags
from ml_collections import config_flags

from configs import common as configs_common
from penguin_jax import benchmark
from penguin_jax.train import cli, hardware, loop, runtime

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
config_flags.DEFINE_config_file("config", None, "stage config, e.g. configs/stage1.py:tiny",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "where checkpoints and metrics go (local or gs://)")
flags.DEFINE_string("coordinator_address", None, "multi-host: HOST:PORT of process 0")
flags.DEFINE_integer("num_processes", None, "multi-host: number of processes")
flags.DEFINE_integer("process_id", None, "multi-host: this process's id")
flags.DEFINE_integer("local_device_count", None,
                     "CPU only: devices per process (sets XLA's host device count)")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS
log = logging.getLogger("train")


def main(argv) -> int:
  del argv
  t_start = time.time()
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
  runtime.quiet_logs()
  runtime.start(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                FLAGS.local_device_count, runtime.lost_process_timeout(FLAGS.config))
  explicit = set(config_flags.get_override_values(FLAGS["config"]))   # set on the command line
  sl = hardware.running_slice_name(jax.devices())
  applied = configs_common.for_slice(FLAGS.config, sl, explicit) if sl else {}
  if applied:
    log.info("settings for %s: %s (configs/common.py SLICE_SETTINGS)", sl,
             ", ".join(f"{k}={v}" for k, v in applied.items()))
  return loop.run(FLAGS.config, FLAGS.workdir, t_start, explicit,
                  benchmarks=benchmark.training_evaluator)


def _main(argv):
  try:
    sys.exit(main(argv))
  except (FileNotFoundError, ValueError, KeyError) as e:  # configuration / input problems
    log.error("error: %s", e.args[0] if e.args else e)
    sys.exit(2)


def _parse_flags(argv):
  """absl's parsing, with a config file, variant or field that is not there as one line
  (exit 2) instead of a traceback."""
  try:
    cli.check_overrides(argv)
    rest = FLAGS(argv)
    FLAGS.config.keys()  # the config file loads lazily: make its errors surface here
    return rest
  except (flags.Error, cli.ConfigError, AttributeError, KeyError, OSError, ValueError) as e:
    text = str(e.args[0] if e.args else e).strip().splitlines() or [type(e).__name__]
    print(f"error: {text[-1] if 'Traceback' in text[0] else text[0]}; `python -m launch.train "
          "--help` lists the stages, variants and config fields", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  if any(a in ("-h", "--help", "--helpshort") for a in sys.argv[1:]):
    print(cli.help_text(__doc__, FLAGS.main_module_help(), CONFIGS))
    sys.exit(0)
  app.run(_main, flags_parser=_parse_flags)
