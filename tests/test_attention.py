"""The three attention backends compute the same function (DESIGN 1.2's block-diagonal
encoder attention and the LLM's causal packed attention)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from penguin_jax.layers import attention


def _inputs(s=256, h=4, kv=2, d=64, b=2):
  rs = np.random.RandomState(0)
  q = jnp.asarray(rs.randn(b, s, h, d).astype(np.float32))
  k = jnp.asarray(rs.randn(b, s, kv, d).astype(np.float32))
  v = jnp.asarray(rs.randn(b, s, kv, d).astype(np.float32))
  seg = np.zeros((b, s), np.int32)
  seg[0, :100], seg[0, 100:230] = 1, 2          # two packed sequences + padding
  if b > 1:
    seg[1, :] = 1 + (np.arange(s) // 64)         # 64-token items
  return q, k, v, jnp.asarray(seg)


def _reference(q, k, v, seg, causal):
  """Dense NumPy attention, head by head."""
  q, k, v, seg = map(np.asarray, (q, k, v, seg))
  b, s, h, d = q.shape
  g = h // k.shape[2]
  out = np.zeros_like(q)
  for bi in range(b):
    mask = seg[bi][:, None] == seg[bi][None, :]
    if causal:
      mask &= np.tril(np.ones((s, s), bool))
    for hi in range(h):
      lg = q[bi, :, hi] @ k[bi, :, hi // g].T / np.sqrt(d)
      lg = np.where(mask, lg, -np.inf)
      p = np.exp(lg - lg.max(-1, keepdims=True))
      out[bi, :, hi] = (p / p.sum(-1, keepdims=True)) @ v[bi, :, hi // g]
  return out


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("impl", ["xla", "cudnn", "splash"])
def test_backends_match_dense_reference(impl, causal):
  q, k, v, seg = _inputs()
  out = attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg, causal=causal,
                  implementation=impl, splash_block_size=128)
  ref = _reference(q, k, v, seg, causal)
  np.testing.assert_allclose(np.asarray(out), ref, atol=2e-5, rtol=2e-5)


def test_splash_gradient_matches_xla():
  q, k, v, seg = _inputs(s=256, b=1)
  def loss(impl):
    return lambda q_, k_, v_: jnp.sum(jnp.sin(attention(
        q_, k_, v_, q_segment_ids=seg, kv_segment_ids=seg, causal=True,
        implementation=impl, splash_block_size=128)))
  gs = jax.grad(loss("splash"), argnums=(0, 1, 2))(q, k, v)
  gx = jax.grad(loss("xla"), argnums=(0, 1, 2))(q, k, v)
  for a, b in zip(gs, gx):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4, rtol=1e-4)


def test_splash_rejects_lengths_off_the_block_grid():
  q, k, v, seg = _inputs(s=200, b=1)
  with pytest.raises(ValueError, match="multiples of splash_block_size"):
    attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg, causal=True,
              implementation="splash", splash_block_size=128)


def test_splash_under_a_mesh_runs_per_shard_and_matches():
  """With mesh (data 2, fsdp 2, tensor 2) the kernel runs per device (shard_map): batch
  over data x fsdp, heads over tensor, and equals the unsharded xla result."""
  from flax import linen as nn
  from jax.sharding import NamedSharding, PartitionSpec as PS
  from penguin_jax.sharding import LOGICAL_RULES, make_mesh
  q, k, v, _ = _inputs(s=256, b=4)
  seg = jnp.asarray(np.repeat([[1] * 100 + [2] * 156], 4, axis=0))
  ref = attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg, causal=True)
  mesh = make_mesh(data=2, fsdp=2, tensor=2)
  with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
    f = jax.jit(lambda q, k, v, s: attention(q, k, v, q_segment_ids=s, kv_segment_ids=s,
                                             causal=True, implementation="splash",
                                             splash_block_size=128))
    hlo = f.lower(q, k, v, seg).as_text()
    out = f(*jax.device_put((q, k, v), NamedSharding(mesh, PS(("data", "fsdp"), None, "tensor"))),
            jax.device_put(seg, NamedSharding(mesh, PS(("data", "fsdp")))))
  assert "shard_map" in hlo or "manual" in hlo.lower()
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=2e-5, rtol=2e-5)
