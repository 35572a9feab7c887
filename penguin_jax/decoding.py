"""Greedy generation with a KV cache (decoding for evaluation is greedy, docs/design.md §3).

Works for `Qwen3ForCausalLM` (token prompts) and, through `prompt_embeds`, for Penguin-VL
(the prompt's embeddings with visual features already written in, from
`PenguinVL.embed_multimodal`). Prompts of different lengths share a batch left-padded:
`prompt_mask` [b, p] is 1 on real tokens, 0 on the padding before them; positions count
real tokens only, and no real token attends to padding, so each row decodes as it would
alone.

Two ways to run it:
* `greedy_generate`: one jitted program (prefill + `lax.scan` over the new tokens),
  a fixed number of tokens;
* `prefill` + `decode_step` called from Python (`stream_greedy`): one token per call,
  read back as it is produced (streaming), stopping when every row has hit a stop token.
Both produce the same tokens.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from penguin_jax.qwen3 import Qwen3ForCausalLM


def init_cache(model: Qwen3ForCausalLM, batch: int, max_length: int):
  """Zeroed KV cache for `max_length` tokens ([b, max_length, kv_heads, head_dim] per
  layer, and each slot's segment id); its shapes come from an abstract init, nothing is
  computed."""
  dm = model.clone(decode=True)
  shapes = jax.eval_shape(lambda: dm.init(jax.random.PRNGKey(0),
                                          jnp.zeros((batch, max_length), jnp.int32)))
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["cache"])


def _prompt_layout(prompt_embeds, prompt_mask):
  """-> (mask [b, p] int32, positions [b, p], real lengths [b])."""
  b, p = prompt_embeds.shape[:2]
  if prompt_mask is None:
    prompt_mask = jnp.ones((b, p), jnp.int32)
  mask = prompt_mask.astype(jnp.int32)
  positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)           # real tokens only
  return mask, positions, jnp.sum(mask, axis=1)


def _embeds(model, params, input_ids, prompt_embeds):
  if (input_ids is None) == (prompt_embeds is None):
    raise ValueError("pass exactly one of input_ids or prompt_embeds")
  if prompt_embeds is None:
    prompt_embeds = model.apply({"params": params}, input_ids, method=Qwen3ForCausalLM.embed)
  return prompt_embeds


@functools.partial(jax.jit, static_argnames=("model", "max_length"))
def prefill(model: Qwen3ForCausalLM, params, prompt_embeds, prompt_mask=None, *,
            max_length: int):
  """Run the prompt [b, p, e] through the decoder into a fresh cache of `max_length`
  slots. -> (cache, first new token [b], real prompt lengths [b])."""
  dm = model.clone(decode=True)
  mask, positions, lengths = _prompt_layout(prompt_embeds, prompt_mask)
  cache = init_cache(model, prompt_embeds.shape[0], max_length)
  logits, mut = dm.apply({"params": params, "cache": cache}, segment_ids=mask,
                         positions=positions, inputs_embeds=prompt_embeds, mutable=["cache"])
  return mut["cache"], jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32), lengths


@functools.partial(jax.jit, static_argnames=("model",), donate_argnames=("cache",))
def decode_step(model: Qwen3ForCausalLM, params, cache, token, position):
  """One greedy step: token [b] at position [b] -> (cache, next token [b])."""
  dm = model.clone(decode=True)
  logits, mut = dm.apply({"params": params, "cache": cache}, token[:, None],
                         positions=position[:, None], mutable=["cache"])
  return mut["cache"], jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens"))
def greedy_generate(model: Qwen3ForCausalLM, params, input_ids=None, *, max_new_tokens: int,
                    prompt_embeds=None, prompt_mask=None):
  """Prefill the prompt, then `max_new_tokens` greedy steps in one program. Returns new
  ids [b, max_new_tokens]. Pass either input_ids [b, p] or prompt_embeds [b, p, e];
  `prompt_mask` [b, p] for left-padded rows (see the module docstring)."""
  prompt_embeds = _embeds(model, params, input_ids, prompt_embeds)
  p = prompt_embeds.shape[1]
  cache, tok, lengths = prefill(model, params, prompt_embeds, prompt_mask,
                                max_length=p + max_new_tokens)
  dm = model.clone(decode=True)

  def step(carry, i):
    cache, tok = carry
    lg, mut = dm.apply({"params": params, "cache": cache}, tok[:, None],
                       positions=(lengths + i)[:, None], mutable=["cache"])
    return (mut["cache"], jnp.argmax(lg[:, -1], axis=-1).astype(jnp.int32)), tok

  (_, last), toks = jax.lax.scan(step, (cache, tok), jnp.arange(max_new_tokens - 1))
  return jnp.concatenate([toks.T, last[:, None]], axis=1)


def stream_greedy(model: Qwen3ForCausalLM, params, input_ids=None, *, max_new_tokens: int,
                  prompt_embeds=None, prompt_mask=None, stop_ids=()):
  """Greedy decoding one token per call, for streaming: yields the new tokens [b] (NumPy)
  of each step; a row that has produced a stop token keeps producing (ignore what
  follows it), and the loop ends once every row has stopped or after `max_new_tokens`.
  The first token is yielded after the prefill (its time is the prefill's)."""
  prompt_embeds = _embeds(model, params, input_ids, prompt_embeds)
  p = prompt_embeds.shape[1]
  cache, tok, lengths = prefill(model, params, prompt_embeds, prompt_mask,
                                max_length=p + max_new_tokens)
  stopped = np.zeros(tok.shape, bool)
  for i in range(max_new_tokens):
    host = np.asarray(tok)
    yield host
    stopped |= np.isin(host, stop_ids)
    if stopped.all() or i == max_new_tokens - 1:
      return
    cache, tok = decode_step(model, params, cache, tok, lengths + i)
