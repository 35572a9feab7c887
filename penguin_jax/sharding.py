"""Device mesh and the one table of logical-axis rules.

Every parameter and main activation in `penguin_jax` is annotated with *logical* axis
names; this file alone says which mesh axis each one is split over. Mesh axes:

* `data`   pure data parallelism (parameters replicated),
* `fsdp`   data parallelism with parameters, gradients and optimizer state sharded (ZeRO-3),
* `tensor` Megatron-style tensor parallelism inside attention and MLP blocks.
"""
from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axis (or axes, or None = replicated). The one place to change.
LOGICAL_RULES: tuple[tuple[str, object], ...] = (
    # activations
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("act_embed", None),            # activation hidden dim: replicated
    ("act_heads", "tensor"),        # attention heads of activations
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    # parameters
    ("embed", "fsdp"),              # model width
    ("mlp", "tensor"),              # SwiGLU intermediate
    ("heads", "tensor"),            # query heads
    ("kv_heads", "tensor"),         # key/value heads (GQA)
    ("kv", None),                   # head_dim
    ("vocab", "tensor"),
    ("patch", None),                # 3*14*14 pixel values of one patch
    ("teacher_embed", "fsdp"),      # the frozen teacher's width, split like `embed`
    ("norm", None),
    ("layers", None),               # the stacked axis of nn.scan
    # A LoRA adapter's rank axis takes fsdp when its other axis did not (a rule's mesh axis
    # goes to the first of a tensor's axes that asks for it, in this order): the adapters
    # of the MLP ([mlp, r], [r, mlp]) would otherwise be whole on every chip.
    ("lora_rank", "fsdp"),
)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh (`jax.make_mesh`: devices laid out for the topology);
  one size may be -1 (= the remaining devices). Sizes that do not fit the devices are a
  ValueError naming both."""
  devices = list(devices if devices is not None else jax.devices())
  sizes = [data, fsdp, tensor]
  if sizes.count(-1) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got data={data} fsdp={fsdp} tensor={tensor}")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"{len(devices)} devices do not split into mesh data={data} "
                       f"fsdp={fsdp} tensor={tensor}")
    sizes[sizes.index(-1)] = len(devices) // known
  if int(np.prod(sizes)) != len(devices):
    raise ValueError(f"mesh data={sizes[0]} fsdp={sizes[1]} tensor={sizes[2]} needs "
                     f"{int(np.prod(sizes))} devices, {len(devices)} are visible")
  return jax.make_mesh(tuple(sizes), MESH_AXES, devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)  # as Mesh(): shardings by rules


def logical_to_mesh_sharding(logical_tree, mesh: Mesh, rules=LOGICAL_RULES):
  """PartitionSpecs of logical names (e.g. from `nn.get_partition_spec`) -> NamedShardings.
  Only PartitionSpec leaves are mapped, so empty nodes (optax's MaskedNode) stay as they
  are and the result has the structure of the arrays."""
  return jax.tree.map(lambda s: NamedSharding(mesh, nn.logical_to_mesh_axes(s, rules)),
                      logical_tree, is_leaf=lambda x: isinstance(x, PartitionSpec))


def params_shardings(abstract_variables, mesh: Mesh, rules=LOGICAL_RULES):
  """Shardings for a boxed (logically annotated) tree: the output of `model.init`, or
  anything built from it leaf by leaf, such as an optimizer state initialised on boxed
  parameters (Adam's mu and nu keep their parameter's names). Unboxed leaves (step
  counters) are replicated. A box around an empty node (optax masks a frozen module's
  entries with `MaskedNode` inside the parameter's box) stays that empty node."""
  is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)

  def spec(x):
    if is_box(x):
      value = x.unbox(apply_constraint=False)
      return x.get_partition_spec() if jax.tree.leaves(value) else value
    return PartitionSpec() if hasattr(x, "shape") else x
  specs = jax.tree.map(spec, abstract_variables, is_leaf=is_box)
  return logical_to_mesh_sharding(specs, mesh, rules)


# --------------------------------------------------------------------------- per-device code
GPU_PLATFORMS = ("gpu", "cuda", "rocm")


def current_mesh():
  """The mesh set by `jax.set_mesh` (its abstract view), or None outside one."""
  m = jax.sharding.get_abstract_mesh()
  return None if m is None or m.empty else m


def target_platform() -> str:
  """The platform the code is being traced for: that of the active mesh's devices (the
  compile-only TPU devices of an AOT compile on a CPU host), else JAX's default backend.
  Kernels choose their implementation from this, never from `jax.default_backend()`."""
  m = current_mesh()
  dev = getattr(m, "abstract_device", None) if m is not None else None
  platform = dev.platform if dev is not None else jax.default_backend()
  return "gpu" if platform in GPU_PLATFORMS else platform


def mesh_axes(logical_name: str):
  """The mesh axis (or axes, or None) a logical axis maps to under the active rules."""
  return nn.logical_to_mesh_axes((logical_name,))[0]


def axis_size(axes) -> int:
  """Devices along mesh axes `axes` (a name, a tuple of names or None) of the active mesh."""
  m = current_mesh()
  if m is None or axes is None:
    return 1
  axes = (axes,) if isinstance(axes, str) else tuple(axes)
  return int(np.prod([m.shape[a] for a in axes]))


def per_device(fn, in_names, out_names, check_vma: bool = False):
  """`fn` run per device under the active mesh (`jax.shard_map`). Specs are logical axis
  names, one tuple per array (`("batch", "length", None)`; `()` = replicated); `in_names`
  has one per argument, `out_names` is one tuple (one output) or a list of them. Outside
  a mesh, `fn` itself: the same code serves one CPU and a pod slice. `fn` sees its local
  shards and may use collectives over the mesh axes of `mesh_axes(...)`."""
  m = current_mesh()
  if m is None:
    return fn
  spec = lambda names: PartitionSpec(*nn.logical_to_mesh_axes(names))
  outs = tuple(spec(n) for n in out_names) if isinstance(out_names, list) else spec(out_names)
  return jax.shard_map(fn, mesh=m, in_specs=tuple(spec(n) for n in in_names), out_specs=outs,
                       check_vma=check_vma)

