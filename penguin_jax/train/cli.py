"""Run configs on the command line: `--config=configs/STAGE.py:VARIANT --config.FIELD=V`.

ml_collections' `config_flags` parses them (`launch.train`, `launch.aot`, the AOT sweep's
points through `point_config`); here: the one-line errors for a config file, a variant or
a field that is not there (checked against the config itself, with "did you mean"), and
the `--help` text listing every field with its default and, for the fields declared as
settings dataclasses (penguin_jax/settings.py), their help.
"""
from __future__ import annotations

import difflib
import importlib.util
import os

from absl import flags
from ml_collections import config_dict, config_flags

from data_pipelines import pipeline, sample as sample_lib
from penguin_jax import losses, settings

# config section -> the settings dataclasses whose fields it holds (for --help)
SETTINGS = {"data": (sample_lib.SampleConfig, pipeline.PipelineConfig),
            "loss": (losses.LossConfig,)}


class ConfigError(ValueError):
  """A config file, variant or field that is not there: one line for the user."""


def load(spec: str):
  """`configs/STAGE.py[:VARIANT]` -> its ConfigDict (the file's `get_config(VARIANT)`, or
  `get_config()`: the file's default variant)."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    where = os.path.dirname(path) or "."
    known = f" (the stages there: {', '.join(stages(where))})" if os.path.isdir(where) else ""
    raise ConfigError(f"no config file {path}{known}")
  module_spec = importlib.util.spec_from_file_location("run_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  try:
    return module.get_config(arg) if arg else module.get_config()
  except ValueError as e:          # an unknown variant: the config file's own message
    raise ConfigError(str(e)) from None


def check_overrides(argv) -> None:
  """Every `--config.a.b=...` of `argv` names a field of the config `--config=` loads;
  else one line naming it and the closest fields."""
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if spec is None:
    return
  fields = _flat(load(spec))
  for a in argv:
    if a.startswith("--config.") or a.startswith("--noconfig."):
      name = a.split("=", 1)[0].split("config.", 1)[1]
      if name not in fields:
        close = difflib.get_close_matches(name, fields, n=1)
        raise ConfigError(f"no config field {name!r}" +
                          (f" (did you mean {close[0]!r}?)" if close else ""))


def _flat(cfg, prefix: str = "") -> dict:
  out = {}
  for k, v in cfg.items():
    if isinstance(v, config_dict.ConfigDict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def point_config(spec: str, overrides: dict):
  """The config of `spec` (`configs/STAGE.py:VARIANT`) with `a.b.c=value` overrides
  (strings), parsed by ml_collections as the command line's `--config.a.b.c=value` is."""
  argv = ["point", f"--config={spec}", *[f"--config.{k}={v}" for k, v in overrides.items()]]
  check_overrides(argv)
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=False,
                                  sys_argv=argv)
  fv(argv)
  return fv.config


def stages(configs_dir: str) -> list[str]:
  """The stage config files of a configs folder."""
  return sorted(f[:-3] for f in os.listdir(configs_dir)
                if f.startswith("stage") and f.endswith(".py"))


def help_text(doc: str, flags_help: str, configs_dir: str) -> str:
  """--help: what to run, the stages and variants, every config field with its default
  (stage1:tiny's) and its help where it is declared, and the flags."""
  lines = []
  for name, value in _flat(load(os.path.join(configs_dir, "stage1.py:tiny"))).items():
    section, _, field = name.rpartition(".")
    doc_of = next((settings.help_of(c, field) for c in SETTINGS.get(section, ())
                   if settings.help_of(c, field)), "")
    lines.append(f"  --config.{name}={value!r}" + (f"    # {doc_of}" if doc_of else ""))
  return "\n".join([
      doc.strip(), "",
      f"Stages: --config=configs/STAGE.py:VARIANT, STAGE in {', '.join(stages(configs_dir))}; VARIANT in "
      "tiny, 2b, 8b (no VARIANT: 2b; stage0, the demo's text-only LLM: tiny only).", "",
      "Config fields (override any with --config.FIELD=VALUE; defaults of stage1:tiny):",
      *lines, "", "Flags:", flags_help])
