"""LoRA and QLoRA: low-rank adapters on a frozen base, the base optionally quantized.

A targeted linear layer y = x W becomes y = x W + (alpha / r) dropout(x) A B, A [in, r]
(random) and B [r, out] (zeros: the adapted model starts as the base) the only weights
that train. Targeted: the q/k/v/o and gate/up/down projections of the towers in
`LoraConfig.modules` (the LLM by default; docs/design.md §5), and the projector's two
linears when it is named. The base stays frozen in `base_dtype`: bfloat16 or float32
(LoRA), or quantized (QLoRA, the release's `--bits 8 / 4`):

  int8   per output column: W = q * scale, q in [-127, 127], scale = max |W| / 127
  nf4    blocks of 64 inputs per output column: W = NF4[code] * absmax (QLoRA's 4-bit
         NormalFloat codebook, Dettmers et al. 2023), two codes per byte

Why our own adapters (in `layers.Linear`) and not Qwix's `LoraProvider`: tried on this
model (qwix 0.1.8, flax 0.12), it added no adapter to the layers under `nn.scan` (the 2b
and 8b towers are scanned) and left tracers in the logical-axis boxes of the unscanned
ones. A quantized base is stored as `kernel_q` ([in, out], or [in / 2, out] for nf4) and
`kernel_scale`, flattened to 2D; `merge` gives back the plain kernel, W + (alpha / r) A B
in float32, in the layout the HF key maps read.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from penguin_jax.settings import setting

# A tower of Penguin-VL that can get adapters -> its top-level parameter module.
TOWERS = {"llm": "llm", "encoder": "vision_encoder", "projector": "vision_projector"}
# The linear layers of a Qwen3 layer that get adapters (the release's find_all_linear_names).
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
BASE_DTYPES = ("bfloat16", "float32", "int8", "nf4")
NF4_BLOCK = 64
NF4 = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
                -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
                0.07958029955625534, 0.16093020141124725, 0.24611230194568634,
                0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                0.7229568362236023, 1.0], np.float32)
ADAPTERS = ("lora_a", "lora_b")
QUANTIZED = ("kernel_q", "kernel_scale")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """LoRA / QLoRA settings (a run config's `lora.*`), declared once."""
  rank: int = setting(0, "adapter rank r; 0: no adapters (trainable modules train in full)")
  alpha: float = setting(16.0, "adapters' scale: the update is (alpha / r) A B (the release: 16)")
  dropout: float = setting(0.05, "dropout on the adapters' input while training (the release: 0.05)")
  modules: tuple[str, ...] = setting(
      ("llm",), "towers whose q/k/v/o and gate/up/down projections get adapters: llm, "
      "encoder; projector (its two linears)")
  base_dtype: str = setting(
      "bfloat16", "the frozen base: bfloat16 or float32 (LoRA); int8 or nf4 (QLoRA)")
  train_in_full: tuple[str, ...] = setting(
      (), "top-level modules that train in full beside the adapters, e.g. vision_projector "
      "(the release's LoRA trains the adapters alone)")

  def __post_init__(self):
    unknown = sorted(set(self.modules) - set(TOWERS))
    if unknown:
      raise ValueError(f"lora.modules: unknown {unknown}; choose from {sorted(TOWERS)}")
    if self.base_dtype not in BASE_DTYPES:
      raise ValueError(f"lora.base_dtype={self.base_dtype!r}: one of {BASE_DTYPES}")
    if self.rank < 0:
      raise ValueError(f"lora.rank={self.rank}: 0 (off) or more")

  @property
  def on(self) -> bool:
    return self.rank > 0

  @property
  def quant(self) -> str:
    return self.base_dtype if self.base_dtype in ("int8", "nf4") else "none"

  def spec(self, tower: str) -> Optional["LoraSpec"]:
    """The adapter of the targeted layers of `tower` (llm / encoder / projector), or None."""
    if not self.on or tower not in self.modules:
      return None
    return LoraSpec(self.rank, float(self.alpha), float(self.dropout), self.quant)

  def adapted(self) -> tuple[str, ...]:
    """The top-level parameter modules with adapters."""
    return tuple(TOWERS[m] for m in self.modules) if self.on else ()


@dataclasses.dataclass(frozen=True)
class LoraSpec:
  """A targeted linear layer's adapter: rank, alpha, dropout, how its base is stored."""
  rank: int
  alpha: float
  dropout: float = 0.0
  quant: str = "none"          # "none" | "int8" | "nf4"

  @property
  def scale(self) -> float:
    return self.alpha / self.rank


# --------------------------------------------------------------------------- quantization
def quantized_shapes(n_in: int, n_out: int, quant: str) -> tuple[tuple, tuple]:
  """(kernel_q shape, kernel_scale shape) of a [n_in, n_out] kernel."""
  if quant == "int8":
    return (n_in, n_out), (1, n_out)
  if n_in % NF4_BLOCK:
    raise ValueError(f"nf4: {n_in} inputs are not a whole number of {NF4_BLOCK}-input blocks")
  return (n_in // 2, n_out), (n_in // NF4_BLOCK, n_out)


def quantize(w, quant: str) -> dict:
  """A [in, out] kernel (NumPy) -> {"kernel_q", "kernel_scale"}."""
  w = np.asarray(w, np.float32)
  if quant == "int8":
    scale = np.max(np.abs(w), axis=0, keepdims=True) / 127.0                   # [1, out]
    scale = np.where(scale == 0, 1.0, scale).astype(np.float32)
    return {"kernel_q": np.clip(np.round(w / scale), -127, 127).astype(np.int8),
            "kernel_scale": scale}
  n_in, n_out = w.shape
  quantized_shapes(n_in, n_out, quant)
  blocks = w.reshape(n_in // NF4_BLOCK, NF4_BLOCK, n_out)
  absmax = np.max(np.abs(blocks), axis=1)                                       # [in/64, out]
  absmax = np.where(absmax == 0, 1.0, absmax).astype(np.float32)
  normed = (blocks / absmax[:, None, :]).reshape(n_in, n_out)
  mids = (NF4[1:] + NF4[:-1]) / 2                                               # nearest level
  codes = np.searchsorted(mids, normed).astype(np.uint8)
  return {"kernel_q": (codes[0::2] | (codes[1::2] << 4)).astype(np.uint8), "kernel_scale": absmax}


def dequantize(q, scale, quant: str, dtype=jnp.float32):
  """{"kernel_q", "kernel_scale"} -> the [in, out] kernel (jax or NumPy, as given)."""
  xp = np if isinstance(q, np.ndarray) else jnp
  if quant == "int8":
    return (q.astype(xp.float32) * scale).astype(dtype)
  codes = xp.stack([q & 0xF, q >> 4], axis=1).reshape(q.shape[0] * 2, q.shape[1])
  w = xp.asarray(NF4)[codes.astype(xp.int32)]
  w = w.reshape(-1, NF4_BLOCK, w.shape[1]) * scale[:, None, :]
  return w.reshape(codes.shape).astype(dtype)


# --------------------------------------------------------------------------- trees
def is_adapter(path: tuple) -> bool:
  return path[-1] in ADAPTERS


def trainable(path: tuple, modules, lora: LoraConfig) -> bool:
  """Does the leaf at `path` train? Without LoRA: when its top-level module is one of
  `modules` (config.optim.trainable). With LoRA: when it is an adapter, or its module is
  one of `lora.train_in_full`; the rest is the frozen base."""
  if not lora.on:
    return path[0] in modules
  return (is_adapter(path) and path[0] in lora.adapted()) or path[0] in lora.train_in_full


def merge(params: dict, lora: LoraConfig, kernel_shapes: dict) -> dict:
  """Unscanned parameters with adapters (and a quantized base) -> the plain tree of the same
  model: each adapted kernel W + (alpha / r) A B in float32 (the base dequantized), in its
  plain shape (`kernel_shapes`: kernel path -> shape, of the model without LoRA); every
  other leaf as it is."""
  flat = traverse_util.flatten_dict(params)
  nodes = {p[:-1] for p in flat if p[-1] in ADAPTERS + QUANTIZED}
  out = {p: v for p, v in flat.items() if p[:-1] not in nodes}
  for node in nodes:
    shape = kernel_shapes[(*node, "kernel")]
    if (*node, "kernel_q") in flat:
      w = dequantize(np.asarray(flat[(*node, "kernel_q")]),
                     np.asarray(flat[(*node, "kernel_scale")]), lora.quant, np.float32)
    else:
      w = np.asarray(flat[(*node, "kernel")], np.float32)
    w = w.reshape(shape)
    if (*node, "lora_a") in flat:
      a = np.asarray(flat[(*node, "lora_a")], np.float32)
      b = np.asarray(flat[(*node, "lora_b")], np.float32)
      rank = a.shape[-1]
      w = w + (lora.alpha / rank) * (a.reshape(-1, rank) @ b.reshape(rank, -1)).reshape(shape)
    out[(*node, "kernel")] = w
  return traverse_util.unflatten_dict(out)


def apply(vcfg, lora: LoraConfig):
  """A VLMConfig with the adapters of `lora` on its towers (and projector)."""
  return dataclasses.replace(
      vcfg, llm=dataclasses.replace(vcfg.llm, lora=lora.spec("llm")),
      encoder=dataclasses.replace(vcfg.encoder, lora=lora.spec("encoder")),
      projector_lora=lora.spec("projector"))


def without(vcfg):
  """The same VLMConfig without adapters: the plain model a merge gives."""
  return apply(vcfg, LoraConfig())
