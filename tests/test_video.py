"""Video decoding with PyAV, release-style sampling, TRA sizes, bad files."""
import numpy as np
import pytest

from data_pipelines import video
from data_pipelines.errors import BadSample


def write_video(path, n=50, rate=10, size=(112, 140), cut_at=30):
  """A synthetic mp4: a moving square on a gradient, a scene cut at frame `cut_at`."""
  import av
  h, w = size
  yy, xx = np.mgrid[0:h, 0:w]
  with av.open(str(path), "w") as out:
    st = out.add_stream("mpeg4", rate=rate)
    st.width, st.height, st.pix_fmt = w, h, "yuv420p"
    for i in range(n):
      f = np.zeros((h, w, 3), np.uint8)
      if i < cut_at:
        f[..., 0], f[..., 1], f[..., 2] = 40 + xx // 2, 60 + yy // 2, 90
        f[30:60, 10 + i:40 + i] = 240
      else:
        f[...] = (150 + yy // 2)[..., None]      # grey: saturation drops to 0
      for p in st.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
        out.mux(p)
    for p in st.encode():
      out.mux(p)


def test_sampling_follows_the_release():
  np.testing.assert_array_equal(video.sample_indices(50, 10.0, 1, 180), [5, 15, 25, 35, 45])
  # longer than max_frames seconds: uniform linspace over the whole video
  np.testing.assert_array_equal(video.sample_indices(100, 10.0, 1, 4), [0, 33, 66, 99])


def test_load_video_frames_timestamps_and_tra(tmp_path):
  p = tmp_path / "v.mp4"
  write_video(p)
  frames, ts = video.load_video(str(p), fps=1, max_frames=180)
  assert frames.shape == (5, 112, 140, 3) and frames.dtype == np.uint8
  np.testing.assert_allclose(ts, [0.5, 1.5, 2.5, 3.5, 4.5])
  patches, grids, types = video.process_video(frames, merge_size=2, min_tokens=1, max_tokens=60)
  assert types[0] == 0 and types[3] == 0        # first frame, and the cut (frame 30 -> t=3.5)
  assert types[1] == types[2] == types[4] == 1
  assert patches.shape == (sum(t * h * w for t, h, w in grids), 588)
  key_area = grids[0][1] * grids[0][2]
  assert key_area > grids[1][1] * grids[1][2]   # intermediate frames get fewer tokens


def test_bad_videos_are_named(tmp_path):
  with pytest.raises(BadSample) as e:
    video.load_video(str(tmp_path / "none.mp4"))
  assert e.value.reason == "missing_file"
  junk = tmp_path / "junk.mp4"
  junk.write_bytes(b"not a video at all" * 100)
  with pytest.raises(BadSample) as e:
    video.load_video(str(junk))
  assert e.value.reason == "corrupt_video"
  p = tmp_path / "v.mp4"
  write_video(p, n=60, cut_at=100)
  cut = tmp_path / "cut.mp4"
  cut.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 3])
  with pytest.raises(BadSample) as e:
    video.load_video(str(cut))
  assert e.value.reason in ("truncated_video", "corrupt_video")
