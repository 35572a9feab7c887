"""Greedy generation with a KV cache (decoding for evaluation is greedy, DESIGN 3).

Works for `Qwen3ForCausalLM` (token prompts) and, through `prompt_embeds`, for Penguin-VL
(the prompt's embeddings with visual features already written in, from
`PenguinVL.embed_multimodal`). Prompts of one batch share a length (no padding).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from penguin_jax.qwen3 import Qwen3ForCausalLM


def init_cache(model: Qwen3ForCausalLM, batch: int, max_length: int):
  """Zeroed KV cache for `max_length` tokens ([b, max_length, kv_heads, head_dim] per
  layer); its shapes come from an abstract init, nothing is computed."""
  dm = model.clone(decode=True)
  shapes = jax.eval_shape(lambda: dm.init(jax.random.PRNGKey(0),
                                          jnp.zeros((batch, max_length), jnp.int32)))
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["cache"])


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens"))
def greedy_generate(model: Qwen3ForCausalLM, params, input_ids=None, *, max_new_tokens: int,
                    prompt_embeds=None):
  """Prefill the prompt, then `max_new_tokens` greedy steps. Returns new ids
  [b, max_new_tokens]. Pass either input_ids [b, p] or prompt_embeds [b, p, e]."""
  dm = model.clone(decode=True)
  if prompt_embeds is None:
    prompt_embeds = model.apply({"params": params}, input_ids, method=Qwen3ForCausalLM.embed)
  b, p = prompt_embeds.shape[:2]
  cache = init_cache(model, b, p + max_new_tokens)
  positions = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (b, p))
  logits, mut = dm.apply({"params": params, "cache": cache}, positions=positions,
                         inputs_embeds=prompt_embeds, mutable=["cache"])
  tok = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)          # [b]

  def step(carry, i):
    cache, tok = carry
    pos = jnp.full((b, 1), p + i, jnp.int32)
    lg, mut = dm.apply({"params": params, "cache": cache}, tok[:, None], positions=pos,
                       mutable=["cache"])
    nxt = jnp.argmax(lg[:, -1], axis=-1).astype(jnp.int32)
    return (mut["cache"], nxt), tok

  (_, last), toks = jax.lax.scan(step, (mut["cache"], tok), jnp.arange(max_new_tokens - 1))
  return jnp.concatenate([toks.T, last[:, None]], axis=1)
