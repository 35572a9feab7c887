"""The three attention backends compute the same function (docs/design.md §1.2's block-diagonal
encoder attention and the LLM's causal packed attention)."""
import dataclasses

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
  with pytest.raises(ValueError, match="multiples of 128"):
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


def _packed_frames(sizes, length, b=2, seed=0):
  """Rows of consecutive frames (ids 1, 2, ...) of the given patch counts, then padding."""
  rs = np.random.RandomState(seed)
  seg = np.zeros((b, length), np.int32)
  for r in range(b):
    pos, sid = 0, 1
    for n in rs.permutation(sizes):
      if pos + n > length:
        break
      seg[r, pos:pos + n] = sid
      pos, sid = pos + n, sid + 1
  return seg


def test_segment_block_overlap_never_misses_a_pair_and_skips_the_rest():
  from penguin_jax.layers import segment_block_overlap
  seg = _packed_frames([300, 40, 700, 90, 128, 5], 1536, b=1)[0]
  block = 128
  ov = np.asarray(segment_block_overlap(jnp.asarray(seg), block))
  n = len(seg) // block
  need = np.zeros((n, n), bool)                 # brute force: blocks sharing a nonzero id
  for i in range(n):
    for j in range(n):
      a, c = seg[i * block:(i + 1) * block], seg[j * block:(j + 1) * block]
      need[i, j] = len(np.intersect1d(a[a > 0], c[c > 0])) > 0 or i == j
  assert (ov >= need).all()                     # never skips a needed block
  np.testing.assert_array_equal(ov, need)       # contiguous frames: exactly those
  assert ov.sum() < 0.6 * n * n


@pytest.mark.parametrize("causal", [False, True])
def test_block_skipping_splash_equals_full_row_attention_on_packed_frames(causal):
  """A packed row of frames of mixed sizes: splash with the blocks between frames skipped
  gives the full-row (xla) result on every non-padding position, gradients too."""
  b, s, h, kv, d = 2, 1024, 4, 2, 32
  rs = np.random.RandomState(1)
  q = jnp.asarray(rs.randn(b, s, h, d).astype(np.float32))
  k = jnp.asarray(rs.randn(b, s, kv, d).astype(np.float32))
  v = jnp.asarray(rs.randn(b, s, kv, d).astype(np.float32))
  seg = jnp.asarray(_packed_frames([256, 100, 36, 196, 64, 300], s))
  valid = np.asarray(seg) > 0
  run = lambda impl: lambda q_, k_, v_: attention(q_, k_, v_, q_segment_ids=seg, kv_segment_ids=seg,
                                                  causal=causal, implementation=impl,
                                                  splash_block_size=128)
  out, ref = run("splash")(q, k, v), run("xla")(q, k, v)
  np.testing.assert_allclose(np.asarray(out)[valid], np.asarray(ref)[valid], atol=2e-5, rtol=2e-5)
  assert np.isfinite(np.asarray(out)).all()
  loss = lambda impl: lambda *a: jnp.sum(jnp.sin(run(impl)(*a)) * valid[..., None, None])
  for ga, gb in zip(jax.grad(loss("splash"), argnums=(0, 1, 2))(q, k, v),
                    jax.grad(loss("xla"), argnums=(0, 1, 2))(q, k, v)):
    np.testing.assert_allclose(np.asarray(ga), np.asarray(gb), atol=1e-4, rtol=1e-4)


def test_encoder_with_block_skipping_equals_full_row_encoder():
  """The Penguin-Encoder on a packed row of three images: splash (blocks between images
  skipped) and the xla backend (every pair of the row) give the same features."""
  from penguin_jax import hf, patches as P, registry
  from penguin_jax.model_config import EncoderConfig
  from penguin_jax.encoder import PenguinEncoder
  cfg = EncoderConfig(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=16)
  lay = P.pack_items([(1, 10, 12), (1, 6, 4), (2, 8, 8)], [1, 1, 2], max_patches=512)
  seg = jnp.asarray(lay["patch_segment_ids"][None])
  pos = jnp.asarray(lay["patch_positions"][None])
  pix = jnp.asarray(np.random.RandomState(0).randn(1, 512, cfg.patch_dim).astype(np.float32))
  params = registry.init_params(PenguinEncoder(cfg), jax.random.PRNGKey(0))
  out = {impl: PenguinEncoder(dataclasses.replace(cfg, attention=impl, splash_block_size=128))
         .apply({"params": params}, pix, seg, pos) for impl in ("splash", "xla")}
  valid = np.asarray(seg[0]) > 0
  np.testing.assert_allclose(np.asarray(out["splash"])[0][valid], np.asarray(out["xla"])[0][valid],
                             atol=1e-4, rtol=1e-4)
