"""Host memory of starting a run from an HF folder (`config.init.init_from`).

  python benchmarks/init_memory/init_memory.py [--hidden=2048] [--layers=16] [--vocab=32000] [--scan]

Writes a random Qwen3 folder in bfloat16 (transformers' layout, safetensors) of the given
size, then in a fresh process builds the fine-tuning program for it (configs/finetune.py
:tiny with the LLM's sizes taken from the folder, LoRA r 8 on a bfloat16 base, one CPU
device; `--scan`: its layers stacked, as the 2b and 8b configs keep them) and loads the
folder into it with `init.initial_params`, the call a run makes (given the program's
parameters as shapes, dtypes and shardings: a run's random ones are on the chips). The
figure is the growth of the process's peak resident memory (VmHWM: anonymous and
file-backed, the checkpoint being read through mmap) over what it held before the import (`import_peak_gib`, and over the checkpoint's size). On the CPU the
imported parameters are host memory too; on a TPU / GPU host they are on the chips, so
the host's share there is the peak less the model's bytes (`host_share_over_checkpoint`,
derived, not measured on such a host).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

GiB = 2 ** 30


def write_folder(out: str, hidden: int, layers: int, vocab: int):
  """A random bfloat16 Qwen3 folder (config.json + one safetensors file), written by numpy
  one tensor at a time into safetensors' own writer."""
  import ml_dtypes
  import numpy as np
  from safetensors.numpy import save_file
  heads, kv, hd, inter = hidden // 128, max(hidden // 512, 1), 128, 3 * hidden
  cfg = {"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "vocab_size": vocab,
         "hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
         "num_attention_heads": heads, "num_key_value_heads": kv, "head_dim": hd,
         "rms_norm_eps": 1e-6, "rope_theta": 1e6, "tie_word_embeddings": True,
         "max_position_embeddings": 4096, "torch_dtype": "bfloat16"}
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "config.json"), "w") as f:
    json.dump(cfg, f)
  rs = np.random.default_rng(0)
  r = lambda *s: (rs.standard_normal(s, np.float32) * 0.02).astype(ml_dtypes.bfloat16)
  t = {"model.embed_tokens.weight": r(vocab, hidden), "model.norm.weight": r(hidden)}
  for i in range(layers):
    p = f"model.layers.{i}."
    t.update({p + "self_attn.q_proj.weight": r(heads * hd, hidden),
              p + "self_attn.k_proj.weight": r(kv * hd, hidden),
              p + "self_attn.v_proj.weight": r(kv * hd, hidden),
              p + "self_attn.o_proj.weight": r(hidden, heads * hd),
              p + "self_attn.q_norm.weight": r(hd), p + "self_attn.k_norm.weight": r(hd),
              p + "mlp.gate_proj.weight": r(inter, hidden), p + "mlp.up_proj.weight": r(inter, hidden),
              p + "mlp.down_proj.weight": r(hidden, inter),
              p + "input_layernorm.weight": r(hidden), p + "post_attention_layernorm.weight": r(hidden)})
  save_file(t, os.path.join(out, "model.safetensors"))
  return os.path.getsize(os.path.join(out, "model.safetensors"))


def _hwm() -> int:
  """The process's peak resident memory (VmHWM, anonymous and file-backed), bytes."""
  with open("/proc/self/status") as f:
    return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM"))


def _reset_hwm():
  with open("/proc/self/clear_refs", "w") as f:   # 5: reset the peak to the current RSS
    f.write("5")


def measure(folder: str, scan: bool) -> dict:
  """In this process: the program for `folder`, its random parameters, then the import."""
  import jax
  from configs import finetune
  from penguin_jax.sharding import make_mesh
  from penguin_jax.train import init as init_lib, program as program_lib
  jax.config.update("jax_platforms", "cpu")
  cfg = finetune.get_config("tiny")
  cfg.init.init_from = folder
  cfg.lora.rank = 8
  cfg.model.scan_layers = scan
  cfg.mesh.data, cfg.data.global_batch = 1, 1
  init_lib.resolve(cfg)
  program = program_lib.build(cfg, make_mesh(data=1), image_token_id=5)
  # the program's parameters as shapes, dtypes and shardings: no random initialisation
  # (whose temporaries would stay in the allocator's resident memory and hide the peak)
  params = program.abstract_state.params
  size = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params["llm"]))
  _reset_hwm()
  before = _hwm()
  params = init_lib.initial_params(cfg, program, params)
  jax.block_until_ready(params)
  return {"params_gib": size / GiB, "peak_gib": (_hwm() - before) / GiB}


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--hidden", type=int, default=2048)
  ap.add_argument("--layers", type=int, default=16)
  ap.add_argument("--vocab", type=int, default=32000)
  ap.add_argument("--scan", action="store_true", help="layers stacked (nn.scan), as 2b / 8b")
  ap.add_argument("--folder", help="(internal) measure this folder in this process")
  args = ap.parse_args()
  if args.folder:
    print(json.dumps(measure(args.folder, args.scan)))
    return
  folder = tempfile.mkdtemp(prefix="init_memory_")
  try:
    ckpt = write_folder(folder, args.hidden, args.layers, args.vocab)
    out = subprocess.run([sys.executable, __file__, f"--folder={folder}",
                          *(["--scan"] if args.scan else [])], capture_output=True,
                         text=True, check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  finally:
    shutil.rmtree(folder)
  r = json.loads(out.stdout.strip().splitlines()[-1])
  # On the CPU the imported parameters are host memory; on a TPU / GPU host they are on
  # the chips: the host's share is the peak less the model's own bytes.
  host = r["peak_gib"] - r["params_gib"]
  print(f"checkpoint_gib={ckpt / GiB:.3f}")
  print(f"params_gib={r['params_gib']:.3f}")
  print(f"import_peak_gib={r['peak_gib']:.3f}")
  print(f"import_peak_over_checkpoint={r['peak_gib'] * GiB / ckpt:.3f}")
  print(f"host_share_over_checkpoint={host * GiB / ckpt:.3f}")

if __name__ == "__main__":
  main()
