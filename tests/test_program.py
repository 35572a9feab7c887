"""The training program builder (penguin_jax/train/program.py): optimizer state sharded
like the parameters, and gradient accumulation equal to one step over the whole batch."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import stage1, stage3
from penguin_jax import hf, registry
from penguin_jax.sharding import make_mesh
from penguin_jax.teacher import TeacherConfig, ViTTeacher, teacher_targets
from penguin_jax.train import program as program_lib
from penguin_jax.losses import LossConfig
from penguin_jax.train.step import TrainState, make_train_step
from penguin_jax.vlm import PenguinVL
from test_sharding import _batch
from test_vlm import tiny_vlm_config


def test_optimizer_state_is_sharded_like_its_parameter():
  """fsdp 4 x tensor 2 on 8 devices: every leaf of Adam's mu and nu has exactly the
  sharding of the parameter it belongs to (XLA's own choice replicated all of them)."""
  cfg = stage3.get_config("tiny")
  cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = 1, 4, 2
  program = program_lib.build(cfg, make_mesh(**cfg.mesh.to_dict()))
  state = program.init_state(jax.random.PRNGKey(0))
  params = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(state.params)[0]}
  checked = 0
  for path, x in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]:
    key = jax.tree_util.keystr(path)
    match = [p for p in params if key.endswith(p)]
    if not match:                       # step counters
      assert x.ndim == 0, key
      continue
    p = params[max(match, key=len)]
    assert x.shape == p.shape
    assert x.sharding.is_equivalent_to(p.sharding, x.ndim), (key, x.sharding, p.sharding)
    checked += 1
  assert checked == 2 * len(params)     # mu and nu of every parameter
  sharded = [x for x in jax.tree.leaves(state.opt_state) if not x.sharding.is_fully_replicated]
  assert len(sharded) > len(params)     # really split (q_proj over fsdp and tensor, ...)


def _step_params(step, params, opt, batch, *extra):
  state = TrainState(jnp.zeros((), jnp.int32), params, opt.init(params))
  new, metrics = jax.jit(step)(state, batch, *extra)
  return new.params, metrics


@pytest.mark.parametrize("scope", ["batch", "sequence"])
def test_gradient_accumulation_equals_one_big_step(scope):
  """4 rows as 2 micro-batches of 2 give the loss and update of one step over 4 rows:
  every micro-batch divides by the counts of the whole batch."""
  cfg = tiny_vlm_config()
  model = PenguinVL(cfg)
  params = registry.init_params(model, jax.random.PRNGKey(0))
  batch = _batch()
  labels = np.asarray(batch["input_ids"]).copy()
  labels[:, :20] = -100
  labels[1, 20:26] = -100           # rows with different label counts: means would differ
  seg = np.ones_like(labels)
  seg[:, 24:] = 2                   # two packed sequences per row
  batch = {**batch, "labels": jnp.asarray(labels), "segment_ids": jnp.asarray(seg)}
  opt = optax.sgd(0.5)
  loss = LossConfig(scope=scope, chunk_size=8)
  one, m1 = _step_params(make_train_step(model, opt, loss), params, opt, batch)
  two, m2 = _step_params(make_train_step(model, opt, loss, grad_accum=2), params, opt, batch)
  np.testing.assert_allclose(float(m2["loss"]), float(m1["loss"]), rtol=1e-5)
  assert int(m2["label_tokens"]) == int(m1["label_tokens"])
  for a, b in zip(jax.tree.leaves(two), jax.tree.leaves(one)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=1e-6)
  moved = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(params)))
  assert moved > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("relation", ["image", "batch"])
def test_gradient_accumulation_with_reconstruction_losses(relation):
  cfg = tiny_vlm_config()        # (with a distill head to the 32-wide teacher)
  model = PenguinVL(cfg)
  params = registry.init_params(model, jax.random.PRNGKey(0))
  teacher = ViTTeacher(TeacherConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2))
  batch = _batch()
  tok = np.zeros((4, 16), np.int32)
  tok[0::2, :16] = 1
  tok[1::2, :8] = np.repeat([1, 2], 4)
  labels = np.asarray(batch["input_ids"]).copy()
  labels[:, :20] = -100
  batch = {**batch, "labels": jnp.asarray(labels), "token_segment_ids": jnp.asarray(tok)}
  tparams = teacher.init(jax.random.PRNGKey(1), batch["patches"], batch["patch_segment_ids"],
                         batch["patch_positions"])["params"]
  assert teacher_targets(teacher, tparams, batch).shape == (4, 16, 32)
  opt = optax.sgd(0.5)
  # "batch": the Gram over each one-row local batch (a chip's rows), whatever the split
  kw = dict(loss=LossConfig(chunk_size=8, relation_scope=relation), teacher=teacher,
            reconstruction_weight=3.0, relation_local_rows=1)
  one, m1 = _step_params(make_train_step(model, opt, **kw), params, opt, batch, tparams)
  two, m2 = _step_params(make_train_step(model, opt, grad_accum=2, **kw), params, opt, batch, tparams)
  for k in ("loss", "amplitude", "direction", "relation"):
    np.testing.assert_allclose(float(m2[k]), float(m1[k]), rtol=1e-5, err_msg=k)
  for a, b in zip(jax.tree.leaves(two), jax.tree.leaves(one)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=1e-6)


def test_micro_batches_and_batch_shapes_follow_the_config():
  cfg = stage1.get_config("tiny")
  cfg.data.global_batch, cfg.data.rows_per_chip = 16, 1
  program = program_lib.build(cfg, make_mesh())        # 8 data-parallel devices
  assert program.grad_accum == 2                        # 16 rows = 2 x (8 chips x 1 row)
  b = program.abstract_batch
  assert b["patches"].shape == (16, cfg.data.max_patches, 588)
  assert b["input_ids"].sharding.spec[0] == ("data", "fsdp")
  cfg.data.rows_per_chip = 3
  with pytest.raises(ValueError, match="not a whole number of micro-batches"):
    program_lib.build(cfg, make_mesh())


def test_frozen_modules_are_not_differentiated_and_the_update_is_unchanged():
  """Stage 1: the LLM is frozen. Differentiating only the trainable modules (the LLM's
  weight gradients are never computed) gives the same update as differentiating all
  (compared without clipping: the clipping norm now leaves frozen modules out, as the
  release's, whose frozen parameters have no gradient)."""
  from penguin_jax.train.optim import make_optimizer
  cfg = tiny_vlm_config()
  model = PenguinVL(cfg)
  params = registry.init_params(model, jax.random.PRNGKey(0))
  trainable = ("vision_encoder", "vision_projector")
  opt, _ = make_optimizer(params, {m: 1e-2 for m in trainable}, 10, trainable=trainable,
                          grad_clip=None)
  batch = _batch()
  labels = np.asarray(batch["input_ids"]).copy()
  labels[:, :20] = -100
  batch = {**batch, "labels": jnp.asarray(labels)}
  step = lambda **kw: jax.jit(make_train_step(model, opt, LossConfig(chunk_size=8), **kw))
  state = TrainState(jnp.zeros((), jnp.int32), params, opt.init(params))
  subset, m_sub = step(trainable=trainable)(state, batch)
  state = TrainState(jnp.zeros((), jnp.int32), params, opt.init(params))
  full, m_full = step()(state, batch)
  for a, b in zip(jax.tree.leaves(subset.params), jax.tree.leaves(full.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=2e-6)  # (Adam: lr 1e-2)
  for a, b in zip(jax.tree.leaves(subset.params["llm"]), jax.tree.leaves(params["llm"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert float(m_sub["grad_norm"]) < float(m_full["grad_norm"])   # no LLM weight gradients
  text = jax.jit(make_train_step(model, opt, trainable=trainable)).lower(state, batch).as_text()
  assert text.count("dot_general") < jax.jit(make_train_step(model, opt)).lower(
      state, batch).as_text().count("dot_general")


def test_stage1_teacher_is_loaded_sharded_and_has_no_optimizer_state(tmp_path):
  """Stage 1a on fsdp 4 x tensor 2: the teacher written as an HF folder comes back through
  the import path onto its shards (split like the student's weights) with the folder's
  values; the optimizer state holds Adam's mu and nu of the trainable modules only."""
  cfg = stage1.get_config("tiny")
  cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = 1, 4, 2
  program = program_lib.build(cfg, make_mesh(**cfg.mesh.to_dict()))
  folder = program.write_random_teacher(str(tmp_path / "teacher"), jax.random.PRNGKey(3))
  teacher = program.load_teacher(folder)
  _, want = hf.from_pretrained(folder)
  flat = jax.tree_util.tree_flatten_with_path(teacher)[0]
  assert len(flat) == len(jax.tree.leaves(want)) > 0
  for (path, x), w, a in zip(flat, jax.tree.leaves(want), jax.tree.leaves(program.abstract_teacher)):
    assert x.sharding == a.sharding, jax.tree_util.keystr(path)
    np.testing.assert_array_equal(np.asarray(x), np.asarray(w))
  fc1 = teacher["layers"]["layers_0"]["fc1"]["kernel"]
  assert tuple(fc1.sharding.spec) == ("fsdp", "tensor") and not fc1.sharding.is_fully_replicated

  size = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
  trainable = size({k: v for k, v in program.abstract_state.params.items() if k in program.trainable})
  scalars = [x for x in jax.tree.leaves(program.abstract_state.opt_state) if x.ndim == 0]
  assert "vision_distill_layer" in program.trainable
  assert size(program.abstract_state.opt_state) == 2 * trainable + len(scalars)
  assert size(teacher) > 0 and "teacher" not in str(jax.tree_util.tree_structure(
      program.abstract_state.opt_state))


def test_a_teacher_of_another_size_is_a_clear_error(tmp_path):
  cfg = stage1.get_config("tiny")
  cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = 1, 4, 2
  program = program_lib.build(cfg, make_mesh(**cfg.mesh.to_dict()))
  cfg.model.teacher.hidden_size = 96
  other = program_lib.build(cfg, make_mesh(**cfg.mesh.to_dict()))
  folder = other.write_random_teacher(str(tmp_path / "t96"), jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="hidden_size: 96 there, 64 here"):
    program.load_teacher(folder)


@pytest.mark.parametrize("tied", [True, False])
def test_mfu_counts_every_llm_parameter_once(tied):
  """The LLM's FLOPs against a hand count from the config's sizes: the layers and the final
  norm in `llm`, the LM head once in `lm_head` (an untied 8b head used to be counted in
  both), the embedding lookup in neither."""
  cfg = stage3.get_config("tiny")                      # everything trains: 6 FLOPs / weight
  cfg.model.llm.tie_word_embeddings = tied
  cfg.data.global_batch = 8
  program = program_lib.build(cfg, make_mesh())
  e, i, h, kv, d, L = (cfg.model.llm[k] for k in ("hidden_size", "intermediate_size",
                                                  "num_heads", "num_kv_heads", "head_dim",
                                                  "num_layers"))
  V = cfg.model.vocab_size
  per_layer = e * h * d + 2 * e * kv * d + h * d * e + 3 * e * i + 2 * d + 2 * e
  body = L * per_layer + e                               # + the final RMSNorm
  assert program.param_counts()["llm"] == body + V * e * (1 if tied else 2)
  assert program.param_counts()["llm_body"] == body
  rows, seq = cfg.data.global_batch, cfg.data.seq_len
  f = program.flops()
  assert f["llm"]["matmul"] == 6 * body * rows * seq
  assert f["lm_head"]["matmul"] == 6 * e * V * rows * seq
