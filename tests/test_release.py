"""Parity with the release's own code: a tiny random Penguin-VL that the release's classes
built and saved (`tests/fixtures/release_tiny`, made by its `make_fixture.py`, which runs
the release at the commit its README names), loaded by `penguin_jax.from_pretrained`:
its image preprocessing, encoder features and text / image logits equal the release's."""
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

import penguin_jax
from data_pipelines import images
from penguin_jax import patches as P, preprocessor

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "release_tiny")
REF = np.load(os.path.join(FIXTURE, "reference.npz"))


@pytest.fixture(scope="module")
def release():
  """The release's folder as it saved it (the encoder found by the path in its config,
  relative to the working directory, or next to it)."""
  return penguin_jax.from_pretrained(os.path.join(FIXTURE, "vlm"))


def test_text_logits_equal_the_releases(release):
  model, params = release
  got = np.asarray(model.apply({"params": params}, jnp.asarray(REF["input_ids"], jnp.int32)))
  assert np.abs(REF["logits_text"]).max() > 1.0
  np.testing.assert_allclose(got, REF["logits_text"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("merge", [1, 2])
def test_image_preprocessing_equals_the_releases(merge):
  """The release's processor with its folder's preprocessor_config.json (CLIP's mean and
  std) gives our patches; our own default normalisation (0.5) does not: a negative
  control that the comparison sees the normalisation."""
  suffix = "" if merge == 1 else "_merge2"
  mean, std = preprocessor.read(os.path.join(FIXTURE, "encoder"))
  pix, grid = images.process_image(REF["image_uint8"], merge_size=merge, mean=mean, std=std)
  assert tuple(grid) == tuple(REF["grid_sizes" + suffix][0])
  np.testing.assert_allclose(pix, REF["pixel_values" + suffix], atol=1e-6, rtol=0)
  default, _ = images.process_image(REF["image_uint8"], merge_size=merge)
  assert np.abs(default - REF["pixel_values" + suffix]).max() > 0.1


def _visual_batch(pixels, grids, merges):
  lay = P.pack_items([tuple(int(v) for v in g) for g in grids], [int(m) for m in merges])
  return {"patches": jnp.asarray(pixels[None]),
          **{k: jnp.asarray(lay[k][None]) for k in
             ("patch_segment_ids", "patch_positions", "merge_index", "merge_weight")}}


@pytest.mark.parametrize("merge", [1, 2])
def test_encoder_features_equal_the_releases(release, merge):
  model, params = release
  suffix = "" if merge == 1 else "_merge2"
  batch = _visual_batch(REF["pixel_values" + suffix], REF["grid_sizes" + suffix],
                        REF["merge_sizes" + suffix])
  got = np.asarray(model.apply({"params": params}, *batch.values(),
                               method=model.visual_features))[0]
  np.testing.assert_allclose(got, REF["encoder_features" + suffix], atol=2e-5, rtol=0)


@pytest.mark.parametrize("change", ["swapped_halves", "true_rotation"])
def test_the_encoder_fixture_tells_a_wrong_2d_rope(release, monkeypatch, change):
  """Negative controls of the encoder comparison: the 2D RoPE with its row and column
  halves swapped, or made a true 2D rotation (each pair rotated by one axis's angle, not
  the release's quirk, docs/design.md), gives features far outside the tolerance."""
  from penguin_jax import encoder, layers
  real = layers.rope_2d

  def wrong(pos, head_dim, theta):
    if change == "swapped_halves":
      return real(pos[..., ::-1], head_dim, theta)
    f = layers.inv_freq(head_dim, theta)                            # [d/4] per axis
    f = f[: head_dim // 4]
    ang = jnp.concatenate([pos[..., :1] * f, pos[..., 1:] * f], -1).astype(jnp.float32)
    ang = jnp.concatenate([ang, ang], -1)                           # pairs (i, i + d/2)
    return jnp.cos(ang), jnp.sin(ang)
  monkeypatch.setattr(encoder, "rope_2d", wrong)
  model, params = release
  batch = _visual_batch(REF["pixel_values"], REF["grid_sizes"], REF["merge_sizes"])
  got = np.asarray(model.apply({"params": params}, *batch.values(),
                               method=model.visual_features))[0]
  assert np.abs(got - REF["encoder_features"]).max() > 100 * 2e-5


def test_image_logits_equal_the_releases(release):
  model, params = release
  ids = REF["input_ids_image"].astype(np.int32)
  assert model.cfg.image_token_index == 300
  visual = np.nonzero(ids[0] == 300)[0][None]                     # [1, V]
  batch = _visual_batch(REF["pixel_values"], REF["grid_sizes"], REF["merge_sizes"])
  got = np.asarray(model.apply({"params": params}, jnp.asarray(ids),
                               visual_positions=jnp.asarray(visual, jnp.int32), **batch))
  np.testing.assert_allclose(got, REF["logits_image"], atol=2e-5, rtol=0)
  text_only = np.asarray(model.apply({"params": params}, jnp.asarray(ids)))
  assert np.abs(text_only - REF["logits_image"]).max() > 1e-2   # the image is seen


def test_the_fixture_is_what_its_readme_says():
  readme = open(os.path.join(FIXTURE, "README.md")).read()
  d = json.load(open(os.path.join(FIXTURE, "vlm", "config.json")))
  assert d["model_type"] == "penguinvl_qwen3" and d["transformers_version"] in readme
  assert os.path.isfile(os.path.join(FIXTURE, "vlm", "penguin_encoder", "config.json"))


def test_save_pretrained_writes_the_tensors_the_release_wrote(release, tmp_path):
  """The release's folder, loaded and saved again by us: the VLM's and the encoder's
  safetensors hold the tensors its own `save_pretrained` wrote (names, shapes, dtypes,
  values), and the config keys both write agree (but the paths to the encoder)."""
  from penguin_jax import safetensors_io
  model, params = release
  penguin_jax.save_pretrained(model, params, str(tmp_path / "out"))
  for ours, theirs in [("model.safetensors", "vlm/model.safetensors"),
                       ("penguin_encoder/model.safetensors", "encoder/model.safetensors")]:
    a = safetensors_io.load_file(str(tmp_path / "out" / ours))
    b = safetensors_io.load_file(os.path.join(FIXTURE, theirs))
    assert sorted(a) == sorted(b) and len(b) > 10, ours
    for k in b:
      assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  ca = json.load(open(tmp_path / "out" / "config.json"))
  cb = json.load(open(os.path.join(FIXTURE, "vlm", "config.json")))
  differ = {k for k in cb.keys() & ca.keys() if ca[k] != cb[k]}
  assert differ == {"mm_vision_encoder", "vision_encoder"}, differ      # the encoder's path
