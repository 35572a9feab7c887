"""The model registry: a config type -> its Flax module, its HF `model_type` strings, the
inputs that initialise it, and where its stacks of layers are.

The four models of the paper are entries here (the Qwen3 LLM, the Penguin-Encoder, the
VLM, the stage-1a teacher VL3-SigLIP-NaViT); everything that builds, initialises, shapes,
loads or saves a model looks its config up here instead of testing its type. A new model
type is one entry here and its key map in `hf_keys.KEY_MAPS`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import linen as nn

from penguin_jax.encoder import PenguinEncoder
from penguin_jax.model_config import (ENCODER_MODEL_TYPE, LLM_MODEL_TYPE, TEACHER_MODEL_TYPES,
                                      VLM_MODEL_TYPE, EncoderConfig, Qwen3Config,
                                      TeacherConfig, VLMConfig)
from penguin_jax.qwen3 import Qwen3ForCausalLM
from penguin_jax.teacher import ViTTeacher
from penguin_jax.vlm import PenguinVL, dummy_inputs


@dataclasses.dataclass(frozen=True)
class ModelKind:
  module: type                                      # the Flax module class
  model_types: tuple                                # HF config.json `model_type` values
  init_inputs: Callable[[Any], tuple[tuple, dict]]  # cfg -> (args, kwargs) of a tiny forward
  towers: Callable[[Any], list]                     # cfg -> [(path of a layer stack, tower cfg)]


def _vlm_inputs(cfg):
  d = dummy_inputs(cfg)
  return (d.pop("input_ids"),), d


def _patch_inputs(cfg):
  """Four patches of one frame: the encoders' (and the teacher's) inputs."""
  return (jnp.zeros((1, 4, cfg.patch_dim)), jnp.ones((1, 4), jnp.int32),
          jnp.zeros((1, 4, 2), jnp.int32)), {}


def _token_inputs(cfg):
  return (jnp.zeros((1, 4), jnp.int32),), {}


def _one_tower(cfg):
  return [(("layers",), cfg)]


KINDS: dict[type, ModelKind] = {
    VLMConfig: ModelKind(PenguinVL, (VLM_MODEL_TYPE,), _vlm_inputs,
                         lambda c: [(("llm", "layers"), c.llm),
                                    (("vision_encoder", "layers"), c.encoder)]),
    EncoderConfig: ModelKind(PenguinEncoder, (ENCODER_MODEL_TYPE,), _patch_inputs, _one_tower),
    Qwen3Config: ModelKind(Qwen3ForCausalLM, (LLM_MODEL_TYPE,), _token_inputs, _one_tower),
    TeacherConfig: ModelKind(ViTTeacher, TEACHER_MODEL_TYPES, _patch_inputs, _one_tower),
}


def kind(cfg) -> ModelKind:
  try:
    return KINDS[type(cfg)]
  except KeyError:
    raise TypeError(f"no model registered for config {type(cfg).__name__}") from None


def build_model(cfg) -> nn.Module:
  """The Flax module for a config."""
  return kind(cfg).module(cfg)


def towers(cfg) -> list:
  """[(path prefix of a LayerStack in the parameters, that tower's config)]."""
  return kind(cfg).towers(cfg)


def init_params(model: nn.Module, rng, boxed: bool = False):
  """Random parameters (unboxed unless `boxed`, which keeps the logical-axis metadata).
  Created with attention "xla": the tiny init inputs are not on splash attention's block
  grid, and the backend does not change parameters."""
  args, kwargs = kind(model.cfg).init_inputs(model.cfg)
  init_model = model.clone(cfg=model.cfg.replace_runtime(attention="xla"))
  variables = init_model.init(rng, *args, **kwargs)
  return variables["params"] if boxed else nn.unbox(variables["params"])


def abstract_params(model: nn.Module, boxed: bool = False):
  """Shapes / dtypes of the parameters, nothing computed. Traced once per (module type,
  config): a run asks for them several times, each a trace of the whole model."""
  trace = lambda: jax.eval_shape(lambda: init_params(model, jax.random.PRNGKey(0), boxed))
  try:
    key = (type(model), model.cfg, boxed)
    hash(key)
  except TypeError:                  # a config holding a list: not cached
    return trace()
  if key not in _ABSTRACT:
    _ABSTRACT[key] = trace()
  return jax.tree.map(lambda x: x, _ABSTRACT[key])       # a copy: callers may edit dicts


_ABSTRACT: dict = {}
