"""The training program: what `launch.train` runs and `launch.aot` compiles, built once.

`build(cfg, mesh)` turns a stage config (configs/stageN.py) and a device mesh into the
model, the optimizer, the abstract train state with its shardings, the global batch's
shapes and shardings and the jitted train step, so that the program compiled ahead of
time for a TPU topology is exactly the one that trains (MaxText builds its step once for
train.py and train_compile.py in the same way).

Shardings come from the logical axis names of the parameters (`sharding.LOGICAL_RULES`).
The optimizer state is initialised on the *boxed* abstract parameters, so Adam's mu and
nu carry their parameter's names and are sharded like it; nothing is left to XLA's
choice (which replicates them).
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from penguin_jax import hf, hf_keys, layers, lora as lora_lib, quant as quant_lib, registry
from penguin_jax import settings
from penguin_jax.losses import LossConfig
from penguin_jax.model_config import EncoderConfig, Qwen3Config, VLMConfig
from penguin_jax.sharding import LOGICAL_RULES, params_shardings
from penguin_jax.teacher import TeacherConfig, ViTTeacher
from penguin_jax.train import flops as flops_lib
from penguin_jax.train.optim import make_optimizer
from penguin_jax.train.step import TrainState, make_eval_step, make_train_step
from penguin_jax.vlm import PenguinVL


def model_config(cfg, vocab_size: Optional[int] = None,
                 image_token_id: Optional[int] = None) -> tuple[VLMConfig, Optional[TeacherConfig]]:
  """The VLM (and teacher) configs of a stage config. `vocab_size` / `image_token_id`
  default to the config's (the tokenizer's, when one is at hand)."""
  m = cfg.model
  rt = dict(dtype=jnp.dtype(m.dtype), param_dtype=jnp.float32, attention=m.attention,
            scan_layers=m.scan_layers, remat_policy=m.remat_policy)
  vcfg = VLMConfig(llm=Qwen3Config(vocab_size=vocab_size or m.vocab_size, **m.llm.to_dict(), **rt),
                   encoder=EncoderConfig(**m.encoder.to_dict(), **rt),
                   teacher_hidden_size=m.teacher.hidden_size if m.use_teacher else None)
  if image_token_id is not None:
    vcfg = dataclasses.replace(vcfg, image_token_index=image_token_id)
  vcfg = lora_lib.apply(vcfg, lora_config(cfg))
  # The teacher is frozen: kept in the compute dtype (the release runs it in bf16).
  tcfg = TeacherConfig(**m.teacher.to_dict(), dtype=rt["dtype"], param_dtype=rt["dtype"],
                       attention=m.attention, scan_layers=m.scan_layers) if m.use_teacher else None
  return vcfg, tcfg


def lora_config(cfg) -> lora_lib.LoraConfig:
  """The run's LoRA settings (`config.lora`; off in configs without the section)."""
  return settings.from_config(lora_lib.LoraConfig, cfg.lora) if "lora" in cfg else \
      lora_lib.LoraConfig()


def batch_shapes(cfg, vcfg: VLMConfig) -> dict:
  """name -> (shape, dtype) of one global batch (see vlm.py / data_pipelines.pipeline).
  Pixel patches travel in the compute dtype (the release feeds bf16 pixels to a bf16
  model)."""
  d = cfg.data
  B, S, P, V = d.global_batch, d.seq_len, d.max_patches, d.max_visual_tokens
  i32 = np.dtype(np.int32)
  return {
      "input_ids": ((B, S), i32), "labels": ((B, S), i32), "segment_ids": ((B, S), i32),
      "positions": ((B, S), i32),
      "patches": ((B, P, vcfg.encoder.patch_dim), np.dtype(vcfg.encoder.dtype)),
      "patch_segment_ids": ((B, P), i32), "patch_positions": ((B, P, 2), i32),
      "merge_index": ((B, V, 4), i32), "merge_weight": ((B, V, 4), np.dtype(np.float32)),
      "visual_positions": ((B, V), i32), "token_segment_ids": ((B, V), i32),
  }


def grad_accum_steps(cfg, mesh: Mesh) -> int:
  """Micro-batches per step: the global batch over (data-parallel chips x rows_per_chip);
  `data.rows_per_chip = 0` = the whole global batch at once."""
  dp = mesh.shape["data"] * mesh.shape["fsdp"]
  B, r = cfg.data.global_batch, cfg.data.rows_per_chip
  if B % dp:
    raise ValueError(f"config.data.global_batch={B} must be a multiple of the data-parallel "
                     f"size {dp} (mesh data x fsdp); change the batch or --config.mesh")
  if not r:
    return 1
  if B % (dp * r):
    raise ValueError(f"config.data.global_batch={B} is not a whole number of micro-batches "
                     f"of rows_per_chip={r} x {dp} data-parallel chips")
  return B // (dp * r)


def local_rows(cfg, mesh: Mesh, grad_accum: int) -> int:
  """Rows one data-parallel chip holds in a micro-batch: its local batch (the relation
  loss's "batch" scope takes its Gram over them, as the release over a GPU's batch)."""
  return cfg.data.global_batch // grad_accum // (mesh.shape["data"] * mesh.shape["fsdp"])


@dataclasses.dataclass
class TrainProgram:
  """Everything about one training run that does not depend on data or weights."""
  cfg: Any
  mesh: Mesh
  model: PenguinVL
  model_config: VLMConfig
  teacher: Optional[nn.Module]
  teacher_config: Optional[TeacherConfig]
  optimizer: optax.GradientTransformation
  schedules: dict
  trainable: tuple                    # the top-level modules that train (in full or adapted)
  lora: lora_lib.LoraConfig
  trains: Any                         # path -> bool: does this parameter leaf train
  grad_accum: int
  abstract_params_boxed: Any          # with logical-axis metadata
  state_shardings: TrainState         # NamedShardings
  abstract_state: TrainState          # ShapeDtypeStructs with shardings
  abstract_batch: dict                # ShapeDtypeStructs with shardings
  abstract_teacher: Any               # teacher params (None without a teacher)
  train_step: Any                     # jitted (state, batch, teacher_params) -> (state, metrics)
  eval_step: Any                      # jitted (params, batch, teacher_params, step) -> metrics
  _param_counts: Optional[dict] = dataclasses.field(default=None, init=False, repr=False)

  @contextlib.contextmanager
  def context(self):
    """The mesh and the logical-axis rules that tracing the model needs."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(LOGICAL_RULES):
      yield

  def init_params(self, rng):
    """Random parameters, created in place on their shards, in their dtypes (with LoRA,
    the frozen base in `lora.base_dtype`)."""
    cast = lambda params: jax.tree.map(lambda x, a: x.astype(a.dtype), params,
                                       self.abstract_state.params)
    with self.context():
      return jax.jit(lambda r: cast(registry.init_params(self.model, r)),
                     out_shardings=self.state_shardings.params)(rng)

  def init_opt_state(self, params):
    """The optimizer state, sharded like the parameters (never replicated)."""
    with self.context():
      return jax.jit(self.optimizer.init, out_shardings=self.state_shardings.opt_state)(params)

  def new_state(self, params) -> TrainState:
    """A step-0 train state around `params` (already on their shards)."""
    zero = lambda: jax.device_put(jnp.zeros((), jnp.int32), self.state_shardings.step)
    return TrainState(zero(), params, self.init_opt_state(params), zero(), zero())  # 3 buffers:
    # the step donates the state

  def init_state(self, rng) -> TrainState:
    return self.new_state(self.init_params(rng))

  def load_teacher(self, path: str):
    """The frozen teacher's parameters from an HF folder (VL3-SigLIP-NaViT in either
    layout, hf.py), in this program's dtype and layer layout, on their shards. Its
    architecture must be `config.model.teacher`'s (the step is compiled for it)."""
    got = hf.config_from_hf(path)
    if not isinstance(got, TeacherConfig):
      raise ValueError(f"config.init.teacher={path}: {type(got).__name__} is not a "
                       "VL3-SigLIP-NaViT teacher (model_type video_llama_3_vision or "
                       "videollama3_vision_encoder)")
    want = self.teacher_config
    there, here = got.to_hf_dict(), want.to_hf_dict()     # the architecture, as saved
    diff = [f"{k}: {there[k]} there, {here[k]} here" for k in here
            if k != "torch_dtype" and there[k] != here[k]]
    if diff:
      raise ValueError(f"config.init.teacher={path} does not match config.model.teacher ("
                       + "; ".join(diff) + "): set config.model.teacher.* to the folder's sizes")
    params = hf_keys.hf_to_params(hf.read_tensors(path), want, dtype=np.dtype(want.param_dtype),
                             source=path)
    return put_global(params, jax.tree.map(lambda x: x.sharding, self.abstract_teacher))

  def write_random_teacher(self, path: str, rng) -> str:
    """A random teacher of this config's size written as an HF folder (float32,
    `save_pretrained`): what the tiny config distils from, read back by `load_teacher`
    like a real one. Needs no `transformers`."""
    cfg = dataclasses.replace(self.teacher_config, dtype=jnp.float32, param_dtype=jnp.float32,
                              scan_layers=False)
    model = ViTTeacher(cfg)
    # jitted: one compilation (created op by op, each op compiles: 4.6 s of a tiny run)
    params = jax.jit(lambda r: registry.init_params(model, r))(rng)
    return hf.save_pretrained(model, params, path)

  def lower(self):
    """The train step lowered for the abstract state, batch and teacher (no data)."""
    with self.context():
      return self.train_step.lower(self.abstract_state, self.abstract_batch,
                                   self.abstract_teacher)

  def param_counts(self) -> dict:
    """Parameters per top-level module of the model without adapters (a quantized base
    counts its weights, not its bytes); `llm_body` = the LLM without its embedding and
    without an untied LM head (`flops.step_flops` counts the head once, on its own);
    `MODULE_adapters` per adapted module; `total` (the model), `trainable` (adapters
    included) and `frozen` parameters. Computed once (a trace of the model: `flops` asks
    for it at every step)."""
    if self._param_counts is None:
      self._param_counts = self._count_params()
    return dict(self._param_counts)

  def _count_params(self) -> dict:
    plain = registry.abstract_params(registry.build_model(lora_lib.without(self.model_config)))
    counts = {k: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(v)) for k, v in plain.items()}
    flat = traverse_util.flatten_dict(self.abstract_state.params)
    size = lambda x: int(np.prod(x.shape))
    for module in self.lora.adapted():
      counts[f"{module}_adapters"] = sum(size(x) for p, x in flat.items()
                                         if p[0] == module and lora_lib.is_adapter(p))
    counts["total"] = sum(counts[k] for k in plain)              # the model, adapters aside
    counts["trainable"] = sum(size(x) for p, x in flat.items() if self.trains(p))
    counts["frozen"] = counts["total"] - sum(
        size(x) for p, x in flat.items() if self.trains(p) and not lora_lib.is_adapter(p))
    llm = self.model_config.llm
    tables = 1 if llm.tie_word_embeddings else 2      # embedding (+ lm_head), [vocab, embed]
    counts["llm_body"] = counts.get("llm", 0) - tables * llm.vocab_size * llm.hidden_size
    if self.abstract_teacher is not None:
      counts["teacher"] = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(self.abstract_teacher))
    return counts

  def flops(self, encoder_pairs=None, llm_pairs=None, frame_patches=None,
            remat: Optional[str] = None) -> dict:
    """Model FLOPs of one step, by module and kind (see `flops.step_flops`); `remat`: the
    recompute under that policy instead of the program's (remat.search ranks by it)."""
    d = self.cfg.data
    with self.context():                  # the platform compiled for picks the kernel
      attention = layers.resolve_attention(self.cfg.model.attention)
    vcfg = self.model_config
    if remat is not None:
      vcfg = dataclasses.replace(vcfg, llm=dataclasses.replace(vcfg.llm, remat_policy=remat),
                                 encoder=dataclasses.replace(vcfg.encoder, remat_policy=remat))
    return flops_lib.step_flops(
        self.param_counts(), vcfg, self.teacher_config,
        rows=d.global_batch, seq_len=d.seq_len, patches=d.max_patches,
        visual_tokens=d.max_visual_tokens, trainable=set(self.trainable) - set(self.lora.adapted()),
        adapted=set(self.lora.adapted()) & set(self.trainable),
        label_positions=self.cfg.loss.max_label_tokens or None,
        encoder_pairs=encoder_pairs, llm_pairs=llm_pairs,
        frame_patches=frame_patches or max_frame_patches(self.cfg), attention=attention)


def on_host(shardings):
  """The same shardings in the host's pinned memory (optim.offload_opt_state)."""
  return jax.tree.map(lambda s: s.with_memory_kind("pinned_host"), shardings)


def put_global(host_tree, shardings):
  """Host (NumPy) arrays -> global jax.Arrays with `shardings`, each device taking only
  its slice; every process holds the same host tree (multi-host safe)."""
  return jax.tree.map(
      lambda x, s: jax.make_array_from_callback(x.shape, s, lambda idx: x[idx]), host_tree,
      shardings)


def _values(boxed):
  """The arrays (or shapes) inside logical-axis boxes, without applying constraints."""
  is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)
  return jax.tree.map(lambda x: x.unbox(apply_constraint=False) if is_box(x) else x, boxed,
                      is_leaf=is_box)


def _stored(params, trains, lora: lora_lib.LoraConfig):
  """The dtypes parameters are kept in: with LoRA the frozen leaves in the base's dtype
  (bfloat16 unless `lora.base_dtype` is float32; a quantized base keeps its codes), the
  trainable ones (adapters, modules trained in full) in float32."""
  if not lora.on:
    return params
  frozen = jnp.float32 if lora.base_dtype == "float32" else jnp.bfloat16
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({
      p: x if trains(p) or not jnp.issubdtype(x.dtype, jnp.floating) or p[-1] == "kernel_scale"
      else jax.ShapeDtypeStruct(x.shape, frozen) for p, x in flat.items()})


def max_frame_patches(cfg) -> int:
  """The largest image a row of this config can hold, in patches (the layout the AOT
  report assumes for encoder attention): max_tokens x image merge^2, at most a row."""
  d = cfg.data
  return int(min(d.max_tokens * d.image_merge_size ** 2, d.max_patches))


def build(cfg, mesh: Mesh, *, vocab_size: Optional[int] = None,
          image_token_id: Optional[int] = None) -> TrainProgram:
  """The training program of stage config `cfg` on `mesh` (see the module docstring)."""
  vcfg, tcfg = model_config(cfg, vocab_size, image_token_id)
  model = PenguinVL(vcfg)
  grad_accum = grad_accum_steps(cfg, mesh)
  lora = lora_config(cfg)
  with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
    boxed = registry.abstract_params(model, boxed=True)
    modules = list(boxed)
    lr = {k: float(v) for k, v in cfg.optim.lr.items() if k in modules}
    trains = lambda path: lora_lib.trainable(path, cfg.optim.trainable, lora)
    trainable = tuple(m for m in modules                # the modules with a leaf that trains
                      if any(trains(p) for p in traverse_util.flatten_dict({m: boxed[m]})))
    opt, schedules = make_optimizer(boxed, lr, cfg.total_steps, trainable=trains,
                                    warmup_frac=cfg.optim.warmup_frac,
                                    weight_decay=cfg.optim.weight_decay,
                                    grad_clip=cfg.optim.grad_clip)
    opt_boxed = jax.eval_shape(opt.init, boxed)   # mu, nu keep their parameter's names
    scalar, replicated = jax.ShapeDtypeStruct((), jnp.int32), NamedSharding(mesh, PartitionSpec())
    opt_sh = params_shardings(opt_boxed, mesh)       # in the step, on the chips
    offload = cfg.optim.get("offload_opt_state", False)   # (absent from older runs' configs)
    state_sh = TrainState(replicated, params_shardings(boxed, mesh),
                          on_host(opt_sh) if offload else opt_sh,
                          replicated, replicated)
    abstract_state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        TrainState(scalar, _stored(_values(boxed), trains, lora), _values(opt_boxed), scalar,
                   scalar), state_sh)

    row_sharding = lambda ndim: NamedSharding(
        mesh, PartitionSpec(*nn.logical_to_mesh_axes(("batch",) + (None,) * (ndim - 1))))
    abstract_batch = {k: jax.ShapeDtypeStruct(shape, dt, sharding=row_sharding(len(shape)))
                      for k, (shape, dt) in batch_shapes(cfg, vcfg).items()}

    teacher = abstract_teacher = None
    teacher_sh = None
    if tcfg is not None:
      teacher = ViTTeacher(tcfg)
      t_boxed = registry.abstract_params(teacher, boxed=True)
      teacher_sh = params_shardings(t_boxed, mesh)
      abstract_teacher = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                      _values(t_boxed), teacher_sh)

  loss = settings.from_config(LossConfig, cfg.loss)
  loss_kw = dict(teacher=teacher, grad_accum=grad_accum,
                 reconstruction_weight=loss.reconstruction_schedule(cfg.total_steps),
                 relation_local_rows=local_rows(cfg, mesh, grad_accum))
  # The step's model: the towers' linears quantized (model.quant; the same parameters)
  step_model = quant_lib.quantize(model, cfg.model.get("quant", "none"))
  step_fn = make_train_step(step_model, opt, loss, trainable=trains, **loss_kw,
                            opt_state_device=opt_sh if offload else None,
                            dropout_seed=cfg.seed if lora.on and lora.dropout > 0 else None)
  batch_sh = {k: v.sharding for k, v in abstract_batch.items()}
  train_step = jax.jit(step_fn, in_shardings=(state_sh, batch_sh, teacher_sh),
                       out_shardings=(state_sh, None), donate_argnums=0)
  eval_step = jax.jit(make_eval_step(step_model, loss, **loss_kw),
                      in_shardings=(state_sh.params, batch_sh, teacher_sh, None))
  return TrainProgram(cfg=cfg, mesh=mesh, model=model, model_config=vcfg, teacher=teacher,
                      teacher_config=tcfg, optimizer=opt, schedules=schedules,
                      trainable=trainable, lora=lora, trains=trains, grad_accum=grad_accum,
                      abstract_params_boxed=boxed, state_shardings=state_sh,
                      abstract_state=abstract_state, abstract_batch=abstract_batch,
                      abstract_teacher=abstract_teacher, train_step=train_step,
                      eval_step=eval_step)
