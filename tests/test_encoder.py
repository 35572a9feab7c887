"""Penguin-Encoder against an independent PyTorch forward (docs/design.md §1.2)."""
import numpy as np
import pytest
import torch

import penguin_jax
from penguin_jax import patches as P
from torch_reference import TorchPenguinEncoder, encoder_hf_config

ITEMS = [((1, 4, 6), 1),   # non-square image, merge 1
         ((2, 4, 4), 2),   # two-frame video, merge 2
         ((1, 6, 2), 2),   # tall image, merge 2
         ((1, 2, 2), 1)]


@pytest.fixture(scope="module")
def torch_encoder(tmp_path_factory):
  path = tmp_path_factory.mktemp("encoder")
  enc = TorchPenguinEncoder(encoder_hf_config())
  enc.save(str(path))
  return path, enc


@pytest.mark.parametrize("scan", [False, True])
def test_encoder_matches_independent_torch(torch_encoder, scan):
  path, ref = torch_encoder
  model, params = penguin_jax.from_pretrained(str(path), scan_layers=scan)
  grids = [g for g, _ in ITEMS]
  merges = [m for _, m in ITEMS]
  n = sum(int(np.prod(g)) for g in grids)
  pix = np.random.RandomState(0).randn(n, 3 * 14 * 14).astype(np.float32)
  ours = penguin_jax.encode_images(model, params, pix, grids, merges)
  theirs = ref(torch.tensor(pix), grids, merges).numpy()
  assert ours.shape == (sum(t * h * w // m ** 2 for (t, h, w), m in ITEMS), 64)
  np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-4)


def test_items_do_not_see_each_other(torch_encoder):
  """Block-diagonal attention: an item's features do not depend on its neighbours."""
  path, _ = torch_encoder
  model, params = penguin_jax.from_pretrained(str(path))
  rs = np.random.RandomState(1)
  a, b = rs.randn(16, 588).astype(np.float32), rs.randn(24, 588).astype(np.float32)
  both = penguin_jax.encode_images(model, params, np.concatenate([a, b]), [(1, 4, 4), (1, 4, 6)], [1, 1])
  alone = penguin_jax.encode_images(model, params, a, [(1, 4, 4)], [1])
  np.testing.assert_allclose(both[:16], alone, atol=1e-5)


def test_merge_plan_is_2x2_average_for_merge_2():
  idx, w = P.merge_plan(1, 4, 6, 2)
  assert idx.shape == (6, 4)
  np.testing.assert_allclose(w, 0.25)
  # output token 0 averages the first merge block (patches 0..3 in block order)
  assert sorted(idx[0]) == [0, 1, 2, 3]
  idx1, w1 = P.merge_plan(2, 2, 2, 1)
  np.testing.assert_array_equal(idx1[:, 0], np.arange(8))
  np.testing.assert_allclose(w1[:, 0], 1.0)
  np.testing.assert_allclose(w1[:, 1:], 0.0)


def test_bilinear_matrix_matches_torch_interpolate():
  import torch.nn.functional as F
  for n_in, n_out in [(8, 4), (6, 3), (9, 3), (5, 5), (7, 2)]:
    x = torch.eye(n_in)[None, None]                        # [1, 1, in, in]
    y = F.interpolate(x, size=(n_out, n_in), mode="bilinear", align_corners=False)[0, 0]
    np.testing.assert_allclose(P.bilinear_matrix(n_in, n_out), y.numpy(), atol=1e-6)


def test_bad_grid_is_a_clear_error(torch_encoder):
  path, _ = torch_encoder
  model, params = penguin_jax.from_pretrained(str(path))
  with pytest.raises(ValueError, match="not divisible by merge size 2"):
    penguin_jax.encode_images(model, params, np.zeros((15, 588)), [(1, 3, 5)], [2])
  with pytest.raises(ValueError, match="pixel_values has shape"):
    penguin_jax.encode_images(model, params, np.zeros((10, 588)), [(1, 4, 4)], [1])


def test_encoder_from_text_only_qwen3(qwen3_untied):
  """The paper's idea: the encoder's layers are the LLM's, embeddings dropped."""
  path, hf = qwen3_untied
  enc, params = penguin_jax.encoder_from_qwen3(str(path))
  assert "embed_tokens" not in params and "lm_head" not in params
  sd = hf.state_dict()
  np.testing.assert_array_equal(
      np.asarray(params["layers"]["layers_1"]["mlp"]["down_proj"]["kernel"]),
      sd["model.layers.1.mlp.down_proj.weight"].numpy().T)
  np.testing.assert_array_equal(np.asarray(params["norm"]["scale"]), sd["model.norm.weight"].numpy())
  assert params["patch_embedding"]["kernel"].shape == (588, 64)
  out = penguin_jax.encode_images(enc, params, np.ones((16, 588), np.float32), [(1, 4, 4)], [2])
  assert out.shape == (4, 64) and np.isfinite(out).all()
