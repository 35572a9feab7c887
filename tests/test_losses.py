"""Losses against PyTorch's own functions (docs/design.md §1.4, §2.4)."""
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
  # relation_scope "none" (the ablation without the relation loss): amplitude + direction
  total0, parts0 = losses.reconstruction_loss(jnp.asarray(s), jnp.asarray(t), jnp.asarray(seg),
                                              relation_scope="none")
  assert float(parts0["relation"]) == 0.0
  np.testing.assert_allclose(total0, (amp + direction).item(), rtol=1e-5)
  n = losses.reconstruction_normalizers(jnp.asarray(seg), "none")
  assert float(n["tokens"]) == 10 and float(n["pairs"]) == 0


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


def test_relation_batch_scope_takes_one_gram_per_local_batch():
  """scope "batch" with local_rows=r: one Gram over all valid tokens of each group of r
  consecutive rows (a chip's local batch, cross-image pairs included), the mean over all
  compared pairs; r = all rows is the release's Gram over the whole batch."""
  rs = np.random.RandomState(3)
  s, t = rs.randn(4, 5, 4).astype(np.float32), rs.randn(4, 5, 4).astype(np.float32)
  seg = np.array([[1, 1, 2, 0, 0], [1, 1, 1, 1, 1], [1, 2, 2, 3, 0], [1, 0, 0, 0, 0]])

  def reference(rows):
    vals = []
    for g in range(0, 4, rows):
      keep = seg[g:g + rows].reshape(-1) != 0
      a = F.normalize(torch.tensor(s[g:g + rows].reshape(-1, 4)[keep]), dim=-1)
      c = F.normalize(torch.tensor(t[g:g + rows].reshape(-1, 4)[keep]), dim=-1)
      vals.append(F.smooth_l1_loss(a @ a.T, c @ c.T, beta=0.001, reduction="none").reshape(-1))
    return torch.cat(vals).mean().item()

  got = {r: float(losses.relation_loss(jnp.asarray(s), jnp.asarray(t), jnp.asarray(seg), "batch",
                                       local_rows=r)) for r in (1, 2, 4)}
  for r in (1, 2, 4):
    np.testing.assert_allclose(got[r], reference(r), rtol=1e-5, err_msg=str(r))
    n = losses.reconstruction_normalizers(jnp.asarray(seg), "batch", r)["pairs"]
    groups = (seg != 0).reshape(4 // r, -1).sum(1)
    assert float(n) == float((groups ** 2).sum())
  assert len({round(v, 6) for v in got.values()}) == 3     # the grouping matters
  np.testing.assert_allclose(got[4], float(losses.relation_loss(
      jnp.asarray(s), jnp.asarray(t), jnp.asarray(seg), "batch")), rtol=1e-6)


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
  top = (hidden @ w).argmax(-1)                 # some labels are the logits' arg max
  labels[:, 1::2] = np.where(labels[:, 1::2] >= 0, top[:, :-1:2], -100)
  loss, m = losses.lm_loss(jnp.asarray(hidden), jnp.asarray(labels), jnp.asarray(seg),
                           jnp.asarray(w), scope=scope, chunk_size=4, max_label_tokens=budget)
  toks = _torch_token_ce(hidden, w, labels, seg)
  assert int(m["label_tokens"]) == len(toks)
  assert int(m["dropped_label_tokens"]) == 0
  # per-token accuracy: the label is torch's arg max of the logits
  logits = torch.tensor(hidden) @ torch.tensor(w)
  nxt = np.zeros_like(labels)
  nxt[:, :-1] = labels[:, 1:]
  same = (seg[:, :-1] > 0) & (seg[:, :-1] == seg[:, 1:]) & (labels[:, 1:] != -100)
  hits = (logits.argmax(-1).numpy()[:, :-1] == nxt[:, :-1]) & same
  assert 0 < hits.sum() < len(toks)
  assert int(m["correct_tokens"]) == int(hits.sum())
  if scope == "batch":
    ref = np.mean([t[2] for t in toks])
  else:
    groups = {}
    for b, g, l in toks:
      groups.setdefault((b, g), []).append(l)
    ref = np.mean([np.mean(v) for v in groups.values()])
  np.testing.assert_allclose(loss, ref, rtol=1e-5)


@pytest.mark.parametrize("budget", [None, 6])
def test_sequence_scope_counts_label_less_sequences_like_the_release(budget):
  """docs/design.md §2.4: the release divides each token's loss by (its sequence's label tokens x
  the number of packed sequences, i.e. of position_ids == 0), also counting a sequence
  without a label token. Expected value built by hand from torch's per-token CE."""
  rs = np.random.RandomState(5)
  s, e, v = 12, 8, 40
  hidden = rs.randn(1, s, e).astype(np.float32)
  w = rs.randn(e, v).astype(np.float32)
  labels = rs.randint(0, v, size=(1, s))
  seg = np.array([[1] * 4 + [2] * 3 + [3] * 4 + [0]])       # three sequences and padding
  labels[0, :2] = -100                                      # sequence 1: 2 label tokens
  labels[0, 4:7] = -100                                     # sequence 2: none (a prompt only)
  labels[0, 7] = -100                                       # sequence 3: 3 label tokens
  labels[0, 11] = -100
  toks = _torch_token_ce(hidden, w, labels, seg)
  assert sorted({g for _, g, _ in toks}) == [1, 3]           # sequence 2 adds no loss
  n_seq = 3                                                 # position_ids == 0 three times
  per_seq = {g: [l for _, gg, l in toks if gg == g] for g in (1, 3)}
  expected = sum(l / (len(per_seq[g]) * n_seq) for _, g, l in toks)
  loss, _ = losses.lm_loss(jnp.asarray(hidden), jnp.asarray(labels), jnp.asarray(seg),
                           jnp.asarray(w), scope="sequence", chunk_size=4, max_label_tokens=budget)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  assert abs(float(loss) - np.mean([np.mean(x) for x in per_seq.values()])) > 1e-3
  assert float(losses.lm_normalizer(jnp.asarray(labels), jnp.asarray(seg), "sequence")) == 3.0


def test_label_budget_counts_dropped_tokens():
  hidden, w, labels, seg = _ce_setup()
  _, m = losses.lm_loss(jnp.asarray(hidden), jnp.asarray(labels), jnp.asarray(seg),
                        jnp.asarray(w), max_label_tokens=3)
  toks = _torch_token_ce(hidden, w, labels, seg)
  per_row = [sum(1 for t in toks if t[0] == b) for b in range(2)]
  assert int(m["dropped_label_tokens"]) == sum(max(n - 3, 0) for n in per_row)


def _fused_setup(b=4, n=40, e=16, v=1000, seed=0):
  rs = np.random.RandomState(seed)
  h = rs.randn(b, n, e).astype(np.float32)
  w = (rs.randn(e, v) * 0.3).astype(np.float32)
  t = rs.randint(0, v, (b, n))
  t[:, :5] = -100
  return h, w, t


def test_fused_lm_head_cross_entropy_and_gradients_match_torch(monkeypatch):
  """Several vocabulary slices (the last one shifted back) and token tiles; values and
  gradients against torch's cross_entropy on full logits."""
  monkeypatch.setattr(losses, "VOCAB_SLICE", 384)
  h, w, t = _fused_setup()
  f = lambda h_, w_: jnp.sum(jnp.sin(losses.lm_head_cross_entropy(h_, jnp.asarray(t), w_, 16)))
  out = losses.lm_head_cross_entropy(jnp.asarray(h), jnp.asarray(t), jnp.asarray(w), 16)
  gh, gw = jax.grad(f, argnums=(0, 1))(jnp.asarray(h), jnp.asarray(w))
  th = torch.tensor(h, requires_grad=True)
  tw = torch.tensor(w, requires_grad=True)
  ref = F.cross_entropy((th @ tw).reshape(-1, w.shape[1]), torch.tensor(t).reshape(-1),
                        ignore_index=-100, reduction="none").reshape(t.shape)
  torch.sin(ref).sum().backward()
  np.testing.assert_allclose(np.asarray(out), ref.detach().numpy(), atol=2e-5, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(gh), th.grad.numpy(), atol=2e-5, rtol=1e-4)
  np.testing.assert_allclose(np.asarray(gw), tw.grad.numpy(), atol=2e-5, rtol=1e-4)


def _sharded_loss_grad(h, w, t, fsdp, tensor, chunk=16):
  from flax import linen as nn
  from jax.sharding import NamedSharding, PartitionSpec as PS
  from penguin_jax.sharding import LOGICAL_RULES, make_mesh
  mesh = make_mesh(data=8 // (fsdp * tensor), fsdp=fsdp, tensor=tensor)
  rows = NamedSharding(mesh, PS(("data", "fsdp")))
  with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
    hs, ts = jax.device_put(jnp.asarray(h), rows), jax.device_put(jnp.asarray(t), rows)
    ws = jax.device_put(jnp.asarray(w), NamedSharding(mesh, PS("fsdp", "tensor")))
    fn = jax.jit(jax.value_and_grad(
        lambda h_, w_, t_: jnp.sum(jnp.sin(losses.lm_head_cross_entropy(h_, t_, w_, chunk))),
        argnums=(0, 1)))
    return fn(hs, ws, ts), fn.lower(hs, ws, ts).compile().as_text()


def test_fused_loss_on_a_mesh_equals_one_device(monkeypatch):
  """data 2 x fsdp 2 x tensor 2 (vocabulary split over tensor, weight over fsdp)."""
  monkeypatch.setattr(losses, "VOCAB_SLICE", 256)
  h, w, t = _fused_setup(b=8)
  f = lambda h_, w_: jnp.sum(jnp.sin(losses.lm_head_cross_entropy(h_, jnp.asarray(t), w_, 16)))
  ref = jax.value_and_grad(f, argnums=(0, 1))(jnp.asarray(h), jnp.asarray(w))
  (val, (gh, gw)), _ = _sharded_loss_grad(h, w, t, fsdp=2, tensor=2)
  np.testing.assert_allclose(float(val), float(ref[0]), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(gh), np.asarray(ref[1][0]), atol=2e-5, rtol=1e-4)
  np.testing.assert_allclose(np.asarray(gw), np.asarray(ref[1][1]), atol=2e-5, rtol=1e-4)
  assert tuple(gw.sharding.spec) == ("fsdp", "tensor")   # the gradient arrives sharded like w


def test_fused_loss_collectives_move_the_weight_not_logits():
  """fsdp over 8 devices: the loss's collectives carry the head weight about three times
  (gather forward, gather backward, reduce the gradient), never per-chunk logits. The
  previous loss all-reduced a [chunk, vocab] block of partial logits per chunk."""
  from penguin_jax.train import hlo
  b, n, e, v, chunk = 8, 512, 32, 2048, 64
  h, w, t = _fused_setup(b=b, n=n, e=e, v=v)
  _, text = _sharded_loss_grad(h, w, t, fsdp=8, tensor=1, chunk=chunk)
  rows = hlo.collectives(text)["rows"]
  moved = sum(r["bytes"] for r in rows)
  weight = e * v * 4
  logits_per_chunk = chunk * v * 4
  assert moved <= 3.5 * weight, (moved, weight, rows)
  assert moved < (n // chunk) * logits_per_chunk    # less than one pass of chunk logits
