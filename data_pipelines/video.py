"""Video (DESIGN 2.2): decode with PyAV (no system ffmpeg), sample at an fps with a frame
cap, keep timestamps, then TRA: key frames, the frame budget, patches per frame.

Sampling as the release: with `duration` decoded frames at `vid_fps`, if the video is
shorter than `max_frames` seconds, one frame from the middle of every 1/fps-second segment
(`arange(seg // 2, duration, seg)`, seg = vid_fps // fps); else `max_frames` frames by
`linspace(0, duration - 1, max_frames)`. Timestamps are frame index / vid_fps.
"""
from __future__ import annotations

import os

import numpy as np

from data_pipelines import images, tra
from data_pipelines.errors import BadSample


def sample_indices(duration: int, vid_fps: float, fps: float, max_frames: int) -> np.ndarray:
  if duration <= 0:
    raise BadSample("corrupt_video", "no frames")
  if fps and duration / vid_fps < max_frames:
    seg = max(int(min(vid_fps // fps, duration)), 1)
    idx = np.arange(seg // 2, duration, seg, dtype=int)
    if len(idx) <= max_frames:
      return idx
  return np.linspace(0, duration - 1, max_frames, dtype=int)


def load_video(path, fps: float = 1.0, max_frames: int = 180):
  """path (or the file's bytes) -> (frames uint8 [N, H, W, 3] RGB, timestamps [N] seconds).
  Raises BadSample: missing_file, corrupt_video, truncated_video."""
  import av
  import io
  if isinstance(path, bytes):
    src, path = io.BytesIO(path), "<bytes>"
  elif not os.path.isfile(path):
    raise BadSample("missing_file", str(path))
  else:
    src = path
  try:
    with av.open(src) as container:
      if not container.streams.video:
        raise BadSample("corrupt_video", f"{path}: no video stream")
      stream = container.streams.video[0]
      vid_fps = float(stream.average_rate or stream.guessed_rate or 0)
      duration = stream.frames
      if vid_fps <= 0:
        raise BadSample("corrupt_video", f"{path}: unknown frame rate")
      if duration <= 0 and stream.duration and stream.time_base:  # e.g. Matroska
        duration = int(round(float(stream.duration * stream.time_base) * vid_fps))
      if duration <= 0 and container.duration:
        duration = int(round(container.duration / 1e6 * vid_fps))
      if duration <= 0:  # no length anywhere: count by decoding
        duration = sum(1 for _ in container.decode(stream))
        container.seek(0)
      wanted = sample_indices(duration, vid_fps, fps, max_frames)
      want = set(int(i) for i in wanted)
      got = {}
      for i, frame in enumerate(container.decode(stream)):
        if i in want:
          got[i] = frame.to_ndarray(format="rgb24")
        if i >= wanted[-1]:
          break
  except BadSample:
    raise
  except (av.error.FFmpegError, OSError, ValueError, IndexError) as e:
    raise BadSample("corrupt_video", f"{path}: {e}")
  missing = [i for i in want if i not in got]
  if missing:
    raise BadSample("truncated_video", f"{path}: {len(got)} of {len(want)} sampled frames "
                    f"decoded (the container promises {duration})")
  frames = np.stack([got[int(i)] for i in wanted])
  return frames, (wanted / vid_fps).astype(np.float64)


def process_video(frames: np.ndarray, *, merge_size: int = 2, min_tokens: int = 16,
                  max_tokens: int = 16384, use_tra: bool = True,
                  mean=images.RELEASE_MEAN, std=images.RELEASE_STD):
  """uint8 [N, H, W, 3] -> (patches [sum, 588], per-frame grids [(1, gh, gw)], frame types).

  TRA on: key frames by `tra.detect_key_frames`, intermediates get 1/16 of the area.
  TRA off: every frame is a key frame (one shared budget)."""
  n, h, w = frames.shape[:3]
  images.check_aspect_ratio(h, w)
  types = tra.detect_key_frames(frames) if use_tra else [tra.KEY] * n
  sizes = tra.allocate_frame_sizes(h, w, types, patch_size=images.PATCH,
                                   merge_size=merge_size, min_tokens=min_tokens,
                                   max_tokens=max_tokens)
  patches, grids = [], []
  for frame, (th, tw) in zip(frames, sizes):
    p, g = images.to_patches(images.resize_bicubic(frame, th, tw)[None], merge_size, mean, std)
    patches.append(p)
    grids.append(g)
  return np.concatenate(patches), grids, types
