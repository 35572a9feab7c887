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
    ("teacher_embed", None),
    ("norm", None),
    ("layers", None),               # the stacked axis of nn.scan
)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh; one size may be -1 (= the remaining devices)."""
  devices = list(devices if devices is not None else jax.devices())
  sizes = [data, fsdp, tensor]
  if sizes.count(-1) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got data={data} fsdp={fsdp} tensor={tensor}")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"{len(devices)} devices do not split into mesh {sizes}")
    sizes[sizes.index(-1)] = len(devices) // known
  if int(np.prod(sizes)) != len(devices):
    raise ValueError(f"mesh data={sizes[0]} fsdp={sizes[1]} tensor={sizes[2]} needs "
                     f"{int(np.prod(sizes))} devices, {len(devices)} are visible")
  try:
    dev = jax.experimental.mesh_utils.create_device_mesh(sizes, devices)
  except Exception:  # CPU / odd topologies: plain reshape
    dev = np.asarray(devices).reshape(sizes)
  return Mesh(dev, MESH_AXES)


def logical_to_mesh_sharding(logical_tree, mesh: Mesh, rules=LOGICAL_RULES):
  """PartitionSpecs of logical names (e.g. from `nn.get_partition_spec`) -> NamedShardings."""
  specs = nn.logical_to_mesh(logical_tree, rules)
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                      is_leaf=lambda x: isinstance(x, PartitionSpec))


def params_shardings(abstract_variables, mesh: Mesh, rules=LOGICAL_RULES):
  """Shardings for the (boxed, abstract) output of `model.init`."""
  return logical_to_mesh_sharding(nn.get_partition_spec(abstract_variables), mesh, rules)


import jax.experimental.mesh_utils  # noqa: E402  (imported for create_device_mesh)
