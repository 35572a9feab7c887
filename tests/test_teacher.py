"""The real teacher, VL3-SigLIP-NaViT (docs/design.md §1.6), against transformers' independent
`VideoLlama3VisionModel`: weights imported from both HF layouts, merged features equal."""
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import penguin_jax
from penguin_jax import hf, patches as P, hf_keys
from penguin_jax import teacher as teacher_lib
from penguin_jax.encoder import merge

# Several items at once: non-square images at merge 1, a 2-frame video at merge 2.
GRIDS, MERGES = [(1, 4, 6), (1, 6, 2), (2, 4, 4)], [1, 1, 2]


@pytest.fixture(scope="module")
def saved_teacher(tmp_path_factory):
  path = tmp_path_factory.mktemp("vl3")
  cfg = transformers.VideoLlama3VisionConfig(hidden_size=96, intermediate_size=160,
                                             num_hidden_layers=2, num_attention_heads=4,
                                             patch_size=14)
  torch.manual_seed(0)
  model = transformers.VideoLlama3VisionModel(cfg).eval()
  with torch.no_grad():   # non-trivial norms and biases, so a mix-up shows
    for n, p in model.named_parameters():
      if "norm" in n and n.endswith("weight"):
        p.uniform_(0.5, 1.5)
      elif n.endswith("bias"):
        p.normal_(0, 0.1)
  model.save_pretrained(str(path))
  return path, model


def _inputs(seed=0):
  n = sum(t * h * w for t, h, w in GRIDS)
  return np.random.RandomState(seed).uniform(-1, 1, (n, 588)).astype(np.float32)


def _reference(model, pix):
  with torch.no_grad():
    return model(torch.tensor(pix), torch.tensor(GRIDS), torch.tensor(MERGES)).last_hidden_state.numpy()


def test_features_match_transformers(saved_teacher):
  path, ref_model = saved_teacher
  model, params = penguin_jax.from_pretrained(str(path))
  assert isinstance(model, teacher_lib.ViTTeacher) and model.cfg.head_dim == 24
  pix = _inputs()
  want = _reference(ref_model, pix)
  got = penguin_jax.encode_images(model, params, pix, GRIDS, MERGES)
  assert got.shape == want.shape == (24 + 12 + 8, 96)
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_negative_control_swapped_rope_axes_is_detected(saved_teacher, monkeypatch):
  """The same comparison with row and column swapped in the RoPE fails: the test sees it."""
  path, ref_model = saved_teacher
  model, params = penguin_jax.from_pretrained(str(path))
  pix = _inputs()
  want = _reference(ref_model, pix)
  good = np.abs(penguin_jax.encode_images(model, params, pix, GRIDS, MERGES) - want).max()
  real = teacher_lib.teacher_rope_2d
  monkeypatch.setattr(teacher_lib, "teacher_rope_2d",
                      lambda pos, d, theta: real(pos[..., ::-1], d, theta))
  lay = P.pack_items(GRIDS, MERGES)
  feats = model.apply({"params": params}, jnp.asarray(pix)[None],
                      jnp.asarray(lay["patch_segment_ids"])[None],
                      jnp.asarray(lay["patch_positions"])[None])
  swapped = np.asarray(merge(feats, jnp.asarray(lay["merge_index"])[None],
                             jnp.asarray(lay["merge_weight"])[None]))[0]
  bad = np.abs(swapped - want).max()
  assert good < 1e-4 < 1e-3 < bad, (good, bad)   # far outside the parity test's tolerance


def test_remote_code_layout_loads(saved_teacher, tmp_path):
  """The hub checkpoint's layout: model_type videollama3_vision_encoder, remote code,
  no rope field (theta 1e4); its tensors carry the same names, written here from ours."""
  path, ref_model = saved_teacher
  model, params = penguin_jax.from_pretrained(str(path))
  remote = tmp_path / "VL3-SigLIP-NaViT"
  remote.mkdir()
  from penguin_jax import safetensors_io
  safetensors_io.save_file(hf_keys.params_to_hf(params, model.cfg), str(remote / "model.safetensors"))
  d = json.load(open(path / "config.json"))
  for k in ("rope_parameters", "dtype", "transformers_version"):
    d.pop(k, None)
  d.update(model_type="videollama3_vision_encoder",
           architectures=["Videollama3VisionEncoderModel"],
           auto_map={"AutoConfig": "configuration_videollama3_encoder.Videollama3VisionEncoderConfig",
                     "AutoModel": "modeling_videollama3_encoder.Videollama3VisionEncoderModel"})
  json.dump(d, open(remote / "config.json", "w"))
  m2, p2 = penguin_jax.from_pretrained(str(remote))
  assert m2.cfg.rope_theta == 10_000.0
  pix = _inputs(1)
  np.testing.assert_allclose(penguin_jax.encode_images(m2, p2, pix, GRIDS, MERGES),
                             _reference(ref_model, pix), atol=1e-4, rtol=0)


def test_save_pretrained_and_orbax_round_trip_bit_exact(saved_teacher, tmp_path):
  from safetensors.torch import load_file
  from launch import convert
  path, _ = saved_teacher
  assert convert.main(["hf-to-orbax", f"--hf_dir={path}", f"--out={tmp_path / 'ckpt'}"]) == 0
  assert convert.main(["orbax-to-hf", f"--ckpt={tmp_path / 'ckpt'}", f"--out={tmp_path / 'hf'}"]) == 0
  a, b = load_file(str(path / "model.safetensors")), load_file(str(tmp_path / "hf" / "model.safetensors"))
  assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
  back = transformers.VideoLlama3VisionModel.from_pretrained(str(tmp_path / "hf"))
  assert back.config.hidden_size == 96 and back.config.model_type == "video_llama_3_vision"


def test_scanned_layers_same_features_and_save_back_bit_exact(saved_teacher, tmp_path):
  """scan_layers=True (the training layout: blocks stacked under layers/layers) gives the
  same features, and save_pretrained from it writes the same tensors."""
  from safetensors.torch import load_file
  path, ref_model = saved_teacher
  model, params = penguin_jax.from_pretrained(str(path), scan_layers=True)
  assert params["layers"]["layers"]["q_proj"]["kernel"].shape == (2, 96, 4, 24)
  pix = _inputs(2)
  np.testing.assert_allclose(penguin_jax.encode_images(model, params, pix, GRIDS, MERGES),
                             _reference(ref_model, pix), atol=1e-4, rtol=0)
  penguin_jax.save_pretrained(model, params, str(tmp_path / "back"))
  a, b = load_file(str(path / "model.safetensors")), load_file(str(tmp_path / "back" / "model.safetensors"))
  assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_missing_tensor_is_named(saved_teacher, tmp_path):
  path, _ = saved_teacher
  shutil.copytree(path, tmp_path / "t")
  from penguin_jax import safetensors_io
  t = safetensors_io.load_file(str(tmp_path / "t" / "model.safetensors"))
  del t["encoder.layers.1.self_attn.k_proj.bias"]
  safetensors_io.save_file(t, str(tmp_path / "t" / "model.safetensors"))
  with pytest.raises(KeyError, match="encoder.layers.1.self_attn.k_proj.bias"):
    penguin_jax.from_pretrained(str(tmp_path / "t"))


def test_rope_is_a_true_2d_rotation():
  """docs/design.md §1.6: [row, col, row, col] angles, f[k] = theta^(-2k/(d/2)); rotate-half then
  pairs channel i with i + d/2 under one angle, so the rotation preserves norms and the
  score of q at p and k at p' depends only on p - p'."""
  cos, sin = teacher_lib.teacher_rope_2d(jnp.asarray([[[3, 5]]]), 8, 10_000.0)
  f = 10_000.0 ** (-np.arange(0, 4, 2) / 4)
  np.testing.assert_allclose(np.asarray(cos)[0, 0], np.cos(np.r_[3 * f, 5 * f, 3 * f, 5 * f]), rtol=1e-6)
  from penguin_jax.layers import apply_rope
  rs = np.random.RandomState(0)
  q, k = jnp.asarray(rs.randn(1, 1, 1, 8)), jnp.asarray(rs.randn(1, 1, 1, 8))
  score = lambda a, b: float(jnp.sum(apply_rope(q, *teacher_lib.teacher_rope_2d(jnp.asarray([[a]]), 8, 1e4))
                                     * apply_rope(k, *teacher_lib.teacher_rope_2d(jnp.asarray([[b]]), 8, 1e4))))
  np.testing.assert_allclose(score([2, 7], [1, 3]), score([5, 9], [4, 5]), rtol=1e-5)
