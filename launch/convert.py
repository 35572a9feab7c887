"""Convert Penguin-VL / Qwen3 models between Hugging Face directories and orbax checkpoints.

  python -m launch.convert hf-to-orbax --hf_dir=Qwen3-1.7B --out=ckpt/qwen3_1_7b [--dtype=bfloat16] [--scan_layers]
  python -m launch.convert orbax-to-hf --ckpt=ckpt/qwen3_1_7b --out=hf_out [--dtype=bfloat16]
  python -m launch.convert qwen3-to-encoder --hf_dir=Qwen3-0.6B --out=penguin_encoder_init
  python -m launch.convert workdir-to-hf --workdir=/tmp/stage3 --out=penguin_vl_hf [--step=N]
      [--dtype=bfloat16] [--keep_distill_head] [--encoder_ref=ORG/NAME] [--remote_code_from=DIR]
  python -m launch.convert workdir-to-hf --workdir=/tmp/lora_run --out=adapters --adapters_only
  python -m launch.convert set-encoder --hf_dir=penguin_vl_hf [--encoder_ref=ORG/NAME]

`workdir-to-hf` exports a training run (any stage, any mesh, scanned or not; the latest
checkpoint or --step) to a folder that the release's `PenguinVLQwen3ForCausalLM` /
`load_pretrained_model` and `penguin_jax.from_pretrained` load as it is: config.json,
safetensors, the encoder folder `penguin_encoder/` (config, preprocessor_config with the
run's normalisation, weights), the tokenizer with `<image>` and the chat template, and a
README.md. Only the parameters are read from the checkpoint (no optimizer state). A LoRA
run is merged (W + alpha / r B A in float32); `--adapters_only` writes its adapters as a
PEFT folder instead. The code of a remote-code model folder (the run's init_from, or
--remote_code_from) is carried along (docs/export.md).
The release finds the encoder by the absolute path in `mm_vision_encoder`; after moving
the folder, `set-encoder` points it to the new place (or to a hub id).

The HF side is config.json + safetensors in the release's layout (docs/design.md §1.5); the
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

from penguin_jax import export, hf, orbax_params
from penguin_jax.train import runtime


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
  w = sub.add_parser("workdir-to-hf", help="training run -> HF directory the release loads")
  w.add_argument("--workdir", required=True, help="the run's workdir (or its checkpoints folder)")
  w.add_argument("--out", required=True)
  w.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
  w.add_argument("--dtype", default="bfloat16", help="tensor dtype (default bfloat16, as released)")
  w.add_argument("--keep_distill_head", action="store_true",
                 help="keep the stage-1 distill head (dropped by default: inference does not use it)")
  w.add_argument("--teacher", default=None,
                 help="with --keep_distill_head: the release's `vision_encoder_teacher` "
                      "(default: the run's config.init.teacher folder, else "
                      "DAMO-NLP-SG/VL3-SigLIP-NaViT)")
  w.add_argument("--encoder_ref", default=None,
                 help="what config.json names as the encoder (default: the exported encoder "
                      "folder's absolute path; give the hub id when you publish it)")
  w.add_argument("--max_shard_gb", type=float, default=5.0)
  w.add_argument("--adapters_only", action="store_true",
                 help="a LoRA run: its adapters as a PEFT adapter folder (peft.PeftModel."
                      "from_pretrained(base, OUT)) instead of the merged model")
  w.add_argument("--remote_code_from", default=None,
                 help="a model folder whose code (*.py) and auto_map the export carries, so that "
                      "AutoModelForCausalLM.from_pretrained(OUT, trust_remote_code=True) loads it "
                      "(default: the run's init_from when it is such a folder)")
  r = sub.add_parser("set-encoder", help="point an exported VLM's config.json to its encoder "
                                         "(after a move) or to a hub id")
  r.add_argument("--hf_dir", required=True)
  r.add_argument("--encoder_ref", default=None,
                 help="default: the absolute path of HF_DIR/penguin_encoder")
  args = p.parse_args(argv)
  runtime.cpu_if_idle()
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  logging.getLogger("absl").setLevel(logging.ERROR)
  t0 = time.time()
  try:
    if args.cmd == "set-encoder":
      print(f"{args.hf_dir}/config.json: encoder -> "
            f"{export.set_encoder(args.hf_dir, args.encoder_ref)}")
      return 0
    if args.cmd == "hf-to-orbax":
      model, params = hf.from_pretrained(args.hf_dir, dtype=_dtype(args.dtype),
                                         scan_layers=args.scan_layers)
      orbax_params.save_params(args.out, model, params)
    elif args.cmd == "orbax-to-hf":
      model, params = orbax_params.load_params(args.ckpt)
      hf.save_pretrained(model, params, args.out, dtype=_dtype(args.dtype),
                         max_shard_bytes=int(args.max_shard_gb * 1024 ** 3))
    elif args.cmd == "workdir-to-hf" and args.adapters_only:
      config = export.export_adapters(args.workdir, args.out, step=args.step)
      print(f"workdir-to-hf --adapters_only: rank {config['r']} adapters -> {args.out}")
      return 0
    elif args.cmd == "workdir-to-hf":
      model, params = export.export_run(
          args.workdir, args.out, step=args.step, dtype=args.dtype,
          keep_distill_head=args.keep_distill_head, teacher=args.teacher,
          encoder_ref=args.encoder_ref, max_shard_bytes=int(args.max_shard_gb * 1024 ** 3),
          remote_code_from=args.remote_code_from)
    else:
      model, params = hf.encoder_from_qwen3(args.hf_dir, jax.random.PRNGKey(args.seed),
                                            patch_size=args.patch_size)
      hf.save_pretrained(model, params, args.out)
  except (FileNotFoundError, KeyError, ValueError, ImportError) as e:
    print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
    return 2
  n = sum(x.size for x in jax.tree.leaves(params))
  print(f"{args.cmd}: {type(model).__name__} with {n:,} parameters -> {args.out} "
        f"({time.time() - t0:.1f}s)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
