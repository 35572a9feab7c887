"""The projector (`mlp2x_gelu`, docs/design.md §1.3) and the distill head (docs/design.md §1.4)."""
from __future__ import annotations

import jax.numpy as jnp
from flax import linen as nn

from penguin_jax.layers import Linear

_GELU_EXACT = lambda x: nn.gelu(x, approximate=False)  # erf GELU, as torch.nn.GELU()


class Mlp2xGelu(nn.Module):
  """Linear(encoder -> llm) -> GELU(erf) -> Linear(llm -> llm), both with bias.
  Parameter names follow the release's `readout.0` / `readout.2`."""
  out_features: int
  dtype: object = jnp.float32
  param_dtype: object = jnp.float32
  lora: object = None               # lora.LoraSpec: adapters on both linears (LoRA)

  @nn.compact
  def __call__(self, x):  # [b, V, enc_e] -> [b, V, llm_e]
    dense = lambda name, names: Linear(
        self.out_features, names, use_bias=True, dtype=self.dtype, lora=self.lora,
        param_dtype=self.param_dtype, name=name, kernel_init=nn.initializers.lecun_normal())
    x = dense("readout_0", ("embed", "mlp"))(x)
    x = _GELU_EXACT(x)
    return dense("readout_2", ("mlp", "embed"))(x)


class DistillHead(nn.Module):
  """The trainable `distill` Linear(encoder_hidden -> teacher_hidden, bias) that maps the
  student's merged features (before the projector) to the teacher's width (stage 1a)."""
  teacher_hidden_size: int
  dtype: object = jnp.float32
  param_dtype: object = jnp.float32

  @nn.compact
  def __call__(self, x):  # [b, V, enc_e] -> [b, V, teacher_e]
    return Linear(self.teacher_hidden_size, ("embed", "teacher_embed"), use_bias=True,
                  dtype=self.dtype, param_dtype=self.param_dtype, name="linear",
                  kernel_init=nn.initializers.lecun_normal())(x)


def build_projector(projector_type: str, out_features: int, dtype, param_dtype, name=None,
                    lora=None):
  if projector_type != "mlp2x_gelu":
    raise ValueError(f"unknown projector type {projector_type!r}; only 'mlp2x_gelu' "
                     "(docs/design.md §1.3) is implemented")
  return Mlp2xGelu(out_features, dtype, param_dtype, lora, name=name)
