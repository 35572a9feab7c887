"""Measured MFU of the training step on this machine's accelerators, next to the
prediction (the step's hardware FLOPs at the devices' bf16 peak: the bound launch.aot
prints for TPUs).

  python benchmarks/gpu_step/gpu_step.py --config=configs/stage3.py:tiny
  python benchmarks/gpu_step/gpu_step.py --config=configs/stage3.py:2b \\
      --set=data.global_batch=4 --set=data.seq_len=4096 --set=data.max_patches=4096 \\
      --set=data.max_visual_tokens=1024 --set=data.max_tokens=1024

The program is the one launch.train builds (`program.build`, every device of this host
in the config's mesh), fed one synthetic batch: per row one image (the largest square grid
the row's patch and visual-token budgets admit, merged as the config merges), then text
to the end of the row, the LM loss on the text. FLOPs are counted on that batch
(`program.flops` with its attention pairs). Prints one line per figure (step_s= median,
mfu=, predicted_step_s=, predicted_mfu=, tokens_per_s=). benchmarks/gpu_step/README.md
has the results.
"""
from __future__ import annotations

import argparse
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from penguin_jax import patches as P
from penguin_jax.train import cli, flops as flops_lib, program as program_lib, runtime


def synthetic_batch(cfg, abstract_batch, seed: int = 0) -> dict:
  """One global batch of the program's shapes: an image then text in every row."""
  d, rs = cfg.data, np.random.RandomState(seed)
  m = d.image_merge_size
  side = m * int(math.isqrt(min(d.max_patches, d.max_visual_tokens * m * m)) // m)
  lay = P.pack_items([(1, side, side)], [m], max_patches=d.max_patches,
                     max_tokens=d.max_visual_tokens)
  n_vis = (side // m) ** 2
  out = {}
  for k, a in abstract_batch.items():
    out[k] = np.zeros(a.shape, a.dtype)
  B, S = out["input_ids"].shape
  pre = 4
  out["input_ids"][:] = rs.randint(10, 1000, size=(B, S))
  out["input_ids"][:, pre:pre + n_vis] = 0
  out["labels"][:] = out["input_ids"]
  out["labels"][:, :pre + n_vis] = -100
  out["segment_ids"][:] = 1
  out["positions"][:] = np.arange(S)
  out["patches"][:] = rs.randn(*out["patches"].shape)
  out["visual_positions"][:, :n_vis] = np.arange(pre, pre + n_vis)
  for k in ("patch_segment_ids", "patch_positions", "merge_index", "merge_weight",
            "token_segment_ids"):
    out[k][:] = lay[k]
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--config", required=True, help="configs/STAGE.py:VARIANT")
  ap.add_argument("--set", action="append", default=[], help="FIELD=VALUE (repeatable)")
  ap.add_argument("--steps", type=int, default=10)
  args = ap.parse_args()
  cfg = cli.point_config(args.config, dict(s.split("=", 1) for s in args.set))
  mesh = runtime.mesh(cfg)
  program = program_lib.build(cfg, mesh)
  batch = synthetic_batch(cfg, program.abstract_batch)
  image_token = program.model_config.image_token_index
  batch["input_ids"][batch["labels"] == -100] = image_token
  batch["input_ids"][:, :4] = 11
  state = program.init_state(jax.random.PRNGKey(0))
  put = {k: jax.device_put(v, program.abstract_batch[k].sharding) for k, v in batch.items()}
  with program.context():
    state, m = program.train_step(state, put, None)        # compile
    jax.block_until_ready(m)
    times = []
    for _ in range(args.steps):
      t0 = time.perf_counter()
      state, m = program.train_step(state, put, None)
      jax.block_until_ready(m)
      times.append(time.perf_counter() - t0)
  step = float(np.median(times))
  fl = program.flops(encoder_pairs=flops_lib.segment_pairs(batch["patch_segment_ids"]),
                     llm_pairs=flops_lib.segment_pairs(batch["segment_ids"], causal=True))
  peak = flops_lib.peak_flops_per_device() * jax.device_count()
  tokens = batch["input_ids"].size
  print(f"# {jax.devices()[0].device_kind} x{jax.device_count()}, {args.config} "
        f"{' '.join(args.set)}, loss {float(m['loss']):.3f}, {args.steps} steps")
  print(f"step_s={step:.4f}")
  print(f"tokens_per_s={tokens / step:.0f}")
  if peak:
    print(f"mfu={fl['model'] / (step * peak):.3f}")
    print(f"predicted_step_s={fl['hardware'] / peak:.4f}")
    print(f"predicted_mfu={fl['model'] / fl['hardware']:.3f}")
  else:
    print("mfu=unknown (no peak FLOP/s for this device kind in penguin_jax/train/hardware.py)")


if __name__ == "__main__":
  main()
