"""The Qwen3 decoder: Penguin-VL's LLM (docs/design.md §1.1).

`Qwen3ForCausalLM` takes token ids (or ready embeddings, which is how the VLM feeds it
visual features) and returns logits, or the final hidden states when the caller computes
the LM head itself (see `losses.lm_loss`: the head fused with the cross-entropy, only
where labels are).

Packed rows: `segment_ids` [b, s] (1, 2, ... per packed sequence, 0 = padding) restrict
attention to one sequence; `positions` [b, s] restart at 0 for each sequence.
KV-cache decoding: build with `decode=True` and use `generate.py`.
"""
from __future__ import annotations


import jax.numpy as jnp
from flax import linen as nn

from penguin_jax.model_config import Qwen3Config
from penguin_jax.layers import LayerStack, Linear, RMSNorm, _p, default_kernel_init, rope_1d


class Qwen3ForCausalLM(nn.Module):
  """Token embedding -> Qwen3 layers (causal) -> final norm -> LM head (tied or not)."""
  cfg: Qwen3Config
  decode: bool = False

  def setup(self):
    cfg = self.cfg
    self.embed_tokens = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=cfg.dtype,
                                 param_dtype=cfg.param_dtype,
                                 embedding_init=_p(default_kernel_init, ("vocab", "embed")))
    self.layers = LayerStack(cfg, causal=True, decode=self.decode)
    self.norm = RMSNorm(cfg.rms_norm_eps, cfg.dtype, cfg.param_dtype)
    if not cfg.tie_word_embeddings:
      self.lm_head = Linear(cfg.vocab_size, ("embed", "vocab"), dtype=cfg.dtype,
                            param_dtype=cfg.param_dtype)

  def embed(self, input_ids):
    """[b, s] int -> [b, s, e]."""
    return nn.with_logical_constraint(self.embed_tokens(input_ids),
                                      ("batch", "length", "act_embed"))

  def logits(self, hidden):
    """LM head: [..., e] -> [..., vocab] (float32)."""
    if self.cfg.tie_word_embeddings:
      out = self.embed_tokens.attend(hidden)
    else:
      out = self.lm_head(hidden)
    return out.astype(jnp.float32)

  def head_kernel(self):
    """The LM head as one [e, vocab] matrix in the compute dtype: the tied embedding
    transposed, or lm_head's kernel (for `losses.lm_loss`, which fuses it with the
    cross-entropy)."""
    if self.cfg.tie_word_embeddings:
      w = self.embed_tokens.embedding.T
    else:
      w = self.lm_head.variables["params"]["kernel"]
    return w.astype(self.cfg.dtype)

  def hidden_states(self, inputs_embeds, segment_ids=None, positions=None):
    """Decoder body: [b, s, e] embeddings -> [b, s, e] final-normed hidden states."""
    b, s = inputs_embeds.shape[:2]
    if segment_ids is None:
      segment_ids = jnp.ones((b, s), jnp.int32)
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s))
    cos, sin = rope_1d(positions, self.cfg.head_dim, self.cfg.rope_theta)  # [b, s, d]
    x = nn.with_logical_constraint(inputs_embeds.astype(self.cfg.dtype),
                                   ("batch", "length", "act_embed"))
    x = self.layers(x, cos, sin, segment_ids)
    return self.norm(x)

  def __call__(self, input_ids=None, segment_ids=None, positions=None, *,
               inputs_embeds=None, return_hidden: bool = False):
    """input_ids [b, s] (or inputs_embeds [b, s, e]) -> logits [b, s, vocab] float32
    (or hidden [b, s, e] with return_hidden=True)."""
    if (input_ids is None) == (inputs_embeds is None):
      raise ValueError("pass exactly one of input_ids or inputs_embeds")
    if inputs_embeds is None:
      inputs_embeds = self.embed(input_ids)
    hidden = self.hidden_states(inputs_embeds, segment_ids, positions)
    if return_hidden:
      return hidden
    return self.logits(hidden)
