"""Settings declared once: a frozen dataclass per group, and what is derived from it.

A group of settings is one frozen dataclass whose fields are made with `setting(default,
help)`: the per-sample settings (`data_pipelines.sample.SampleConfig`), the packing
settings (`data_pipelines.pipeline.PipelineConfig`), the losses
(`penguin_jax.losses.LossConfig`), LoRA (`penguin_jax.lora.LoraConfig`). Each field is the
setting's only declaration; from the class come

  * a run config's section, same names and defaults (`to_config`, in configs/common.py),
  * the dataclass back from a run config's section (`from_config`),
  * command-line flags (`add_flags` / `from_flags`: argparse, `--name-with-dashes`),
  * the TFDS builder config of `data_pipelines/tfds_penguin.py` (it holds a SampleConfig),
  * `launch.train --help`'s line for each field (`help_of`).

So a new setting is one field, plus the code that uses it.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Mapping, Optional


def setting(default, help: str):  # noqa: A002  (the argparse word)
  """A field of a settings dataclass: its default and one line of help."""
  return dataclasses.field(default=default, metadata={"help": help})


def help_of(cls, name: str) -> str:
  """The help line of field `name` of `cls` ("" when it has none)."""
  for f in dataclasses.fields(cls):
    if f.name == name:
      return f.metadata.get("help", "")
  return ""


def to_dict(obj) -> dict:
  """{field: value} of a settings dataclass instance (tuples stay tuples)."""
  return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def to_config(obj) -> dict:
  """The fields of `obj` as entries of a run config's section: `c.data.update(to_config(
  SampleConfig(...)))`. A None default cannot be overridden from the command line by
  ml_collections (it does not know the type), so settings used in run configs have
  concrete defaults there."""
  return to_dict(obj)


def _coerce(hint, value):
  """A value from a ConfigDict, JSON or argparse -> the field's type (lists -> tuples,
  ints -> floats where the field is a float)."""
  origin = typing.get_origin(hint)
  args = typing.get_args(hint)
  if value is None:
    return None
  if origin is typing.Union:                        # Optional[X]
    inner = [a for a in args if a is not type(None)]
    return _coerce(inner[0], value) if len(inner) == 1 else value
  if origin is tuple or hint is tuple:
    item = args[0] if args else None
    return tuple(_coerce(item, v) if item not in (None, Ellipsis) else v for v in value)
  if hint is float and isinstance(value, int) and not isinstance(value, bool):
    return float(value)
  return value


def from_config(cls, section: Mapping[str, Any], **overrides):
  """`cls` from the same-named entries of a run config's section (a ConfigDict or a dict;
  its other entries belong to other groups and are ignored); `overrides` win."""
  hints = typing.get_type_hints(cls)
  kw = {f.name: _coerce(hints[f.name], section[f.name]) for f in dataclasses.fields(cls)
        if f.name in section}
  kw.update(overrides)
  return cls(**kw)


def from_mapping(cls, values: Mapping[str, Any]):
  """`cls` from a dict that may only name its fields (a JSON config): an unknown key is a
  ValueError naming it and the fields there are."""
  names = [f.name for f in dataclasses.fields(cls)]
  unknown = sorted(set(values) - set(names))
  if unknown:
    raise ValueError(f"{cls.__name__}: unknown setting(s) {unknown}; settings: {names}")
  return from_config(cls, values)


def add_flags(parser: argparse.ArgumentParser, cls, defaults=None, *,
              exclude: tuple = ()) -> None:
  """One `--name-with-dashes` flag per field of `cls`, with the field's help; defaults from
  the instance `defaults` (else the class's)."""
  hints = typing.get_type_hints(cls)
  for f in dataclasses.fields(cls):
    if f.name in exclude:
      continue
    default = getattr(defaults, f.name) if defaults is not None else f.default
    flag = "--" + f.name.replace("_", "-")
    hint = hints[f.name]
    kind = _scalar(hint)
    kw: dict = {"default": default, "help": f.metadata.get("help", "") +
                f" (default: {default})", "dest": f.name}
    if kind is bool:
      parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
    elif typing.get_origin(hint) is tuple or hint is tuple:
      item = (typing.get_args(hint) or (str,))[0]
      parser.add_argument(flag, nargs="+", type=item, **kw)
    else:
      parser.add_argument(flag, type=kind, **kw)


def _scalar(hint) -> Optional[type]:
  if typing.get_origin(hint) is typing.Union:
    inner = [a for a in typing.get_args(hint) if a is not type(None)]
    return inner[0] if len(inner) == 1 else str
  return hint if isinstance(hint, type) else str


def from_flags(cls, args: argparse.Namespace):
  """`cls` from the flags `add_flags` made (those excluded keep their class default)."""
  return from_config(cls, {k: v for k, v in vars(args).items()
                           if k in {f.name for f in dataclasses.fields(cls)}})
