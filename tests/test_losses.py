"""Losses against PyTorch's own functions (DESIGN 1.4, 2.4)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from penguin_jax import losses


def test_reconstruction_losses_match_torch_release_formulas():
  rs = np.random.RandomState(0)
  s, t = rs.randn(1, 10, 8).astype(np.float32), rs.randn(1, 10, 8).astype(np.float32)
  seg = np.ones((1, 10), np.int32)
  total, parts = losses.reconstruction_loss(jnp.asarray(s), jnp.asarray(t), jnp.asarray(seg),
                                            relation_scope="batch")
  ts, tt = torch.tensor(s[0]), torch.tensor(t[0])
  amp = F.smooth_l1_loss(ts, tt, beta=0.001)
  direction = 1 - F.cosine_similarity(ts, tt, dim=-1).mean()
  sn, tn = F.normalize(ts, dim=-1), F.normalize(tt, dim=-1)
  rel = F.smooth_l1_loss(sn @ sn.T, tn @ tn.T, beta=0.001)
  np.testing.assert_allclose(parts["amplitude"], amp.item(), rtol=1e-5)
  np.testing.assert_allclose(parts["direction"], direction.item(), rtol=1e-5)
  np.testing.assert_allclose(parts["relation"], rel.item(), rtol=1e-5)
  np.testing.assert_allclose(total, (amp + direction + rel).item(), rtol=1e-5)


def test_relation_scopes_and_padding():
  rs = np.random.RandomState(1)
  s, t = rs.randn(2, 6, 4).astype(np.float32), rs.randn(2, 6, 4).astype(np.float32)
  seg = np.array([[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 0, 0]])
  img = losses.relation_loss(jnp.asarray(s), jnp.asarray(t), jnp.asarray(seg), "image")
  # reference: mean over pairs inside each image of smooth-L1 of Grams
  vals = []
  for b in range(2):
    for g in set(seg[b]) - {0}:
      idx = np.nonzero(seg[b] == g)[0]
      a, c = F.normalize(torch.tensor(s[b, idx]), dim=-1), F.normalize(torch.tensor(t[b, idx]), dim=-1)
      vals.append(F.smooth_l1_loss(a @ a.T, c @ c.T, beta=0.001, reduction="none").reshape(-1))
  np.testing.assert_allclose(img, torch.cat(vals).mean().item(), rtol=1e-5)
  # padding features must not matter
  s2 = s.copy(); s2[0, 5] = 100.0; s2[1, 4:] = -7.0
  img2 = losses.relation_loss(jnp.asarray(s2), jnp.asarray(t), jnp.asarray(seg), "image")
  bat2 = losses.relation_loss(jnp.asarray(s2), jnp.asarray(t), jnp.asarray(seg), "batch")
  bat = losses.relation_loss(jnp.asarray(s), jnp.asarray(t), jnp.asarray(seg), "batch")
  np.testing.assert_allclose(img, img2, rtol=1e-6)
  np.testing.assert_allclose(bat, bat2, rtol=1e-6)
  assert abs(float(bat) - float(img)) > 1e-4  # the scopes differ


def _ce_setup():
  rs = np.random.RandomState(2)
  b, s, e, v = 2, 10, 8, 50
  hidden = rs.randn(b, s, e).astype(np.float32)
  w = rs.randn(e, v).astype(np.float32)
  labels = rs.randint(0, v, size=(b, s))
  labels[0, :3] = -100
  labels[1, 6:] = -100
  seg = np.array([[1] * 6 + [2] * 4, [1] * 8 + [0] * 2])
  return hidden, w, labels, seg


def _torch_token_ce(hidden, w, labels, seg):
  """Per-token CE with shifted labels; returns list of (row, segment, loss)."""
  out = []
  for b in range(hidden.shape[0]):
    logits = torch.tensor(hidden[b]) @ torch.tensor(w)
    for i in range(hidden.shape[1] - 1):
      if seg[b, i] == 0 or seg[b, i] != seg[b, i + 1] or labels[b, i + 1] == -100:
        continue
      out.append((b, seg[b, i], F.cross_entropy(logits[i][None], torch.tensor([labels[b, i + 1]])).item()))
  return out


@pytest.mark.parametrize("scope", ["batch", "sequence"])
@pytest.mark.parametrize("budget", [None, 7])
def test_lm_loss_scopes_against_torch(scope, budget):
  hidden, w, labels, seg = _ce_setup()
  head = lambda h: h @ jnp.asarray(w)
  loss, m = losses.lm_loss(jnp.asarray(hidden), jnp.asarray(labels), jnp.asarray(seg), head,
                           scope=scope, chunk_size=4, max_label_tokens=budget)
  toks = _torch_token_ce(hidden, w, labels, seg)
  assert int(m["label_tokens"]) == len(toks)
  assert int(m["dropped_label_tokens"]) == 0
  if scope == "batch":
    ref = np.mean([t[2] for t in toks])
  else:
    groups = {}
    for b, g, l in toks:
      groups.setdefault((b, g), []).append(l)
    ref = np.mean([np.mean(v) for v in groups.values()])
  np.testing.assert_allclose(loss, ref, rtol=1e-5)


def test_label_budget_counts_dropped_tokens():
  hidden, w, labels, seg = _ce_setup()
  _, m = losses.lm_loss(jnp.asarray(hidden), jnp.asarray(labels), jnp.asarray(seg),
                        lambda h: h @ jnp.asarray(w), max_label_tokens=3)
  toks = _torch_token_ce(hidden, w, labels, seg)
  per_row = [sum(1 for t in toks if t[0] == b) for b in range(2)]
  assert int(m["dropped_label_tokens"]) == sum(max(n - 3, 0) for n in per_row)


def test_chunked_cross_entropy_gradient_matches_dense():
  hidden, w, labels, _ = _ce_setup()
  h = jnp.asarray(hidden.reshape(-1, 8)); t = jnp.asarray(labels.reshape(-1))
  wj = jnp.asarray(w)
  f_chunk = lambda w_: jnp.sum(losses.chunked_cross_entropy(h, t, lambda x: x @ w_, 3))
  f_dense = lambda w_: jnp.sum(losses.cross_entropy(h @ w_, t))
  np.testing.assert_allclose(jax.grad(f_chunk)(wj), jax.grad(f_dense)(wj), atol=1e-5)
