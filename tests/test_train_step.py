"""The VLM training step learns, and stage 1a's reconstruction losses flow through it."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import optax

from penguin_jax import registry
from penguin_jax.teacher import TeacherConfig, ViTTeacher, teacher_targets
from penguin_jax.losses import LossConfig
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
  params = registry.init_params(model, jax.random.PRNGKey(0))
  opt = optax.adam(3e-3)
  step = jax.jit(make_train_step(model, opt, LossConfig(max_label_tokens=16, chunk_size=8)))
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
  params = registry.init_params(model, jax.random.PRNGKey(0))
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


@pytest.mark.slow
def test_reconstruction_weight_schedule_falls_from_3_to_2_as_the_release():
  """docs/design.md §1.4: w = 3 - epoch over the run. With a schedule the loss at step s
  is lm + w(s) * reconstruction; checked against constant weights 3, 2.5 and 2."""
  cfg = tiny_vlm_config()
  model = PenguinVL(cfg)
  params = registry.init_params(model, jax.random.PRNGKey(0))
  batch = _labelled(_batch())
  targets = jax.random.normal(jax.random.PRNGKey(3), (4, 16, 32))
  seg_tok = np.zeros((4, 16), np.int32)
  seg_tok[:, :16] = 1
  batch["token_segment_ids"] = jnp.asarray(seg_tok)
  sched = LossConfig(reconstruction_weight=3.0, reconstruction_weight_end=2.0) \
      .reconstruction_schedule(total_steps=10)
  opt = optax.sgd(0.0)   # parameters stay: only the weight changes with the step
  steps = {}                # one compiled step per weight (the scheduled one takes the step)

  def loss_at(w, s):
    if w not in steps:
      steps[w] = jax.jit(make_train_step(model, opt, teacher_features=targets,
                                         reconstruction_weight=w))
    state = TrainState(jnp.asarray(s, jnp.int32), params, opt.init(params))
    return float(steps[w](state, batch)[1]["loss"])
  for s, w in [(0, 3.0), (5, 2.5), (10, 2.0)]:
    np.testing.assert_allclose(loss_at(sched, s), loss_at(w, 0), rtol=1e-6)
  assert loss_at(3.0, 0) != loss_at(2.0, 0)
  assert LossConfig(reconstruction_weight_end=-1.0).reconstruction_schedule(10) == 3.0
