"""PyTorch baseline for benchmarks/train_step.py: the same workload, computed the way the
released PyTorch code computes it, on the same CPU.

  python benchmarks/train_step/train_step_torch.py [--steps=10] [--warmup=2]

transformers' Qwen3 layers for the encoder (bidirectional, each image its own attention
block, as the release's varlen flash attention) and for the LLM (SDPA), the mlp2x_gelu
projector, visual features written at image-token positions, the LM head only on label
positions (as the release's `cross_entropy_loss`), torch.optim.AdamW, float32.
Needs the test extra (torch, transformers). Prints step_ms= and tokens_per_s=.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import transformers
from transformers.models.qwen3.modeling_qwen3 import (Qwen3DecoderLayer, Qwen3RMSNorm)

IMAGE_TOKEN = 31_999


class Encoder(torch.nn.Module):
  def __init__(self):
    super().__init__()
    self.cfg = transformers.Qwen3Config(
        vocab_size=16, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=64, rope_theta=1e6)
    self.cfg._attn_implementation = "sdpa"
    self.patch_embedding = torch.nn.Conv2d(3, 256, 14, 14)
    self.layers = torch.nn.ModuleList(Qwen3DecoderLayer(self.cfg, i) for i in range(4))
    self.norm = Qwen3RMSNorm(256, eps=1e-6)

  def forward(self, pixels, rows, cols):  # pixels [n_img, 256, 588]
    n, p = pixels.shape[:2]
    x = self.patch_embedding(pixels.reshape(-1, 3, 14, 14)).reshape(n, p, 256)
    f = 1.0 / (1e6 ** (torch.arange(0, 64, 2, dtype=torch.float32) / 64))
    ang = torch.cat([rows[:, None] * f, cols[:, None] * f], -1)[None]
    cos, sin = ang.cos(), ang.sin()
    mask = torch.zeros(1, 1, p, p)                                  # bidirectional
    for layer in self.layers:
      out = layer(x, attention_mask=mask, position_embeddings=(cos, sin))
      x = out[0] if isinstance(out, tuple) else out
    return self.norm(x)                                             # merge 1: identity


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--steps", type=int, default=10)
  ap.add_argument("--warmup", type=int, default=2)
  args = ap.parse_args()
  torch.manual_seed(0)
  enc = Encoder()
  proj = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.GELU(), torch.nn.Linear(512, 512))
  lcfg = transformers.Qwen3Config(
      vocab_size=32_000, hidden_size=512, intermediate_size=1536, num_hidden_layers=4,
      num_attention_heads=8, num_key_value_heads=4, head_dim=64, tie_word_embeddings=True)
  lcfg._attn_implementation = "sdpa"
  llm = transformers.Qwen3ForCausalLM(lcfg)
  params = [*enc.parameters(), *proj.parameters(), *llm.parameters()]
  opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)

  rs = np.random.RandomState(0)
  b, pre, n_vis, post = 4, 8, 256, 248
  seq = pre + n_vis + post
  ids = torch.tensor(rs.randint(0, 31_000, size=(b, seq)))
  ids[:, pre:pre + n_vis] = IMAGE_TOKEN
  labels = ids.clone()
  labels[:, :pre + n_vis] = -100
  pixels = torch.tensor(rs.randn(b, n_vis, 588).astype(np.float32))
  rows = torch.arange(16).repeat_interleave(16).float()
  cols = torch.arange(16).repeat(16).float()

  def step():
    feats = proj(enc(pixels, rows, cols)).reshape(-1, 512)
    sel = ids == IMAGE_TOKEN
    emb = llm.model.embed_tokens(torch.where(sel, 0, ids))
    emb = emb.masked_scatter(sel[..., None], feats)
    hidden = llm.model(inputs_embeds=emb).last_hidden_state
    h, y = hidden[:, :-1], labels[:, 1:]
    m = y != -100
    loss = torch.nn.functional.cross_entropy(llm.lm_head(h[m]), y[m])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss

  for _ in range(args.warmup):
    step()
  times = []
  for _ in range(args.steps):
    t0 = time.perf_counter()
    loss = step()
    times.append(time.perf_counter() - t0)
  ms = 1000 * float(np.median(times))
  print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, loss {loss.item():.3f}, "
        f"{args.steps} steps")
  print(f"step_ms={ms:.1f}")
  print(f"tokens_per_s={b * seq / (ms / 1000):.0f}")


if __name__ == "__main__":
  main()
