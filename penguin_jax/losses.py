"""Losses, as pure functions of arrays.

* Language-model cross-entropy (docs/design.md §2.4) with the "batch" and "sequence" reduction
  scopes (both as the release reduces them), the LM head fused into it and computed only where labels are (`lm_loss`,
  `lm_head_cross_entropy`); denominators can be a larger batch's (gradient accumulation).
* The reconstruction (distillation) losses of stage 1a (docs/design.md §1.4): `amplitude_loss`,
  `direction_loss`, `relation_loss` (scope "image" = block-diagonal, or "batch" = the
  release's all-pairs Gram over a chip's local batch) and their sum `reconstruction_loss`.

Labels follow Hugging Face: aligned with the inputs, -100 = ignore; the loss shifts them
(hidden state i predicts label i+1) and never across a packed-sequence boundary.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Optional, Union

import jax
import jax.numpy as jnp
import optax

from penguin_jax.settings import setting
from penguin_jax.sharding import axis_size, mesh_axes, per_device

IGNORE_INDEX = -100  # docs/design.md §2.3


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """The losses' settings (a run config's `loss.*`), declared once."""
  scope: str = setting("batch", "LM loss reduction: 'batch' (over the global batch's label "
                       "tokens) or 'sequence' (each sequence's mean, then their mean)")
  max_label_tokens: int = setting(0, "0: the LM head on every position; else on at most this "
                                  "many label positions per row")
  chunk_size: int = setting(1024, "positions per chunk of the fused LM head + cross-entropy")
  reconstruction_weight: float = setting(
      3.0, "stage 1a: weight of amplitude + direction + relation (docs/design.md §1.4)")
  reconstruction_weight_end: float = setting(
      2.0, "the weight falls linearly to this over total_steps, as the release; -1: constant")
  relation_scope: str = setting(
      "image", "relation loss pairs: 'image' (inside an image / frame), 'batch' (all visual "
      "tokens of a chip's local batch, the release's) or 'none' (no relation term)")

  def reconstruction_schedule(self, total_steps: int) -> Union[float, Callable]:
    """The reconstruction weight: constant, or with `reconstruction_weight_end` >= 0 a
    schedule step -> weight falling linearly over `total_steps` (the release: 3 -> 2)."""
    w0, w1 = self.reconstruction_weight, self.reconstruction_weight_end
    if w1 is None or w1 < 0:
      return w0
    return optax.linear_schedule(w0, w1, total_steps)


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


# The LM head fused with the cross-entropy (`lm_head_cross_entropy`). Logits exist for one
# tile of `chunk` tokens x one vocabulary slice at a time, in the forward and again in the
# backward (a custom VJP: softmax - one-hot, no autodiff through the loops). The loops run
# per device (shard_map) with the vocabulary slice outermost:
#   forward   per slice: gather that slice of the head weight over the embed axis (fsdp),
#             then every token tile updates running [rows, tokens] max / sum-exp / target
#             logit (an online logsumexp);
#   backward  per slice: gather it again, accumulate dh over the tiles and that slice's
#             weight gradient, then reduce-scatter the slice's gradient over the devices
#             that hold other rows.
# So no device ever holds more than one slice of the weight or of its gradient, and the
# collectives move each weight byte once per pass: one all-gather forward, one backward,
# one reduce-scatter of the gradient (never logits). A vocabulary split over `act_vocab`
# (tensor) adds one reduction of [rows, tokens] statistics and of dh at the end.
_H, _T, _W = ("batch", None, None), ("batch", None), ("embed", "act_vocab")
VOCAB_SLICE = 8192   # target columns per vocabulary slice (rounded to a multiple of 128)


def _axes(logical: str) -> tuple:
  """The mesh axes (of more than one device) that a logical axis maps to."""
  a = mesh_axes(logical)
  a = () if a is None else ((a,) if isinstance(a, str) else tuple(a))
  return tuple(x for x in a if axis_size(x) > 1)


def _chunked(x, chunk):
  """[b, n, ...] -> [n/chunk, b, chunk, ...] (n padded with zeros / IGNORE_INDEX)."""
  n = x.shape[1]
  pad = (-n) % chunk
  fill = IGNORE_INDEX if jnp.issubdtype(x.dtype, jnp.integer) else 0
  x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2), constant_values=fill)
  return jnp.moveaxis(x.reshape(x.shape[0], -1, chunk, *x.shape[2:]), 1, 0)


def _unchunked(x, n):
  """[n/chunk, b, chunk, ...] -> [b, n, ...]."""
  x = jnp.moveaxis(x, 0, 1)
  return x.reshape(x.shape[0], -1, *x.shape[3:])[:, :n]


def _vocab_slices(vocab_local: int, target: int = VOCAB_SLICE):
  """(number of slices, columns per slice): slices of a multiple of 128 columns; the last
  one is shifted back to end at the vocabulary's end and skips the columns it repeats."""
  n = -(-vocab_local // target)
  width = -(-vocab_local // n)
  width = min(vocab_local, -(-width // 128) * 128)
  return -(-vocab_local // width), width


def _slice_of(w_local, j, width, eax):
  """Slice j of this device's head weight, gathered over the embed axes: (weight
  [e, width], first column, mask of the columns this slice owns)."""
  vl = w_local.shape[1]
  start = jnp.minimum(j * width, vl - width)
  wj = jax.lax.dynamic_slice_in_dim(w_local, start, width, axis=1)
  if eax:
    wj = jax.lax.all_gather(wj, eax, axis=0, tiled=True)
  owns = start + jnp.arange(width) >= j * width
  return wj, start, owns


def _target_in_slice(t, start, width, owns, vocab_local, vax):
  """Column of each target inside the slice, and whether the slice owns it."""
  v0 = jax.lax.axis_index(vax) * vocab_local if vax else 0
  col = t - v0 - start
  inside = (t >= 0) & (col >= 0) & (col < width)
  return col, inside & owns[jnp.clip(col, 0, width - 1)]


@jax.named_scope("lm_head_loss")
def _ce_local_fwd(h, t, w, *, chunk):
  """Per device: h [b, n, e], t [b, n], w [e_local, V_local] -> (loss, lse, hit) [b, n]
  f32; hit = 1 where the target is the arg max of the logits (per-token accuracy)."""
  vax, eax = _axes("act_vocab"), _axes("embed")
  n, vl = h.shape[1], w.shape[1]
  hc, tc = _chunked(h, chunk), _chunked(t, chunk)               # [nt, b, c, e], [nt, b, c]
  n_slices, width = _vocab_slices(vl)

  def slice_body(carry, j):
    m, s, tl = carry                                            # [nt, b, c] each
    wj, start, owns = _slice_of(w, j, width, eax)

    def tile(_, x):
      hh, tt = x
      lg = jnp.einsum("bce,ev->bcv", hh, wj, preferred_element_type=jnp.float32)
      lg = jnp.where(owns, lg, -jnp.inf)
      col, hit = _target_in_slice(tt, start, width, owns, vl, vax)
      tgt = jnp.take_along_axis(lg, jnp.clip(col, 0, width - 1)[..., None], -1)[..., 0]
      mj = jnp.max(lg, axis=-1)
      return None, (mj, jnp.sum(jnp.exp(lg - mj[..., None]), -1), jnp.where(hit, tgt, 0.0))

    _, (mj, sj, tj) = jax.lax.scan(tile, None, (hc, tc))
    mn = jnp.maximum(m, mj)
    return (mn, s * jnp.exp(m - mn) + sj * jnp.exp(mj - mn), tl + tj), None

  init = (jnp.full(tc.shape, -jnp.inf), jnp.zeros(tc.shape), jnp.zeros(tc.shape))
  (m, s, tl), _ = jax.lax.scan(slice_body, init, jnp.arange(n_slices))
  if vax:  # combine the vocabulary shards' statistics, once
    mm = jax.lax.pmax(m, vax)
    s, tl, m = jax.lax.psum(s * jnp.exp(m - mm), vax), jax.lax.psum(tl, vax), mm
  lse = m + jnp.log(s)
  loss = jnp.where(tc >= 0, lse - tl, 0.0)
  hit = ((tc >= 0) & (tl >= m)).astype(jnp.float32)
  return _unchunked(loss, n), _unchunked(lse, n), _unchunked(hit, n)


@jax.named_scope("lm_head_loss")
def _ce_local_bwd(h, t, w, lse, g, *, chunk):
  """Per device: -> dh [b, n, e] (h.dtype), dw [e_local, V_local] (w.dtype), the weight
  gradient summed over every device's rows."""
  vax, bax, eax = _axes("act_vocab"), _axes("batch"), _axes("embed")
  n, e, vl = h.shape[1], h.shape[2], w.shape[1]
  hc, tc = _chunked(h, chunk), _chunked(t, chunk)
  lc, gc = _chunked(lse, chunk), _chunked(g, chunk)
  gc = jnp.where(tc >= 0, gc, 0.0)
  n_slices, width = _vocab_slices(vl)
  scatter = tuple(a for a in eax if a in bax)   # the gradient's embed split, summed on the way
  rest = tuple(a for a in bax if a not in eax)

  def slice_body(carry, j):
    dh, dw = carry
    wj, start, owns = _slice_of(w, j, width, eax)

    def tile(dwj, x):
      hh, tt, ll, gg = x
      lg = jnp.einsum("bce,ev->bcv", hh, wj, preferred_element_type=jnp.float32)
      col, hit = _target_in_slice(tt, start, width, owns, vl, vax)
      onehot = (jnp.arange(width) == col[..., None]) & hit[..., None]
      p = jnp.where(owns, jnp.exp(lg - ll[..., None]), 0.0)
      dl = ((p - onehot) * gg[..., None]).astype(wj.dtype)     # d loss / d logits
      dhh = jnp.einsum("bcv,ev->bce", dl, wj, preferred_element_type=jnp.float32)
      return dwj + jnp.einsum("bce,bcv->ev", hh, dl, preferred_element_type=jnp.float32), dhh

    dwj, dhj = jax.lax.scan(tile, jnp.zeros((e, width), jnp.float32), (hc, tc, lc, gc))
    dwj = dwj.astype(wj.dtype)    # reduced in the weight's dtype, as XLA reduces the other
    if rest:                      # gradients of bf16 matmuls
      dwj = jax.lax.psum(dwj, rest)
    if scatter:
      dwj = jax.lax.psum_scatter(dwj, scatter, scatter_dimension=0, tiled=True)
    if len(scatter) < len(eax):   # embed axes that do not split rows: keep our part
      raise ValueError("the fused LM-head loss needs the `embed` mesh axes among the `batch` "
                       f"ones (rules map embed -> {eax}, batch -> {bax})")
    dwj = jnp.where(owns, dwj.astype(jnp.float32), 0.0)
    cur = jax.lax.dynamic_slice_in_dim(dw, start, width, axis=1)
    return (dh + dhj, jax.lax.dynamic_update_slice_in_dim(dw, cur + dwj, start, axis=1)), None

  init = (jnp.zeros(hc.shape, jnp.float32), jnp.zeros((w.shape[0], vl), jnp.float32))
  (dh, dw), _ = jax.lax.scan(slice_body, init, jnp.arange(n_slices))
  if vax:
    dh = jax.lax.psum(dh, vax)
  return _unchunked(dh, n).astype(h.dtype), dw.astype(w.dtype)


def lm_head_cross_entropy(hidden, targets, kernel, chunk_size: int = 1024):
  """Per-token cross-entropy of the LM head, logits = hidden @ kernel.

  hidden [b, n, e]; targets [b, n] (IGNORE_INDEX: no loss); kernel [e, vocab] in the
  compute dtype, sharded like the parameter it comes from. Returns [b, n] float32. See
  the comment above for what runs where and what it communicates.
  """
  return lm_head_cross_entropy_and_hits(hidden, targets, kernel, chunk_size)[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def lm_head_cross_entropy_and_hits(hidden, targets, kernel, chunk_size: int = 1024):
  """(`lm_head_cross_entropy`, hits [b, n] float32: 1 where the target is the logits' arg
  max, the per-token accuracy; from the same pass, no gradient)."""
  return _lm_head_ce_fwd(hidden, targets, kernel, chunk_size)[0]


def _lm_head_ce_fwd(hidden, targets, kernel, chunk_size):
  chunk = min(chunk_size, hidden.shape[1])
  fwd = per_device(functools.partial(_ce_local_fwd, chunk=chunk), (_H, _T, _W), [_T, _T, _T])
  loss, lse, hit = fwd(hidden, targets, kernel)
  return (loss, hit), (hidden, targets, kernel, lse)


def _lm_head_ce_bwd(chunk_size, res, g):
  hidden, targets, kernel, lse = res
  g = g[0]                                  # hits have no gradient
  chunk = min(chunk_size, hidden.shape[1])
  bwd = per_device(functools.partial(_ce_local_bwd, chunk=chunk), (_H, _T, _W, _T, _T),
                   [_H, _W])
  dh, dw = bwd(hidden, targets, kernel, lse, g)
  return dh, None, dw


lm_head_cross_entropy_and_hits.defvjp(_lm_head_ce_fwd, _lm_head_ce_bwd)


def label_layout(labels, segment_ids, max_label_tokens: Optional[int] = None):
  """Where the LM head runs: (positions [b, n] or None, targets [b, n], segment ids
  [b, n], dropped label tokens). With a static `max_label_tokens` budget per row, the
  head runs on that many gathered positions instead of all s (image tokens and prompts
  carry no labels, so this saves most of a VLM's LM-head FLOPs); labels beyond the budget
  are dropped and counted. A function of the data alone (see `lm_normalizer`)."""
  b, s = labels.shape
  seg = segment_ids if segment_ids is not None else jnp.ones_like(labels)
  targets = shifted_targets(labels, segment_ids)                     # [b, s]
  if max_label_tokens is None or max_label_tokens >= s:
    return None, targets, seg, jnp.zeros((), jnp.int32)
  k = max_label_tokens
  valid = targets != IGNORE_INDEX
  n_valid = jnp.sum(valid, axis=1)                                   # [b]
  pos = jax.vmap(lambda v: jnp.nonzero(v, size=k, fill_value=0)[0])(valid)  # [b, k]
  keep = jnp.arange(k)[None, :] < n_valid[:, None]
  targets = jnp.where(keep, jnp.take_along_axis(targets, pos, axis=1), IGNORE_INDEX)
  return pos, targets, jnp.take_along_axis(seg, pos, axis=1), jnp.sum(jnp.maximum(n_valid - k, 0))


def _sequence_keys(segment_ids, max_id=None):
  """A global id per (row, segment): [b, n] -> flat [b*n] keys, number of keys.
  `max_id`: bound on the ids (default n; a gathered row's ids go up to the full length)."""
  b, n = segment_ids.shape
  m = (n if max_id is None else max_id) + 1
  return (jnp.arange(b)[:, None] * m + segment_ids).reshape(-1), b * m


def reduce_token_loss(token_loss, mask, segment_ids, scope: str, denominator=None,
                      max_segment_id=None):
  """Reduce per-token losses [b, s] (mask: counted tokens) by docs/design.md §2.4's scopes.

  "batch":    sum over label tokens / number of label tokens.
  "sequence": mean per sequence (each packed sequence separately), then divided by the
              number of packed sequences, counting those without a label token too
              (they add 0 to the sum and 1 to the count). This is the release's choice
              (`penguinvl/model/loss.py` with the trainer's `num_items_in_batch` = number
              of `position_ids == 0`, docs/design.md §2.4), not a mean over labelled sequences.
  `denominator` replaces the count (number of label tokens / sequences) by that of a
  larger batch (gradient accumulation: every micro-batch divides by the global count).
  Without one, the sequences are those of `segment_ids` (ids > 0; 0 is padding).
  """
  mask = mask.astype(jnp.float32)
  if scope not in ("batch", "sequence"):
    raise ValueError(f"unknown loss reduction scope {scope!r}: use 'batch' or 'sequence'")
  if denominator is None:
    denominator = _token_loss_count(mask, segment_ids, scope, max_segment_id)
  if scope == "batch":
    return jnp.sum(token_loss * mask) / jnp.maximum(denominator, 1.0)
  key, n = _sequence_keys(segment_ids, max_segment_id)
  counts = jax.ops.segment_sum(mask.reshape(-1), key, num_segments=n)
  per_tok = mask.reshape(-1) / jnp.maximum(counts[key], 1.0)
  return jnp.sum(token_loss.reshape(-1) * per_tok) / jnp.maximum(denominator, 1.0)


def _token_loss_count(mask, segment_ids, scope, max_segment_id=None):
  """"batch": label tokens of `mask`; "sequence": packed sequences of `segment_ids`."""
  if scope == "batch":
    return jnp.sum(mask.astype(jnp.float32))
  return sequence_count(segment_ids, max_segment_id)


def sequence_count(segment_ids, max_segment_id=None):
  """Number of packed sequences in [b, s] segment ids (ids > 0; 0 is padding), with or
  without label tokens: the release's "sequence" denominator (docs/design.md §2.4)."""
  key, n = _sequence_keys(segment_ids, max_segment_id)
  present = jax.ops.segment_sum((segment_ids > 0).reshape(-1).astype(jnp.float32), key,
                                num_segments=n)
  return jnp.sum(present > 0).astype(jnp.float32)


def lm_normalizer(labels, segment_ids, scope: str = "batch",
                  max_label_tokens: Optional[int] = None):
  """The denominator of `lm_loss` for this batch, from the data alone: label tokens the
  head sees ("batch") or every packed sequence, labelled or not ("sequence")."""
  if scope == "sequence":
    return sequence_count(segment_ids if segment_ids is not None else jnp.ones_like(labels))
  _, targets, seg, _ = label_layout(labels, segment_ids, max_label_tokens)
  return _token_loss_count(targets != IGNORE_INDEX, seg, scope, labels.shape[1])


def lm_loss(hidden, labels, segment_ids, head_kernel, *, scope: str = "batch",
            chunk_size: int = 1024, max_label_tokens: Optional[int] = None,
            denominator=None):
  """Next-token cross-entropy with the LM head computed only where it is needed.

  hidden [b, s, e]; labels, segment_ids [b, s]; head_kernel [e, vocab] (the LM head, or
  the tied embedding transposed). `max_label_tokens`: see `label_layout`; `denominator`:
  see `reduce_token_loss`. Returns (loss, metrics with `label_tokens` and
  `dropped_label_tokens`).
  """
  pos, targets, seg, dropped = label_layout(labels, segment_ids, max_label_tokens)
  if pos is not None:
    hidden = jnp.take_along_axis(hidden, pos[..., None], axis=1)     # [b, k, e]
  tok, hit = lm_head_cross_entropy_and_hits(hidden, targets, head_kernel.astype(hidden.dtype),
                                            chunk_size)
  mask = targets != IGNORE_INDEX
  if denominator is None:   # from the whole rows: a gathered row lacks label-less sequences
    denominator = lm_normalizer(labels, segment_ids, scope, max_label_tokens)
  loss = reduce_token_loss(tok, mask, seg, scope, denominator, labels.shape[1])
  return loss, {"label_tokens": jnp.sum(mask), "dropped_label_tokens": dropped,
                "correct_tokens": jnp.sum(hit).astype(jnp.int32)}


# --------------------------------------------------------------------------- reconstruction
def smooth_l1(x, y, beta: float):
  """Elementwise smooth-L1 as torch.nn.functional.smooth_l1_loss: optax's Huber loss
  with delta = beta, divided by beta."""
  return optax.losses.huber_loss(x, y, delta=beta) / beta


def _masked_mean(x, mask, denominator=None):
  """Mean of x over mask; `denominator` replaces the mask's count (gradient accumulation:
  every micro-batch divides by the count of the whole batch)."""
  mask = mask.astype(jnp.float32)
  denominator = jnp.sum(mask) if denominator is None else denominator
  return jnp.sum(x * mask) / jnp.maximum(denominator, 1.0)


def _safe_norm(x, eps, keepdims=False):
  """max(||x||, eps) with a finite gradient at x = 0 (padding tokens are all-zero)."""
  return jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=keepdims), eps * eps))


def _l2_normalize(x, eps=1e-12):  # as torch F.normalize
  return x / _safe_norm(x, eps, keepdims=True)


def amplitude_loss(student, teacher, valid, beta: float = 1e-3, denominator=None):
  """smooth-L1(student, teacher, beta), mean over the elements of valid tokens.
  student, teacher [b, V, d]; valid [b, V] bool."""
  per = smooth_l1(student.astype(jnp.float32), teacher.astype(jnp.float32), beta)
  return _masked_mean(jnp.mean(per, axis=-1), valid, denominator)


def direction_loss(student, teacher, valid, eps: float = 1e-8, denominator=None):
  """1 - mean over valid tokens of cosine(student, teacher). With a `denominator` (the
  whole batch's token count) the micro-batch's share: sum(1 - cos) / denominator."""
  # optax clips the squared norms: eps^2 there is max(||x||, eps) here (finite gradient on
  # the all-zero padding tokens)
  cos = optax.losses.cosine_similarity(student.astype(jnp.float32),
                                       teacher.astype(jnp.float32), epsilon=eps * eps)
  if denominator is None:
    return 1.0 - _masked_mean(cos, valid)
  return _masked_mean(1.0 - cos, valid, denominator)


def relation_loss(student, teacher, token_segment_ids, scope: str = "image",
                  beta: float = 1e-3, denominator=None, local_rows: Optional[int] = None):
  """smooth-L1 between token-to-token similarity (Gram) matrices of L2-normalised
  student and teacher features, mean over the pairs in scope.

  token_segment_ids [b, V]: the image / frame of each visual token, 0 = padding.
  scope "image": pairs inside one image or frame (block-diagonal).
        "batch": all pairs of valid tokens of the local batch, as the release does (one
                 Gram over a GPU's micro-batch, cross-image pairs included). The local
                 batch is each group of `local_rows` consecutive rows (the rows one chip
                 holds; None = all b rows).
  Both compute [b / local_rows, N, N] Grams with N = local_rows * V (image: local_rows =
  1, pairs masked), float32: 4 N^2 bytes per Gram, and a few such arrays live at once.
        "none": no relation term: 0, no Gram computed (`launch.demo --ablation`).
  """
  if scope == "none":
    return jnp.zeros((), jnp.float32)
  if scope not in ("image", "batch"):
    raise ValueError(f"unknown relation loss scope {scope!r}: use 'image', 'batch' or 'none'")
  s, t, seg = _local_batches(student, teacher, token_segment_ids,
                             local_rows if scope == "batch" else 1)
  s = _l2_normalize(s.astype(jnp.float32))          # [groups, N, e]
  t = _l2_normalize(t.astype(jnp.float32))
  gs = jnp.einsum("gid,gjd->gij", s, s)             # [groups, N, N]
  gt = jnp.einsum("gid,gjd->gij", t, t)
  return _masked_mean(smooth_l1(gs, gt, beta), _relation_pairs(seg, scope), denominator)


def _local_batches(student, teacher, token_segment_ids, local_rows: Optional[int]):
  """[b, V, ...] -> [b / local_rows, local_rows * V, ...] (consecutive rows together)."""
  b, v = token_segment_ids.shape
  r = local_rows or b
  if b % r:
    raise ValueError(f"relation loss: {b} rows do not split into local batches of {r}")
  group = lambda x: x.reshape(b // r, r * v, *x.shape[2:])
  return group(student), group(teacher), group(token_segment_ids)


def _relation_pairs(token_segment_ids, scope: str):
  """The token pairs that the relation loss compares, [groups, N, N] bool: same image
  or frame ("image"), or any two valid tokens of the group ("batch")."""
  valid = token_segment_ids != 0
  pairs = valid[:, :, None] & valid[:, None, :]
  if scope == "image":
    pairs &= token_segment_ids[:, :, None] == token_segment_ids[:, None, :]
  return pairs


def reconstruction_normalizers(token_segment_ids, relation_scope: str = "image",
                               local_rows: Optional[int] = None) -> dict:
  """The denominators of the reconstruction losses for this batch, from the data alone:
  valid visual tokens (amplitude, direction) and compared pairs (relation)."""
  valid = token_segment_ids != 0
  if relation_scope == "none":   # no relation term (an ablation)
    return {"tokens": jnp.sum(valid).astype(jnp.float32), "pairs": jnp.zeros((), jnp.float32)}
  if relation_scope == "image":  # sum over frames of tokens^2, without the [b, V, V] mask
    key, n = _sequence_keys(token_segment_ids)
    per = jax.ops.segment_sum(valid.reshape(-1).astype(jnp.float32), key, num_segments=n)
  else:                          # sum over local batches of tokens^2
    b = valid.shape[0]
    per = jnp.sum(valid.reshape(b // (local_rows or b), -1), axis=1).astype(jnp.float32)
  return {"tokens": jnp.sum(valid).astype(jnp.float32), "pairs": jnp.sum(per * per)}


def reconstruction_loss(student, teacher, token_segment_ids, *, relation_scope="image",
                        beta: float = 1e-3, normalizers: Optional[dict] = None,
                        local_rows: Optional[int] = None):
  """amplitude + direction + relation (docs/design.md §1.4), each returned too.
  student: the distill head's output [b, V, teacher_e]; teacher [b, V, teacher_e].
  `normalizers`: `reconstruction_normalizers` of a larger batch (gradient accumulation)."""
  valid = token_segment_ids != 0
  n = normalizers or {}
  parts = {
      "amplitude": amplitude_loss(student, teacher, valid, beta, n.get("tokens")),
      "direction": direction_loss(student, teacher, valid, denominator=n.get("tokens")),
      "relation": relation_loss(student, teacher, token_segment_ids, relation_scope, beta,
                                n.get("pairs"), local_rows),
  }
  return parts["amplitude"] + parts["direction"] + parts["relation"], parts
