"""Before you rent a slice: compile the real training step for a TPU topology, here.

  python -m launch.aot --config=configs/stage3.py:2b --topology=v5e-16
  python -m launch.aot --config=configs/stage3.py:8b --topology=v5e-64 --config.data.rows_per_chip=2
  python -m launch.aot --config=configs/stage1.py:tiny --topology=cpu:8 --json=report.json

Compiles the step that `launch.train` runs (same builder, `penguin_jax/train/program.py`)
with libtpu's compiler for compile-only devices of the topology: no TPU, data, tokenizer
or weights. Prints memory per chip against usable HBM, model FLOPs by module,
the collectives of the compiled step, a predicted step time, MFU, tokens/s and
chip-hours (docs/scale.md says what each figure means). Exit status 0 when
it fits, 3 when it does not (with the compiler's figure), 2 on a usage error.

A sweep compiles a grid, one compile per point (each in its own process), caches every
result in a JSONL file keyed by the point and the versions (never recompiled), and
writes sweep.csv, sweep.md and sweep.png into --out:

  python -m launch.aot --sweep --stages=stage1,stage3 --variants=2b,8b \\
      --topologies=v5e-16,v5e-64 --vary=model.remat_policy=full,dots --out=sweep/
  python -m launch.aot --sweep --search=batch --stages=stage3 --variants=2b \\
      --topologies=v5e-16 --vary=model.remat_policy=full,dots_no_batch --out=sweep/

`--search=batch` finds, per point, the largest data.rows_per_chip (1, 2, 4, ...) that
fits; `--search=slice` the smallest slice of each chip family in --topologies (v5e, v6e,
...) that fits with 10% headroom; `--search=remat` the remat policy of each point (as `--config.model.remat_policy=auto`
does for one config: the least recompute that fits with 10% headroom, every candidate
compiled once and cached, by default in ~/.cache/penguin_jax/aot.jsonl). A grid can also
live in a flag file: `--flagfile=my_sweep.flags`.
"""
from __future__ import annotations

import json
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from configs import common as configs_common
from penguin_jax.train import aot_analysis, aot_sweep, cli, hardware

config_flags.DEFINE_config_file("config", None, "stage config, e.g. configs/stage3.py:2b",
                                lock_config=True)
flags.DEFINE_string("topology", None, "v5e-16, v5e-64, v5p-8, v6e-16, v5e:4x4, ... or cpu:N")
flags.DEFINE_string("json", None, "also write the report as JSON to this file")
flags.DEFINE_integer("frame_patches", 0, "encoder attention FLOPs assume frames of this many "
                     "patches (default: the largest image the config admits)")
flags.DEFINE_bool("sweep", False, "compile a grid (see --stages, --variants, --topologies, --vary)")
flags.DEFINE_list("stages", ["stage1", "stage1_hres", "stage2", "stage3"], "sweep: stage configs")
flags.DEFINE_list("variants", ["2b", "8b"], "sweep: variants")
flags.DEFINE_list("topologies", ["v5e-16", "v5e-64", "v5p-8", "v6e-16"], "sweep: topologies")
flags.DEFINE_multi_string("vary", [], "sweep: FIELD=V1,V2,... (repeatable), e.g. "
                          "model.remat_policy=full,dots or data.seq_len=8192,16384")
flags.DEFINE_enum("search", None, ["batch", "remat", "slice"], "sweep: find the largest "
                  "rows_per_chip that fits (batch), the remat policy (remat: "
                  "model.remat_policy=auto), or the smallest slice of each chip family "
                  "named in --topologies (slice: --topologies=v5e,v6e)")
flags.DEFINE_string("out", "aot_sweep", "sweep: folder for sweep.csv, sweep.md, sweep.png")
flags.DEFINE_string("cache", None, "JSONL cache of compiled points (default: OUT/cache.jsonl "
                    "for a sweep, ~/.cache/penguin_jax/aot.jsonl for remat_policy=auto)")
flags.DEFINE_integer("timeout", 3600, "sweep: seconds allowed per compile")
FLAGS = flags.FLAGS
EXIT_DOES_NOT_FIT = 3


def say(msg: str):
  print(msg, file=sys.stderr, flush=True)


def one(argv) -> int:
  if FLAGS.config is None or FLAGS.topology is None:
    raise app.UsageError("give --config=configs/STAGE.py:VARIANT and --topology=... (or --sweep)")
  explicit = set(config_flags.get_override_values(FLAGS["config"]))
  sl = hardware.slice_name(hardware.parse_slice(FLAGS.topology))
  applied = configs_common.for_slice(FLAGS.config, sl, explicit)
  if applied:
    say(f"settings for {sl}: " + ", ".join(f"{k}={v}" for k, v in applied.items()) +
        " (configs/common.py SLICE_SETTINGS; set a field on the command line to override)")
  if FLAGS.config.model.remat_policy == "auto":    # compile the candidates (cached)
    rep = aot_sweep.auto_remat(FLAGS.config, FLAGS.topology, frame_patches=FLAGS.frame_patches,
                               cache_path=FLAGS.cache or aot_sweep.default_cache(), log=say)
  else:
    rep = aot_analysis.analyse(FLAGS.config, FLAGS.topology,
                               frame_patches=FLAGS.frame_patches or None, log=say)
  rep["overrides"] = {a[len("--config."):].split("=", 1)[0]: a.split("=", 1)[1]
                      for a in argv if a.startswith("--config.") and "=" in a}
  rep["slice_settings"] = applied
  print("\n".join(aot_analysis.report_lines(rep)))
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump(rep, f, indent=1)
  return 0 if rep["fits"] else EXIT_DOES_NOT_FIT


def sweep() -> int:
  points = list(aot_sweep.grid(FLAGS.stages, FLAGS.variants, FLAGS.topologies, FLAGS.vary))
  s = aot_sweep.Sweep(FLAGS.out, FLAGS.cache, FLAGS.frame_patches, FLAGS.timeout,
                      log=lambda m: print(m, flush=True))
  s.run(points, FLAGS.search)
  return 0


def _main(argv):
  try:
    if FLAGS.sweep and FLAGS.search == "slice":    # chip families: every one is a TPU
      tpus = [hardware.CHIPS[t].name if t in hardware.CHIPS else aot_sweep.family_slices(t, 1)
              for t in FLAGS.topologies]                 # (family_slices: the error line)
    else:
      tpus = [t for t in (FLAGS.topologies if FLAGS.sweep else [FLAGS.topology or "cpu:1"])
              if hardware.parse_slice(t).chip is not None]
    problem = hardware.libtpu_problem() if tpus else None
    if problem:
      raise ValueError(problem)
    sys.exit(sweep() if FLAGS.sweep else one(sys.argv))
  except (ValueError, KeyError) as e:
    say(f"error: {e.args[0] if e.args else e}")
    sys.exit(2)


def _parse_flags(argv):
  try:
    cli.check_overrides(argv)
    return FLAGS(argv)
  except (flags.Error, cli.ConfigError) as e:
    say(f"error: {str(e).strip().splitlines()[0]}")
    sys.exit(2)


if __name__ == "__main__":
  # Before JAX starts: cpu:N needs N host devices; TPU topologies compile on the CPU with
  # libtpu, told it is on one host of that slice (else it prints start-up errors).
  topology = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--topology=")), None)
  try:
    os.environ.update(hardware.compile_env(topology))
  except ValueError as e:                 # an unknown topology
    say(f"error: {e}")
    sys.exit(2)
  app.run(_main, flags_parser=_parse_flags)
