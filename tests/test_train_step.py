"""The VLM training step learns, and stage 1a's reconstruction losses flow through it."""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from penguin_jax import hf
from penguin_jax.teacher import TeacherConfig, ViTTeacher, teacher_targets
from penguin_jax.train.step import TrainState, make_train_step
from penguin_jax.vlm import PenguinVL
from test_sharding import _batch
from test_vlm import tiny_vlm_config


def _labelled(batch):
  labels = np.asarray(batch["input_ids"]).copy()
  labels[:, :20] = -100
  return {**batch, "labels": jnp.asarray(labels)}


def test_loss_falls_on_a_fixed_batch():
  cfg = tiny_vlm_config()
  model = PenguinVL(cfg)
  params = hf.init_params(model, jax.random.PRNGKey(0))
  opt = optax.adam(3e-3)
  step = jax.jit(make_train_step(model, opt, max_label_tokens=16, chunk_size=8))
  state = TrainState(jnp.zeros((), jnp.int32), params, opt.init(params))
  batch = _labelled(_batch())
  losses = []
  for _ in range(8):
    state, m = step(state, batch)
    losses.append(float(m["loss"]))
  assert losses[-1] < 0.8 * losses[0], losses
  assert int(m["dropped_label_tokens"]) == 0 and int(state.step) == 8


def test_reconstruction_losses_train_the_distill_head():
  cfg = tiny_vlm_config()
  model = PenguinVL(cfg)
  params = hf.init_params(model, jax.random.PRNGKey(0))
  tcfg = TeacherConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2)
  teacher = ViTTeacher(tcfg)
  batch = _labelled(_batch())
  tparams = teacher.init(jax.random.PRNGKey(1), batch["patches"], batch["patch_segment_ids"],
                         batch["patch_positions"])["params"]
  targets = teacher_targets(teacher, tparams, batch)
  assert targets.shape == (4, 16, 32)
  seg_tok = np.zeros((4, 16), np.int32)
  seg_tok[0::2, :16] = 1   # images: 16 tokens
  seg_tok[1::2, :8] = np.repeat([1, 2], 4)  # two video frames of 4 tokens
  batch["token_segment_ids"] = jnp.asarray(seg_tok)
  opt = optax.adam(3e-3)
  step = jax.jit(make_train_step(model, opt, teacher_features=targets, reconstruction_weight=3.0))
  state = TrainState(jnp.zeros((), jnp.int32), params, opt.init(params))
  state, m0 = step(state, batch)
  for _ in range(6):
    state, m = step(state, batch)
  for k in ["amplitude", "direction", "relation", "lm_loss"]:
    assert np.isfinite(float(m[k])), k
  assert float(m["direction"]) < float(m0["direction"])
  moved = np.abs(np.asarray(state.params["vision_distill_layer"]["linear"]["kernel"]) -
                 np.asarray(params["vision_distill_layer"]["linear"]["kernel"])).max()
  assert moved > 0
