"""On 8 CPU devices, mesh (data 2, fsdp 2, tensor 2): jitted init and forward with
shardings from the logical rules equal the single-device result."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax.sharding import NamedSharding, PartitionSpec as PS

from penguin_jax import hf, patches as P, registry
from penguin_jax.sharding import LOGICAL_RULES, make_mesh, params_shardings
from penguin_jax.vlm import PenguinVL
from test_vlm import IMG, tiny_vlm_config


def _batch(b=4, seq=32, n_patch=32, n_tok=16):
  rs = np.random.RandomState(0)
  out = {k: [] for k in ["input_ids", "patches", "patch_segment_ids", "patch_positions",
                         "merge_index", "merge_weight", "visual_positions"]}
  for i in range(b):
    grids, merges = ([(1, 4, 4)], [1]) if i % 2 == 0 else ([(2, 4, 4)], [2])
    lay = P.pack_items(grids, merges, max_patches=n_patch, max_tokens=n_tok)
    n_vis = int((lay["token_segment_ids"] > 0).sum())
    ids = rs.randint(0, 299, seq)
    ids[4:4 + n_vis] = IMG
    vis = np.full(n_tok, seq); vis[:n_vis] = np.arange(4, 4 + n_vis)
    out["input_ids"].append(ids)
    out["patches"].append(rs.randn(n_patch, 588).astype(np.float32))
    for k in ["patch_segment_ids", "patch_positions", "merge_index", "merge_weight"]:
      out[k].append(lay[k])
    out["visual_positions"].append(vis)
  return {k: jnp.asarray(np.stack(v)) for k, v in out.items()}


@pytest.mark.slow
@pytest.mark.parametrize("scan", [False, True])
def test_sharded_init_and_forward_equal_single_device(scan):
  assert jax.device_count() == 8
  cfg = tiny_vlm_config(scan_layers=scan, remat_policy="dots" if scan else "none")
  model = PenguinVL(cfg)
  batch = _batch()
  rng = jax.random.PRNGKey(0)
  args, kwargs = registry.kind(cfg).init_inputs(cfg)

  single_params = nn.unbox(model.init(rng, *args, **kwargs)["params"])
  single = model.apply({"params": single_params}, **batch)

  mesh = make_mesh(data=2, fsdp=2, tensor=2)
  with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
    abstract = jax.eval_shape(lambda: model.init(rng, *args, **kwargs)["params"])
    shardings = params_shardings(abstract, mesh)
    init = jax.jit(lambda r: nn.unbox(model.init(r, *args, **kwargs)["params"]),
                   out_shardings=shardings)
    params = init(rng)
    data_sharding = NamedSharding(mesh, PS(("data", "fsdp")))
    batch_sh = jax.device_put(batch, data_sharding)
    fwd = jax.jit(lambda p, b: model.apply({"params": p}, **b),
                  in_shardings=(shardings, data_sharding))
    sharded = fwd(params, batch_sh)

  # The parameters really are split: q_proj over fsdp (embed) and tensor (heads).
  q = params["llm"]["layers"]["layers" if scan else "layers_0"]["self_attn"]["q_proj"]["kernel"]
  spec = q.sharding.spec
  assert ("fsdp" in spec) and ("tensor" in spec), spec
  assert len({str(s.index) for s in q.addressable_shards}) == 4
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(single_params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-7, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(sharded), np.asarray(single), atol=1e-5, rtol=1e-5)


def test_mesh_sizes_and_errors():
  m = make_mesh(data=-1, fsdp=2, tensor=2)
  assert dict(m.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  with pytest.raises(ValueError, match="needs 12 devices"):
    make_mesh(data=3, fsdp=2, tensor=2)
