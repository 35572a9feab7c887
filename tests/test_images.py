"""Images (docs/design.md §2.1) against transformers' CLIP processing and the release's patch order."""
import dataclasses
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from data_pipelines import images
from data_pipelines.errors import BadSample


def _png(arr):
  buf = io.BytesIO()
  Image.fromarray(arr).save(buf, format="PNG")
  return buf.getvalue()


@pytest.mark.parametrize("checkpoint_says", [None, "clip"])
def test_patches_match_transformers_resize_normalize_and_release_order(checkpoint_says, tmp_path):
  """Normalisation: the released 0.5 / 0.5 unless the checkpoint's preprocessor_config.json
  says otherwise (here: OpenAI-CLIP's), read as the trainer reads it."""
  from transformers.image_transforms import normalize, rescale, resize
  from transformers.image_utils import PILImageResampling
  from data_pipelines import sample as sample_lib
  from data_pipelines.tokenizer import Qwen3Tokenizer
  from penguin_jax.train import data as data_lib
  from configs import stage3
  rs = np.random.RandomState(0)
  rgb = rs.randint(0, 256, (250, 390, 3)).astype(np.uint8)
  cfg = stage3.get_config("tiny")
  cfg.data.demo = False
  mean, std = (0.5,) * 3, (0.5,) * 3
  if checkpoint_says == "clip":
    mean, std = images.CLIP_MEAN, images.CLIP_STD
    enc = tmp_path / "encoder"
    enc.mkdir()
    (enc / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": list(mean), "image_std": list(std), "patch_size": 14}))
    cfg.data.preprocessor_config = str(enc)
  with pytest.raises(ValueError, match="no training data"):    # read before the data
    data_lib.prepare(cfg, str(tmp_path))
  assert tuple(cfg.data.image_mean) == tuple(mean)          # recorded in the run's config
  tok, scfg = Qwen3Tokenizer.load(), data_lib.sample_config(cfg)
  scfg = dataclasses.replace(scfg, image_merge_size=2, max_tokens=16384)
  out = sample_lib.process({"id": "s", "conversations": [
      {"from": "human", "value": "<image>hi"}, {"from": "gpt", "value": "ok"}]},
      [rgb], None, None, tok, scfg)
  patches, (t, gh, gw) = out["patches"], tuple(out["grids"][0])
  # native size rounded to multiples of 28: 250 -> 252, 390 -> 392
  assert (t, gh, gw) == (1, 18, 28)
  # reference: transformers' own resize (PIL bicubic) / rescale / normalize, then the
  # release's layout (t, c, gh/m, m, p, gw/m, m, p) -> (t, gh/m, gw/m, m, m, c, p, p)
  ref = resize(rgb, (252, 392), resample=PILImageResampling.BICUBIC)
  ref = normalize(rescale(ref.astype(np.float32), 1 / 255), mean, std)
  ref = torch.tensor(ref).permute(2, 0, 1)[None]                         # t, c, H, W
  ref = ref.reshape(1, 3, 9, 2, 14, 14, 2, 14).permute(0, 2, 5, 3, 6, 1, 4, 7).reshape(-1, 588)
  np.testing.assert_allclose(patches, ref.numpy(), atol=1e-5)


def test_preprocessor_config_errors_and_fallbacks(tmp_path):
  assert images.read_preprocessor_config(str(tmp_path)) is None
  f = tmp_path / "preprocessor_config.json"
  f.write_text(json.dumps({"patch_size": 14}))       # omitted: the release falls back to CLIP
  assert images.read_preprocessor_config(str(f)) == (images.CLIP_MEAN, images.CLIP_STD)
  f.write_text(json.dumps({"patch_size": 16}))
  with pytest.raises(ValueError, match="patch_size 16"):
    images.read_preprocessor_config(str(tmp_path))
  f.write_text(json.dumps({"image_mean": [0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}))
  with pytest.raises(ValueError, match="3 numbers"):
    images.read_preprocessor_config(str(tmp_path))


def test_large_image_is_downscaled_within_budget_keeping_aspect():
  rgb = np.zeros((1400, 2100, 3), np.uint8)
  _, (t, gh, gw) = images.process_image(rgb, merge_size=1, max_tokens=256)
  assert gh * gw <= 256 and gh * gw >= 200
  assert abs(gw / gh - 1.5) < 0.15


def test_bad_images_are_named(tmp_path):
  with pytest.raises(BadSample) as e:
    images.load_image(str(tmp_path / "nope.jpg"))
  assert e.value.reason == "missing_file"
  bad = tmp_path / "bad.png"
  bad.write_bytes(_png(np.zeros((8, 8, 3), np.uint8))[:40])
  with pytest.raises(BadSample) as e:
    images.load_image(str(bad))
  assert e.value.reason == "corrupt_image"
  with pytest.raises(BadSample) as e:
    images.process_image(np.zeros((2, 600, 3), np.uint8))
  assert e.value.reason == "aspect_ratio"
  ok = images.load_image(_png(np.full((5, 7, 3), 9, np.uint8)))
  assert ok.shape == (5, 7, 3) and ok.dtype == np.uint8
  gray = tmp_path / "g.png"
  Image.fromarray(np.zeros((4, 4), np.uint8), mode="L").save(gray)
  assert images.load_image(str(gray)).shape == (4, 4, 3)


def test_small_image_is_scaled_up_to_the_token_floor():
  _, (t, gh, gw) = images.process_image(np.zeros((61, 95, 3), np.uint8), merge_size=2)
  # 16 tokens x 28^2 x 1.5 pixels at least, sides rounded up: 112 x 196
  assert (gh, gw) == (8, 14)


def test_aspect_ratio_200_is_kept_above_is_rejected():
  """docs/design.md §2.1: the release trains ratios up to 200 (only > 200 is rejected)."""
  _, (t, gh, gw) = images.process_image(np.zeros((14, 2800, 3), np.uint8), min_tokens=4,
                                        max_tokens=256)
  assert t == 1 and gw / gh >= 50
  with pytest.raises(BadSample) as e:
    images.process_image(np.zeros((14, 2814, 3), np.uint8))
  assert e.value.reason == "aspect_ratio" and "201.0 > 200" in str(e.value)


def _budget_size(h, w, merge, max_tokens, n):
  """docs/design.md §2.1 by hand: n key frames of the FIRST image's h x w sharing max_tokens."""
  f = 14 * merge
  max_pixels = max_tokens * f * f * 0.95
  area = h * w if n * h * w <= max_pixels else max_pixels / n
  ww = (area / (h / w)) ** 0.5
  return max(f, round(ww * h / w / f) * f), max(f, round(ww / f) * f)


def test_several_images_sized_as_the_release_or_each_alone():
  """A 600x400 then a 451x300 image (width x height): as the release, both take the first
  one's size, 602x406 = 43 x 29 = 1,247 tokens each; per_image: 1,247 + 672 (448x294).
  With a budget they share it: two 1400x1400 images at max_tokens 10240."""
  from data_pipelines import sample as S
  shapes = [(400, 600), (300, 451)]
  kw = dict(merge_size=1, min_tokens=16, max_tokens=16384)
  assert _budget_size(400, 600, 1, 16384, 2) == (406, 602)
  assert images.image_sizes(shapes, **kw) == [(406, 602), (406, 602)]
  assert images.image_sizes(shapes, mode="per_image", **kw) == [(406, 602), (294, 448)]
  big = [(1400, 1400), (1000, 1000)]
  kw["max_tokens"] = 10240
  want = _budget_size(1400, 1400, 1, 10240, 2)
  assert images.image_sizes(big, **kw) == [want, want] and want[0] * want[1] // 196 == 4900
  assert [h * w // 196 for h, w in images.image_sizes(big, mode="per_image", **kw)] == [9801, 5041]
  with pytest.raises(ValueError, match="per_image"):
    images.image_sizes(shapes, mode="each", **kw)

  from data_pipelines.tokenizer import Qwen3Tokenizer
  tok = Qwen3Tokenizer.from_vocab_file()
  rs = np.random.RandomState(0)
  arrays = [rs.randint(0, 255, (400, 600, 3), np.uint8), rs.randint(0, 255, (300, 451, 3), np.uint8)]
  sample = {"id": "two", "image": ["a", "b"], "conversations": [
      {"from": "human", "value": "<image><image>Same?"}, {"from": "gpt", "value": "No."}]}
  for mode, tokens in (("release", [1247, 1247]), ("per_image", [1247, 672])):
    out = S.process(sample, arrays, None, None, tok, S.SampleConfig(multi_image=mode))
    assert [int(g[1] * g[2]) for g in out["grids"]] == tokens
    assert out["patches"].shape[0] == sum(tokens)
    assert int((out["input_ids"] == tok.image_token_id).sum()) == sum(tokens)
