"""Losses, as pure functions of arrays.

* Language-model cross-entropy (DESIGN 2.4) with the "batch" and "sequence" reduction
  scopes, computed with the LM head only where labels are (`lm_loss`).
* The reconstruction (distillation) losses of stage 1a (DESIGN 1.4): `amplitude_loss`,
  `direction_loss`, `relation_loss` (scope "image" = block-diagonal, or "batch" = the
  release's all-pairs Gram) and their sum `reconstruction_loss`.

Labels follow Hugging Face: aligned with the inputs, -100 = ignore; the loss shifts them
(hidden state i predicts label i+1) and never across a packed-sequence boundary.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

IGNORE_INDEX = -100  # DESIGN 2.3


# --------------------------------------------------------------------------- LM loss
def shifted_targets(labels, segment_ids=None):
  """targets[b, i] = labels[b, i+1] where i and i+1 belong to the same (non-padding)
  sequence, else IGNORE_INDEX. [b, s] -> [b, s]."""
  nxt = jnp.concatenate([labels[:, 1:], jnp.full_like(labels[:, :1], IGNORE_INDEX)], axis=1)
  if segment_ids is not None:
    seg_next = jnp.concatenate([segment_ids[:, 1:], jnp.zeros_like(segment_ids[:, :1])], axis=1)
    same = (segment_ids == seg_next) & (segment_ids != 0)
    nxt = jnp.where(same, nxt, IGNORE_INDEX)
  return nxt


def cross_entropy(logits, targets):
  """Per-token CE [...]: logsumexp(logits) - logits[target]; targets < 0 give 0."""
  logits = logits.astype(jnp.float32)
  lse = jax.nn.logsumexp(logits, axis=-1)
  tgt = jnp.take_along_axis(logits, jnp.maximum(targets, 0)[..., None], axis=-1)[..., 0]
  return jnp.where(targets >= 0, lse - tgt, 0.0)


def chunked_cross_entropy(hidden, targets, head_fn: Callable, chunk_size: int = 1024):
  """CE of head_fn(hidden) without materialising all logits.

  hidden [n, e], targets [n] -> per-token loss [n]. Logits exist for `chunk_size` tokens
  at a time, forward and backward (each chunk is rematerialised).
  """
  n = hidden.shape[0]
  if n <= chunk_size:  # one chunk: nothing to save by rematerialising
    return cross_entropy(head_fn(hidden), targets)
  chunk = chunk_size
  pad = (-n) % chunk
  h = jnp.pad(hidden, ((0, pad), (0, 0))).reshape(-1, chunk, hidden.shape[-1])
  t = jnp.pad(targets, (0, pad), constant_values=IGNORE_INDEX).reshape(-1, chunk)

  @jax.checkpoint
  def one(args):
    hc, tc = args
    return cross_entropy(head_fn(hc), tc)

  return jax.lax.map(one, (h, t)).reshape(-1)[:n]


def reduce_token_loss(token_loss, mask, segment_ids, scope: str):
  """Reduce per-token losses [b, s] (mask: counted tokens) by DESIGN 2.4's scopes.

  "batch":    sum over label tokens / number of label tokens.
  "sequence": mean per sequence (each packed sequence separately), then mean over
              sequences that have at least one label token.
  """
  mask = mask.astype(jnp.float32)
  if scope == "batch":
    return jnp.sum(token_loss * mask) / jnp.maximum(jnp.sum(mask), 1.0)
  if scope == "sequence":
    b, s = token_loss.shape
    key = (jnp.arange(b)[:, None] * (s + 1) + segment_ids).reshape(-1)
    counts = jax.ops.segment_sum(mask.reshape(-1), key, num_segments=b * (s + 1))
    per_tok = mask.reshape(-1) / jnp.maximum(counts[key], 1.0)
    n_seq = jnp.sum(counts > 0)
    return jnp.sum(token_loss.reshape(-1) * per_tok) / jnp.maximum(n_seq, 1)
  raise ValueError(f"unknown loss reduction scope {scope!r}: use 'batch' or 'sequence'")


def lm_loss(hidden, labels, segment_ids, head_fn: Callable, *, scope: str = "batch",
            chunk_size: int = 1024, max_label_tokens: Optional[int] = None):
  """Next-token cross-entropy with the LM head computed only where it is needed.

  hidden [b, s, e]; labels, segment_ids [b, s]; head_fn: [n, e] -> [n, vocab].
  max_label_tokens: static budget of label tokens per row. The head then runs on that
  many gathered positions instead of all s (image tokens and prompts carry no labels, so
  this saves most of a VLM's LM-head FLOPs). Label tokens beyond the budget are dropped
  and counted in `dropped_label_tokens`; None = no gathering.
  Returns (loss, metrics dict with `label_tokens` and `dropped_label_tokens`).
  """
  b, s, e = hidden.shape
  targets = shifted_targets(labels, segment_ids)                     # [b, s]
  valid = targets != IGNORE_INDEX
  n_valid = jnp.sum(valid, axis=1)                                   # [b]
  seg = segment_ids if segment_ids is not None else jnp.ones_like(labels)
  if max_label_tokens is not None and max_label_tokens < s:
    k = max_label_tokens
    pos = jax.vmap(lambda v: jnp.nonzero(v, size=k, fill_value=0)[0])(valid)  # [b, k]
    keep = jnp.arange(k)[None, :] < n_valid[:, None]
    hidden = jnp.take_along_axis(hidden, pos[..., None], axis=1)     # [b, k, e]
    targets = jnp.where(keep, jnp.take_along_axis(targets, pos, axis=1), IGNORE_INDEX)
    seg = jnp.take_along_axis(seg, pos, axis=1)
    dropped = jnp.sum(jnp.maximum(n_valid - k, 0))
  else:
    dropped = jnp.zeros((), jnp.int32)
  n = hidden.shape[1]
  tok = chunked_cross_entropy(hidden.reshape(b * n, e), targets.reshape(-1), head_fn,
                              chunk_size).reshape(b, n)
  mask = targets != IGNORE_INDEX
  loss = reduce_token_loss(tok, mask, seg, scope)
  return loss, {"label_tokens": jnp.sum(mask), "dropped_label_tokens": dropped}


# --------------------------------------------------------------------------- reconstruction
def smooth_l1(x, y, beta: float):
  """Elementwise smooth-L1 (Huber / beta), as torch.nn.functional.smooth_l1_loss."""
  d = jnp.abs(x - y)
  return jnp.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta)


def _masked_mean(x, mask):
  mask = mask.astype(jnp.float32)
  return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def _safe_norm(x, eps, keepdims=False):
  """max(||x||, eps) with a finite gradient at x = 0 (padding tokens are all-zero)."""
  return jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=keepdims), eps * eps))


def _l2_normalize(x, eps=1e-12):  # as torch F.normalize
  return x / _safe_norm(x, eps, keepdims=True)


def amplitude_loss(student, teacher, valid, beta: float = 1e-3):
  """smooth-L1(student, teacher, beta), mean over the elements of valid tokens.
  student, teacher [b, V, d]; valid [b, V] bool."""
  per = smooth_l1(student.astype(jnp.float32), teacher.astype(jnp.float32), beta)
  return _masked_mean(jnp.mean(per, axis=-1), valid)


def direction_loss(student, teacher, valid, eps: float = 1e-8):
  """1 - mean over valid tokens of cosine(student, teacher)."""
  s = student.astype(jnp.float32)
  t = teacher.astype(jnp.float32)
  cos = jnp.sum(s * t, -1) / (_safe_norm(s, eps) * _safe_norm(t, eps))
  return 1.0 - _masked_mean(cos, valid)


def relation_loss(student, teacher, token_segment_ids, scope: str = "image",
                  beta: float = 1e-3):
  """smooth-L1 between token-to-token similarity (Gram) matrices of L2-normalised
  student and teacher features, mean over the pairs in scope.

  token_segment_ids [b, V]: the image / frame of each visual token, 0 = padding.
  scope "image": pairs inside one image or frame (block-diagonal, memory b*V^2, the
                 default at scale). "batch": all pairs of valid tokens of the local batch,
                 as the release does (memory (b*V)^2).
  """
  s = _l2_normalize(student.astype(jnp.float32))
  t = _l2_normalize(teacher.astype(jnp.float32))
  valid = token_segment_ids != 0
  if scope == "image":
    gs = jnp.einsum("bid,bjd->bij", s, s)
    gt = jnp.einsum("bid,bjd->bij", t, t)
    pair = (token_segment_ids[:, :, None] == token_segment_ids[:, None, :]) & valid[:, :, None]
  elif scope == "batch":
    s = s.reshape(-1, s.shape[-1])
    t = t.reshape(-1, t.shape[-1])
    v = valid.reshape(-1)
    gs, gt = s @ s.T, t @ t.T
    pair = v[:, None] & v[None, :]
  else:
    raise ValueError(f"unknown relation loss scope {scope!r}: use 'image' or 'batch'")
  return _masked_mean(smooth_l1(gs, gt, beta), pair)


def reconstruction_loss(student, teacher, token_segment_ids, *, relation_scope="image",
                        beta: float = 1e-3):
  """amplitude + direction + relation (DESIGN 1.4), each returned too.
  student: the distill head's output [b, V, teacher_e]; teacher [b, V, teacher_e]."""
  valid = token_segment_ids != 0
  parts = {
      "amplitude": amplitude_loss(student, teacher, valid, beta),
      "direction": direction_loss(student, teacher, valid),
      "relation": relation_loss(student, teacher, token_segment_ids, relation_scope, beta),
  }
  return parts["amplitude"] + parts["direction"] + parts["relation"], parts
