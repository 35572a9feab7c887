"""TRA (docs/design.md §2.2): the four-step budget by hand, the detector on synthetic video."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data_pipelines import tra


def test_native_size_when_within_budget():
  # 3 frames of 280x420 at f=28: 3*117600 = 352800 <= 16384*784*0.95
  assert tra.allocate_frame_sizes(280, 420, [0, 1, 1]) == [(280, 420)] * 3
  # rounding to multiples of f = 28 (Python's round: 300/28=10.7 -> 11)
  assert tra.allocate_frame_sizes(300, 400, [0]) == [(308, 392)]


def test_step2_key_frames_get_16x_the_area():
  f = 28
  max_px = 100 * f * f * 0.95
  sizes = tra.allocate_frame_sizes(560, 560, [0, 1, 1, 1, 1], max_tokens=100, min_tokens=1)
  a_k = max_px / (1 + 4 / 16)
  side_k = round(np.sqrt(a_k) / f) * f
  side_i = round(np.sqrt(a_k / 16) / f) * f
  assert sizes[0] == (side_k, side_k) and sizes[1:] == [(side_i, side_i)] * 4


def test_step3_intermediate_floor_and_step4_key_floor():
  f = 28
  min_px = 16 * f * f * 1.5
  max_px = 400 * f * f * 0.95
  types = [0] + [1] * 8
  sizes = tra.allocate_frame_sizes(1000, 1000, types, max_tokens=400, min_tokens=16)
  # A_k / 16 < min_pixels, so intermediates get min_pixels, key gets the rest
  a_k = (max_px - 8 * min_px) / 1
  assert sizes[1] == (round(np.sqrt(min_px) / f) * f,) * 2
  assert sizes[0] == (round(np.sqrt(a_k) / f) * f,) * 2
  # step 4: many intermediates exhaust the budget; the key frame keeps min_pixels
  sizes = tra.allocate_frame_sizes(1000, 1000, [0] + [1] * 40, max_tokens=200, min_tokens=16)
  assert sizes[0][0] * sizes[0][1] >= min_px


def test_aspect_ratio_is_kept_and_min_is_rounded_up():
  (h, w), = tra.allocate_frame_sizes(100, 3000, [0], min_tokens=16, max_tokens=16384)
  assert h % 28 == 0 and w % 28 == 0 and h * w >= 16 * 28 * 28 * 1.5
  assert abs(w / h - 30) / 30 < 0.5


def test_key_frame_resize_equals_torch_bit_for_bit():
  """docs/design.md §2.2: the release resizes key-frame candidates with torch's antialiased
  bilinear in float32; ours equals it to the last bit (down, up, one axis, large)."""
  rs = np.random.RandomState(0)
  for (H, W, h, w) in [(120, 160, 42, 56), (37, 91, 14, 28), (30, 40, 56, 70),
                       (100, 100, 98, 98), (64, 640, 64, 56), (720, 1280, 70, 126)]:
    frames = rs.randint(0, 256, (2, H, W, 3)).astype(np.uint8)
    want = F.interpolate(torch.from_numpy(frames).permute(0, 3, 1, 2).float(), size=(h, w),
                         mode="bilinear", antialias=True, align_corners=False)
    got = tra.resize_antialiased(frames, h, w)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want.permute(0, 2, 3, 1).numpy(), err_msg=str((H, W, h, w)))


def _video():
  """10 frames: a scene (gradient + moving square), a cut at frame 5 to another scene."""
  rs = np.random.RandomState(0)
  frames = np.zeros((10, 112, 140, 3), np.uint8)
  yy, xx = np.mgrid[0:112, 0:140]
  for i in range(10):
    if i < 5:
      frames[i, ..., 0] = 30 + xx // 2
      frames[i, ..., 1] = 60 + yy // 2
      frames[i, ..., 2] = 90
      frames[i, 40:60, 10 + i:30 + i] = (250, 250, 250)  # small motion
    else:
      frames[i] = rs.randint(0, 255, (1, 1, 3)).astype(np.uint8) // 2
      frames[i, ..., 1] = 200 - yy
  return frames


def test_detector_finds_the_scene_cut_only():
  types = tra.detect_key_frames(_video())
  assert types == [0, 1, 1, 1, 1, 0, 1, 1, 1, 1]


def test_detector_sees_saturation_change_but_not_hue_only_change():
  import cv2
  base = np.zeros((2, 56, 56, 3), np.uint8)
  hsv = np.zeros((56, 56, 3), np.uint8)
  hsv[..., 0], hsv[..., 1], hsv[..., 2] = 20, 255, 100   # orange
  base[0] = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
  hue = hsv.copy(); hue[..., 0] = 110                 # hue-only change: orange -> blue
  sat = hsv.copy(); sat[..., 1] = 0                   # saturation change: orange -> grey
  hue_video = np.stack([base[0], cv2.cvtColor(hue, cv2.COLOR_HSV2RGB)])
  sat_video = np.stack([base[0], cv2.cvtColor(sat, cv2.COLOR_HSV2RGB)])
  assert tra.detect_key_frames(hue_video) == [0, 1]   # the release's blind spot, kept
  assert tra.detect_key_frames(sat_video) == [0, 0]


def test_bad_inputs():
  with pytest.raises(ValueError, match="aspect ratio"):
    tra.detect_key_frames(np.zeros((1, 2, 500, 3), np.uint8))
  with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
    tra.detect_key_frames(np.zeros((4, 4, 4), np.uint8))
