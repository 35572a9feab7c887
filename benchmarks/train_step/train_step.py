"""Time one full training step of Penguin-VL at a tiny size on this machine's CPU.

  python benchmarks/train_step/train_step.py [--steps=10] [--warmup=2]

Forward, backward and AdamW update, every parameter trainable, float32. Workload (issue 2):
encoder hidden 256 / intermediate 768 / 4 layers / 4 heads / 2 kv heads / head_dim 64;
projector mlp2x_gelu to 512; LLM hidden 512 / intermediate 1536 / 4 layers / 8 heads /
4 kv heads / head_dim 64 / vocab 32000 / tied; batch 4, each sample 8 text tokens, one
224x224 image (16x16 = 256 patches, merge 1, 256 visual tokens), 248 text tokens; loss on
the text tokens. Prints one line per figure: step_ms= (median) and tokens_per_s=.
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from penguin_jax import hf, patches as P, registry
from penguin_jax.model_config import EncoderConfig, Qwen3Config, VLMConfig
from penguin_jax.losses import LossConfig
from penguin_jax.train.step import TrainState, make_train_step
from penguin_jax.vlm import PenguinVL

IMAGE_TOKEN = 31_999


def workload_config() -> VLMConfig:
  enc = EncoderConfig(hidden_size=256, intermediate_size=768, num_layers=4, num_heads=4,
                      num_kv_heads=2, head_dim=64)
  llm = Qwen3Config(vocab_size=32_000, hidden_size=512, intermediate_size=1536, num_layers=4,
                    num_heads=8, num_kv_heads=4, head_dim=64, tie_word_embeddings=True)
  return VLMConfig(llm=llm, encoder=enc, image_token_index=IMAGE_TOKEN)


def workload_batch(batch=4, pre=8, post=248, grid=16, seed=0):
  rs = np.random.RandomState(seed)
  n_vis = grid * grid
  seq = pre + n_vis + post
  lay = P.pack_items([(1, grid, grid)], [1])
  ids = rs.randint(0, 31_000, size=(batch, seq))
  ids[:, pre:pre + n_vis] = IMAGE_TOKEN
  labels = ids.copy()
  labels[:, :pre + n_vis] = -100                      # loss on the text after the image
  vis = np.broadcast_to(np.arange(pre, pre + n_vis), (batch, n_vis))
  b = {
      "input_ids": ids, "labels": labels,
      "segment_ids": np.ones((batch, seq), np.int32),
      "positions": np.broadcast_to(np.arange(seq, dtype=np.int32), (batch, seq)),
      "patches": rs.randn(batch, n_vis, 588).astype(np.float32),
      "visual_positions": vis,
  }
  for k in ["patch_segment_ids", "patch_positions", "merge_index", "merge_weight"]:
    b[k] = np.broadcast_to(lay[k], (batch,) + lay[k].shape)
  return {k: jnp.asarray(v) for k, v in b.items()}, seq


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--steps", type=int, default=10)
  ap.add_argument("--warmup", type=int, default=2)
  ap.add_argument("--max_label_tokens", type=int, default=256,
                  help="LM head only on this many label positions per row (0 = all)")
  args = ap.parse_args()
  cfg = workload_config()
  model = PenguinVL(cfg)
  params = registry.init_params(model, jax.random.PRNGKey(0))
  opt = optax.adamw(1e-4, weight_decay=0.0)
  state = TrainState(jnp.zeros((), jnp.int32), params, opt.init(params))
  step = jax.jit(make_train_step(model, opt, LossConfig(max_label_tokens=args.max_label_tokens)),
                 donate_argnums=0)
  batch, seq = workload_batch()
  for _ in range(args.warmup):
    state, m = step(state, batch)
  jax.block_until_ready(state)
  times = []
  for _ in range(args.steps):
    t0 = time.perf_counter()
    state, m = step(state, batch)
    jax.block_until_ready((state, m))
    times.append(time.perf_counter() - t0)
  ms = 1000 * float(np.median(times))
  n_params = sum(x.size for x in jax.tree.leaves(params))
  print(f"# {jax.devices()[0].platform} x{jax.device_count()}, {n_params / 1e6:.1f}M params, "
        f"loss {float(m['loss']):.3f}, {args.steps} steps")
  print(f"step_ms={ms:.1f}")
  print(f"tokens_per_s={4 * seq / (ms / 1000):.0f}")


if __name__ == "__main__":
  main()
