"""Convert Penguin-VL / Qwen3 models between Hugging Face directories and orbax checkpoints.

  python -m launch.convert hf-to-orbax --hf_dir=Qwen3-1.7B --out=ckpt/qwen3_1_7b [--dtype=bfloat16] [--scan_layers]
  python -m launch.convert orbax-to-hf --ckpt=ckpt/qwen3_1_7b --out=hf_out [--dtype=bfloat16]
  python -m launch.convert qwen3-to-encoder --hf_dir=Qwen3-0.6B --out=penguin_encoder_init

The HF side is config.json + safetensors in the release's layout (DESIGN.md 1.5); the
model_type (qwen3, penguinvl_vision_encoder, penguinvl_qwen3) picks the model.
`qwen3-to-encoder` writes an HF encoder directory initialised from a text-only Qwen3
(layers and norm copied, embeddings dropped, new patch embedding).
"""
from __future__ import annotations

import argparse
import logging
import sys
import time

import jax
import jax.numpy as jnp


def _dtype(name):
  return None if name is None else jnp.dtype(name)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m launch.convert", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest="cmd", required=True)
  a = sub.add_parser("hf-to-orbax", help="HF directory -> orbax checkpoint")
  a.add_argument("--hf_dir", required=True)
  a.add_argument("--out", required=True)
  a.add_argument("--dtype", default="float32", help="parameter dtype (default float32)")
  a.add_argument("--scan_layers", action="store_true", help="store layers stacked (nn.scan layout)")
  b = sub.add_parser("orbax-to-hf", help="orbax checkpoint -> HF directory")
  b.add_argument("--ckpt", required=True)
  b.add_argument("--out", required=True)
  b.add_argument("--dtype", default=None, help="tensor dtype in the safetensors (default: as stored)")
  b.add_argument("--max_shard_gb", type=float, default=5.0)
  c = sub.add_parser("qwen3-to-encoder", help="text-only Qwen3 -> Penguin-Encoder init (HF dir)")
  c.add_argument("--hf_dir", required=True)
  c.add_argument("--out", required=True)
  c.add_argument("--seed", type=int, default=0)
  c.add_argument("--patch_size", type=int, default=14)
  args = p.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(message)s")

  from penguin_jax import checkpoints, hf  # after arg parsing: --help stays fast
  t0 = time.time()
  try:
    if args.cmd == "hf-to-orbax":
      model, params = hf.from_pretrained(args.hf_dir, dtype=_dtype(args.dtype),
                                         scan_layers=args.scan_layers)
      checkpoints.save_params(args.out, model, params)
    elif args.cmd == "orbax-to-hf":
      model, params = checkpoints.load_params(args.ckpt)
      hf.save_pretrained(model, params, args.out, dtype=_dtype(args.dtype),
                         max_shard_bytes=int(args.max_shard_gb * 1024 ** 3))
    else:
      model, params = hf.encoder_from_qwen3(args.hf_dir, jax.random.PRNGKey(args.seed),
                                            patch_size=args.patch_size)
      hf.save_pretrained(model, params, args.out)
  except (FileNotFoundError, KeyError, ValueError) as e:
    print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
    return 2
  n = sum(x.size for x in jax.tree.leaves(params))
  print(f"{args.cmd}: {type(model).__name__} with {n:,} parameters -> {args.out} "
        f"({time.time() - t0:.1f}s)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
