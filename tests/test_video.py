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


def _indexed_video(path, fps, seconds, size=32):
  """An mp4 whose frame i shows i in its colour (3 channels x 32 levels): the frame
  index can be read back from any decoded frame. Returns the number of frames."""
  import av
  import fractions
  rate = fractions.Fraction(30000, 1001) if fps == 29.97 else fractions.Fraction(fps)
  n = int(round(seconds * float(rate)))
  with av.open(str(path), "w") as out:
    st = out.add_stream("mpeg4", rate=rate)
    st.width = st.height = size
    st.pix_fmt = "yuv420p"
    st.codec_context.qmin, st.codec_context.qmax = 1, 2
    for i in range(n):
      f = np.empty((size, size, 3), np.uint8)
      f[...] = [8 * (i % 32) + 4, 8 * (i // 32 % 32) + 4, 8 * (i // 1024) + 4]
      for p in st.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
        out.mux(p)
    for p in st.encode():
      out.mux(p)
  return n


def _index_of(frame):
  a, b, c = (int(round((v - 4) / 8)) for v in frame[8:24, 8:24].reshape(-1, 3).mean(0))
  return a + 32 * b + 1024 * c


def _ffmpeg_fps_filter(path):
  """(source frame index, timestamp) of what ffmpeg's `fps=1:round=down` filter (the
  release's decoder) outputs, through PyAV's libavfilter graph."""
  import av
  out = []
  with av.open(str(path)) as c:
    st = c.streams.video[0]
    g = av.filter.Graph()
    src, fps, sink = g.add_buffer(template=st), g.add("fps", "fps=1:round=down"), g.add("buffersink")
    src.link_to(fps)
    fps.link_to(sink)
    g.configure()
    for frame in [*c.decode(st), None]:
      g.push(frame)
      while True:
        try:
          o = g.pull()
        except (av.BlockingIOError, av.EOFError):
          break
        out.append((_index_of(o.to_ndarray(format="rgb24")), float(o.pts * o.time_base)))
  return out


@pytest.mark.parametrize("rate", [10, 25, 29.97])
def test_video_files_sample_as_ffmpeg_fps_filter(tmp_path, rate):
  """docs/design.md §2.2: a video file's frames and timestamps are those of ffmpeg's 1-fps filter
  (the partial last second dropped, timestamps k / fps); more than max_frames: a linspace
  subset of them; a clip under 1 s (the filter gives nothing): the release's other path."""
  from data_pipelines import chat, sample
  from data_pipelines.tokenizer import Qwen3Tokenizer
  for seconds in (0.8, 7.6, 40, 200):
    p = tmp_path / f"v{seconds}.mp4"
    n = _indexed_video(p, rate, seconds)
    ref = _ffmpeg_fps_filter(p)
    frames, ts = video.load_video(str(p), fps=1, max_frames=10_000)
    got = [_index_of(f) for f in frames]
    if seconds < 1:
      assert ref == []
      native = 30000 / 1001 if rate == 29.97 else rate
      want = video.sample_indices(n, native, 1, 180)
      assert got == want.tolist() and np.allclose(ts, want / native)
      continue
    assert len(ref) == int(n / native + 1e-9), (rate, seconds)   # whole seconds only
    assert got == [i for i, _ in ref], (rate, seconds)
    np.testing.assert_array_equal(ts, [t for _, t in ref])
    if seconds == 200:
      frames, ts = video.load_video(str(p), fps=1, max_frames=180)
      keep = np.linspace(0, len(ref) - 1, 180, dtype=int)
      assert [_index_of(f) for f in frames] == [ref[k][0] for k in keep]
      np.testing.assert_array_equal(ts, [ref[k][1] for k in keep])
    if seconds == 7.6:   # the frame text uses the timestamps
      tok = Qwen3Tokenizer.from_vocab_file()
      rec = {"id": "v", "video": ["v.mp4"], "conversations": [
          {"from": "human", "value": "<video>\nWhat?"}, {"from": "gpt", "value": "Colours."}]}
      out = sample.process(rec, [], frames, ts, tok, sample.SampleConfig(min_tokens=1, max_tokens=64))
      text = tok.decode(out["input_ids"])
      assert all(f"Time {k}.0s:" in text for k in range(7)) and "Time 7.0s" not in text


def test_sampling_follows_the_release():
  np.testing.assert_array_equal(video.sample_indices(50, 10.0, 1, 180), [5, 15, 25, 35, 45])
  # longer than max_frames seconds: uniform linspace over the whole video
  np.testing.assert_array_equal(video.sample_indices(100, 10.0, 1, 4), [0, 33, 66, 99])


def test_load_video_frames_timestamps_and_tra(tmp_path):
  p = tmp_path / "v.mp4"
  write_video(p)
  frames, ts = video.load_video(str(p), fps=1, max_frames=180)
  assert frames.shape == (5, 112, 140, 3) and frames.dtype == np.uint8
  np.testing.assert_allclose(ts, [0.0, 1.0, 2.0, 3.0, 4.0])   # frames 9, 19, ..., 49
  patches, grids, types = video.process_video(frames, merge_size=2, min_tokens=1, max_tokens=60)
  assert types[0] == 0 and types[3] == 0        # first frame, and the cut (frame 30 -> 39)
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
