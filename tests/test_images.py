"""Images (DESIGN 2.1) against transformers' CLIP processing and the release's patch order."""
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
  from launch.train import prepare_data
  from configs import stage3
  rs = np.random.RandomState(0)
  rgb = rs.randint(0, 256, (250, 390, 3)).astype(np.uint8)
  cfg = stage3.get_config("tiny")
  cfg.data.demo, cfg.data.train_files = False, (str(tmp_path / "shard.array_record"),)
  (tmp_path / "shard.array_record").write_bytes(b"")
  mean, std = (0.5,) * 3, (0.5,) * 3
  if checkpoint_says == "clip":
    mean, std = images.CLIP_MEAN, images.CLIP_STD
    enc = tmp_path / "encoder"
    enc.mkdir()
    (enc / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": list(mean), "image_std": list(std), "patch_size": 14}))
    cfg.data.preprocessor_config = str(enc)
  _, tok, scfg = prepare_data(cfg, str(tmp_path))
  assert tuple(cfg.data.image_mean) == tuple(mean)          # recorded in the run's config
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
