"""`python -m launch.convert` round trips and the errors a broken directory gives."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import penguin_jax
from penguin_jax import orbax_params

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _convert(*args):
  r = subprocess.run([sys.executable, "-m", "launch.convert", *args], cwd=REPO,
                     capture_output=True, text=True, timeout=300)
  return r.returncode, r.stdout + r.stderr


def test_cli_hf_orbax_hf_roundtrip_bit_exact(qwen3_untied, tmp_path):
  path, _ = qwen3_untied
  rc, out = _convert("hf-to-orbax", f"--hf_dir={path}", f"--out={tmp_path / 'ck'}", "--scan_layers")
  assert rc == 0, out
  assert "Qwen3ForCausalLM" in out
  rc, out = _convert("orbax-to-hf", f"--ckpt={tmp_path / 'ck'}", f"--out={tmp_path / 'hf'}")
  assert rc == 0, out
  a, b = load_file(str(path / "model.safetensors")), load_file(str(tmp_path / "hf/model.safetensors"))
  assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_orbax_checkpoint_restores_other_layout(qwen3_tied, tmp_path):
  path, _ = qwen3_tied
  model, params = penguin_jax.from_pretrained(str(path), scan_layers=True)
  orbax_params.save_params(str(tmp_path), model, params)
  m2, p2 = orbax_params.load_params(str(tmp_path), scan_layers=False)
  assert not m2.cfg.scan_layers and "layers_1" in p2["layers"]
  np.testing.assert_array_equal(np.asarray(p2["layers"]["layers_1"]["mlp"]["up_proj"]["kernel"]),
                                np.asarray(params["layers"]["layers"]["mlp"]["up_proj"]["kernel"][1]))


def test_cli_qwen3_to_encoder(qwen3_tied, tmp_path):
  path, _ = qwen3_tied
  rc, out = _convert("qwen3-to-encoder", f"--hf_dir={path}", f"--out={tmp_path}")
  assert rc == 0, out
  cfg = json.load(open(tmp_path / "config.json"))
  assert cfg["model_type"] == "penguinvl_vision_encoder" and cfg["num_hidden_layers"] == 2
  enc, params = penguin_jax.from_pretrained(str(tmp_path))
  assert enc.cfg.hidden_size == 64


@pytest.fixture
def broken(qwen3_tied, tmp_path):
  path, _ = qwen3_tied
  dst = tmp_path / "m"
  shutil.copytree(path, dst)
  return dst


def test_missing_tensor_names_the_key(broken):
  sd = load_file(str(broken / "model.safetensors"))
  del sd["model.layers.1.mlp.up_proj.weight"]
  save_file(sd, str(broken / "model.safetensors"))
  with pytest.raises(KeyError, match=r"missing tensor 'model.layers.1.mlp.up_proj.weight' \(expected shape \(128, 64\)\)"):
    penguin_jax.from_pretrained(str(broken))


def test_wrong_shape_names_key_expected_and_found(broken, tmp_path):
  sd = load_file(str(broken / "model.safetensors"))
  sd["model.layers.0.self_attn.q_proj.weight"] = torch.zeros(32, 64)
  save_file(sd, str(broken / "model.safetensors"))
  with pytest.raises(ValueError, match=r"'model.layers.0.self_attn.q_proj.weight' has shape \(32, 64\), expected \(64, 64\)"):
    penguin_jax.from_pretrained(str(broken))
  rc, out = _convert("hf-to-orbax", f"--hf_dir={broken}", f"--out={tmp_path / 'x'}")
  assert rc == 2 and out.strip().splitlines()[-1].startswith("error:") and "q_proj" in out


def test_unknown_model_type(broken):
  cfg = json.load(open(broken / "config.json"))
  cfg["model_type"] = "llama"
  json.dump(cfg, open(broken / "config.json", "w"))
  with pytest.raises(ValueError, match="unknown model_type 'llama'"):
    penguin_jax.from_pretrained(str(broken))


def test_truncated_file_is_a_clear_error(broken):
  f = broken / "model.safetensors"
  f.write_bytes(f.read_bytes()[:1000])
  with pytest.raises(ValueError, match="truncated|not a readable safetensors"):
    penguin_jax.from_pretrained(str(broken))
