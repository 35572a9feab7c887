"""The demo's teacher: VL3-SigLIP-NaViT's architecture at the tiny size, pre-trained on the
demo corpus's training images the way its namesake was, with SigLIP's sigmoid image-text
loss, so that stage 1a's reconstruction losses distil features that know the images
(`launch.demo_teacher`; `recipe.py` runs it).

Image tower: the teacher (`penguin_jax/teacher.py`) on the image's patches, as stage 1a
feeds it, its features mean-pooled and projected. Text tower: the sample's question and
answer as a bag of SentencePiece tokens (the mean of one embedding per token, projected).
Loss (SigLIP, Zhai et al. 2023): for every image-text pair of a batch, a binary "do these
belong together" with a learnt temperature and bias; pairs whose texts are equal count as
positives ("Red." goes with every red shape). Only the teacher is written, as an HF folder
(`save_pretrained`, the released teacher's layout), with `pretraining.json`: the loss and
the validation images' text retrieval accuracy (each image against the distinct texts of
the validation split).
"""
from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

from data_pipelines import images
from data_pipelines.tokenizer import SentencePieceTokenizer
from penguin_jax import hf
from penguin_jax.model_config import TeacherConfig
from penguin_jax.patches import patch_positions
from penguin_jax.teacher import ViTTeacher


def _examples(raw: str, split: str, tok, scfg, max_patches: int):
  """The split's one-image samples -> (patches [n, P, 588], segment ids [n, P],
  positions [n, P, 2], text ids [n, T], text mask [n, T], texts)."""
  rows = []
  with open(os.path.join(raw, f"{split}.jsonl")) as f:
    for line in f:
      s = json.loads(line)
      if len(s.get("image", [])) != 1:
        continue
      rgb = images.load_image(os.path.join(raw, s["image"][0]))
      p, (_, gh, gw) = images.process_image(
          rgb, merge_size=1, min_tokens=scfg.min_tokens, max_tokens=scfg.max_tokens,
          mean=scfg.image_mean, std=scfg.image_std)
      text = " ".join(t["value"].replace("<image>\n", "") for t in s["conversations"][:2])
      rows.append((p[:max_patches], patch_positions(1, gh, gw, 1)[:max_patches],
                   tok.encode(text), text))
  n, T = len(rows), max(len(r[2]) for r in rows)
  patches = np.zeros((n, max_patches, rows[0][0].shape[1]), np.float32)
  seg, pos = np.zeros((n, max_patches), np.int32), np.zeros((n, max_patches, 2), np.int32)
  ids, mask = np.zeros((n, T), np.int32), np.zeros((n, T), np.float32)
  for i, (p, q, t, _) in enumerate(rows):
    patches[i, :len(p)], seg[i, :len(p)], pos[i, :len(p)] = p, 1, q
    ids[i, :len(t)], mask[i, :len(t)] = t, 1
  return patches, seg, pos, ids, mask, [r[3] for r in rows]


def pretrain(data_root: str, out: str, teacher_sizes: dict, scfg, *, steps: int = 300,
             batch: int = 32, lr: float = 2e-3, seed: int = 0, log=print) -> dict:
  """SigLIP-pre-train a teacher of `teacher_sizes` (configs' model.teacher) on
  DATA_ROOT/raw's training images (tokenizer DATA_ROOT/spm.model); write it to `out`."""
  tok = SentencePieceTokenizer(os.path.join(data_root, "spm.model"))
  raw, P = os.path.join(data_root, "raw"), scfg.max_tokens
  train = _examples(raw, "train", tok, scfg, P)
  val = _examples(raw, "val", tok, scfg, P)
  labels = np.array([hash(t) for t in train[5]])             # equal texts: positives
  tcfg = TeacherConfig(**teacher_sizes, attention="xla")
  dim = teacher_sizes["hidden_size"]

  class Towers(nn.Module):
    """SigLIP: the teacher + a projection; a bag-of-tokens text tower; temperature, bias."""
    @nn.compact
    def __call__(self, patches, seg, pos, ids, mask):
      f = ViTTeacher(tcfg, name="teacher")(patches, seg, pos)         # [b, P, hidden]
      w = (seg > 0)[..., None].astype(f.dtype)
      img = nn.Dense(dim, name="image_proj")((f * w).sum(1) / w.sum(1))
      e = nn.Embed(tok.vocab_size, dim, name="text_embed")(ids)       # [b, T, dim]
      txt = nn.Dense(dim, name="text_proj")((e * mask[..., None]).sum(1) / mask.sum(1, keepdims=True))
      t = self.param("log_temperature", lambda _: jnp.log(10.0))
      b = self.param("bias", lambda _: jnp.array(-10.0))
      img, txt = (x / jnp.linalg.norm(x, axis=-1, keepdims=True) for x in (img, txt))
      return img @ txt.T * jnp.exp(t) + b                             # [b, b] logits

  towers = Towers()
  params = nn.unbox(towers.init(jax.random.PRNGKey(seed), *(x[:2] for x in train[:5]))["params"])
  opt = optax.adamw(optax.warmup_cosine_decay_schedule(0, lr, steps // 10, steps), b2=0.95)
  opt_state = opt.init(params)

  def apply(p, *x):
    return towers.apply({"params": p}, *x)

  @jax.jit
  def step(p, s, x, same):
    def loss_fn(p):
      z = jnp.where(same, 1.0, -1.0)                                  # SigLIP's labels
      return -jnp.mean(jax.nn.log_sigmoid(z * apply(p, *x))) * z.shape[0]
    loss, g = jax.value_and_grad(loss_fn)(p)
    u, s = opt.update(g, s, p)
    return optax.apply_updates(p, u), s, loss

  rs, n, losses, t0 = np.random.RandomState(seed), len(labels), [], time.time()
  for i in range(steps):
    idx = rs.choice(n, size=min(batch, n), replace=False)
    x = tuple(a[idx] for a in train[:5])
    params, opt_state, loss = step(params, opt_state, x, labels[idx][:, None] == labels[idx][None])
    losses.append(float(loss))
    if (i + 1) % max(steps // 5, 1) == 0 or i + 1 == steps:
      log(f"teacher pre-training step {i + 1}/{steps}: SigLIP loss {np.mean(losses[-20:]):.3f}")
  # validation: each image against the split's distinct texts
  texts = sorted(set(val[5]))
  cand = np.array([val[5].index(t) for t in texts])
  logits = np.asarray(jax.jit(apply)(params, *val[:3], val[3][cand], val[4][cand]))
  hits = np.mean([texts[j] == t for j, t in zip(logits.argmax(1), val[5])])
  report = {"steps": steps, "batch": batch, "images": n, "loss_first": losses[0],
            "loss_last": float(np.mean(losses[-20:])), "val_images": len(val[5]),
            "val_texts": len(texts), "val_retrieval_accuracy": float(hits),
            "seconds": time.time() - t0}
  log(f"teacher: SigLIP loss {report['loss_first']:.2f} -> {report['loss_last']:.2f}; "
      f"validation images matched to their text among {len(texts)}: {hits:.1%} "
      f"({report['seconds']:.0f} s)")
  hf.save_pretrained(ViTTeacher(tcfg), jax.device_get(params["teacher"]), out)
  with open(os.path.join(out, "pretraining.json"), "w") as f:
    json.dump(report, f, indent=1)
  return report
