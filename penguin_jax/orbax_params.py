"""Model checkpoints in orbax: parameters plus the model's config, in one directory.

    CKPT/params/             orbax StandardCheckpointer (any mesh can restore it)
    CKPT/model_config.json   {"hf_config": <config.json of the model>, "scan_layers": bool}

`launch/convert.py` moves models between this and Hugging Face directories.
"""
from __future__ import annotations

import json
import os

import jax
import orbax.checkpoint as ocp

from penguin_jax import hf_keys, registry
from penguin_jax.model_config import config_from_hf_dict

CONFIG_FILE = "model_config.json"


def _scan(cfg) -> bool:
  return any(tower.scan_layers for _, tower in registry.towers(cfg))


def save_params(path: str, model, params) -> str:
  path = os.path.abspath(path)
  os.makedirs(path, exist_ok=True)
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(os.path.join(path, "params"), params, force=True)
  ckptr.wait_until_finished()
  with open(os.path.join(path, CONFIG_FILE), "w") as f:
    json.dump({"hf_config": model.cfg.to_hf_dict(), "scan_layers": _scan(model.cfg)}, f, indent=2)
  return path


def read_config(path: str):
  """The model config of an orbax model checkpoint (its `model_config.json`)."""
  f = os.path.join(os.path.abspath(path), CONFIG_FILE)
  if not os.path.isfile(f):
    raise FileNotFoundError(f"{path}: no {CONFIG_FILE}; not a penguin-jax model checkpoint")
  with open(f) as fh:
    meta = json.load(fh)
  return config_from_hf_dict(meta["hf_config"], scan_layers=meta["scan_layers"])


def load_params(path: str, shardings=None, **runtime):
  """-> (model, params). `runtime` may change scan_layers (the layout is converted),
  dtypes, attention. `shardings`: optional target shardings (a restore onto any mesh)."""
  path = os.path.abspath(path)
  cfg_file = os.path.join(path, CONFIG_FILE)
  if not os.path.isfile(cfg_file):
    raise FileNotFoundError(f"{path}: no {CONFIG_FILE}; not a penguin-jax model checkpoint")
  with open(cfg_file) as f:
    meta = json.load(f)
  saved_cfg = config_from_hf_dict(meta["hf_config"], scan_layers=meta["scan_layers"])
  saved_model = registry.build_model(saved_cfg)
  abstract = registry.abstract_params(saved_model)
  if shardings is not None and runtime.get("scan_layers", meta["scan_layers"]) == meta["scan_layers"]:
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            abstract, shardings)
  params = ocp.StandardCheckpointer().restore(os.path.join(path, "params"), abstract)
  cfg = config_from_hf_dict(meta["hf_config"], **{"scan_layers": meta["scan_layers"], **runtime})
  if _scan(cfg) != _scan(saved_cfg):
    params = hf_keys.scan_layout(hf_keys.unscan_layout(jax.device_get(params), saved_cfg), cfg)
  if runtime.get("param_dtype") is not None:
    params = jax.tree.map(lambda x: x.astype(runtime["param_dtype"]), params)
  return registry.build_model(cfg), params
