"""Quantized training (`model.quant`, penguin_jax/quant.py, Qwix's QtProvider): a linear
layer's int8 product against the definition computed in numpy (per-token and per-output-
column absmax scales, rounded to int8, the integers' product, rescaled); which matmuls of the
train step run in int8 (the towers' linears, forward and backward; not the projector or the
LM head); the quantized step's loss and gradients near the float32 ones and not equal to
them (negative control); a bad value is one line."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from penguin_jax import layers, quant


class _Tower(nn.Module):
  """A module path like the encoder's: llm/layer/q_proj, and a linear the rules skip."""

  @nn.compact
  def __call__(self, x):
    class Layer(nn.Module):
      @nn.compact
      def __call__(self, x):
        return (layers.Linear(24, ("embed", "mlp"), name="q_proj")(x),
                layers.Linear(24, ("embed", "mlp"), name="linear_1")(x))
    return Layer(name="layer")(x)


class _Model(nn.Module):
  @nn.compact
  def __call__(self, x):
    return _Tower(name="llm")(x)


def _int8_reference(x, w):
  """The definition (symmetric int8, Qwix's bound): per-row (token) scales of x and
  per-column scales of w, absmax / 127.5 (the 127 bucket spans [126.5, 127.5)), each
  value q = clip(round(v / scale), -128, 127); the integers' product (exact in float64),
  rescaled. In float32 as XLA:CPU computes it: a division as a product with the
  reciprocal (x / 127.5 as x * float32(1 / 127.5)), which moves a few values across a
  rounding boundary."""
  x, w = np.asarray(x, np.float32), np.asarray(w, np.float32)
  one, inv_bound = np.float32(1), np.float32(1 / 127.5)
  sx = np.abs(x).max(axis=1, keepdims=True) * inv_bound
  sw = np.abs(w).max(axis=0, keepdims=True) * inv_bound
  qx, qw = (np.clip(np.round(v * (one / s)), -128, 127) for v, s in ((x, sx), (w, sw)))
  return (qx.astype(np.float64) @ qw.astype(np.float64)) * sx * sw


def test_an_int8_linear_is_the_definition_and_others_stay_float():
  x = jax.random.normal(jax.random.key(1), (10, 16))
  model = _Model()
  params = model.init(jax.random.key(0), x)
  q_plain, other_plain = model.apply(params, x)
  q_int8, other = quant.quantize(model, "int8").apply(params, x)
  w = nn.unbox(params)["params"]["llm"]["layer"]["q_proj"]["kernel"]
  ref = _int8_reference(x, w)
  np.testing.assert_allclose(np.asarray(q_int8), ref, rtol=1e-5, atol=1e-5)
  assert np.abs(np.asarray(q_plain) - ref).max() > 1e-3        # int8 is not the float product
  np.testing.assert_array_equal(np.asarray(other), np.asarray(other_plain))   # not a target


def test_an_fp8_linear_runs_its_product_in_float8():
  """fp8 (GPU configs): both operands cast to float8_e4m3fn (3 mantissa bits) with
  absmax scales; near the float product, not equal to it; differentiable."""
  x = jax.random.normal(jax.random.key(1), (10, 16))
  model = _Model()
  params = model.init(jax.random.key(0), x)
  fp8 = quant.quantize(model, "fp8")
  q, _ = fp8.apply(params, x)
  plain, _ = model.apply(params, x)
  rel = float(jnp.abs(q - plain).max() / jnp.abs(plain).max())
  assert 1e-4 < rel < 0.06, rel
  assert str(jax.make_jaxpr(lambda p: fp8.apply(p, x))(params)).count("f8_e4m3fn") == 2
  g = jax.grad(lambda p: fp8.apply(p, x)[0].sum())(params)
  assert float(jnp.abs(nn.unbox(g)["params"]["llm"]["layer"]["q_proj"]["kernel"]).sum()) > 0


def _count_int8_dots(fn, *args) -> int:
  return str(jax.make_jaxpr(fn)(*args)).count("preferred_element_type=int32")


@pytest.mark.slow
def test_the_train_loss_runs_the_towers_linears_in_int8_forward_and_backward():
  """A tiny VLM (unscanned: every layer in the jaxpr): 7 linears per layer in the encoder
  and the LLM; the forward has one int8 product each, the gradient three (the forward
  again, the input and the weight gradients); the projector and the LM head none. Loss and
  gradients near float32's, not equal to them."""
  from penguin_jax import registry
  from penguin_jax.losses import LossConfig
  from penguin_jax.train.step import vlm_loss
  from penguin_jax.vlm import PenguinVL
  from test_sharding import _batch
  from test_train_step import _labelled
  from test_vlm import tiny_vlm_config
  cfg = tiny_vlm_config()
  n_linears = 7 * (cfg.encoder.num_layers + cfg.llm.num_layers)
  model = PenguinVL(cfg)
  params = registry.init_params(model, jax.random.PRNGKey(0))
  batch = _labelled(_batch())
  out = {}
  for q in ("none", "int8"):
    m = quant.quantize(model, q)
    loss = lambda pr, m=m: vlm_loss(pr, batch, model=m, loss=LossConfig(chunk_size=8))[0]
    out[q] = jax.jit(jax.value_and_grad(loss))(params)
    fwd, grad = _count_int8_dots(loss, params), _count_int8_dots(jax.grad(loss), params)
    assert (fwd, grad) == ((0, 0) if q == "none" else (n_linears, 3 * n_linears)), (q, fwd, grad)
  (l0, g0), (l1, g1) = out["none"], out["int8"]
  assert float(l0) != float(l1) and abs(float(l1) - float(l0)) < 0.02 * abs(float(l0))
  a, b = (np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)]) for g in (g0, g1))
  cos = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
  assert 0.98 < cos < 1.0, cos


def test_an_unknown_quant_is_one_line():
  with pytest.raises(ValueError, match="config.model.quant='int4': use one of none, int8, fp8"):
    quant.quantize(None, "int4")
