"""Video (docs/design.md §2.2): decode with PyAV (no system ffmpeg), sample at an fps with a frame
cap, keep timestamps, then TRA: key frames, the frame budget, patches per frame.

Sampling as the release's training path (`mm_utils.load_video`) does:
* video files: ffmpeg's `fps=FPS:round=down` filter (`fps_filter_indices`, the filter's
  rule computed from the frames' timestamps): output frame k shows the last frame whose
  time, in units of 1/fps rounded down, is <= k, until the end of the last frame rounded
  down (a final partial second is dropped); its timestamp is start + k / fps (0.0, 1.0,
  2.0, ...); more than `max_frames` of them: a linspace subset.
* frame folders (a `video` entry that is a folder: its files in sorted name order, taken
  as 3 fps, as `mm_utils.load_video_from_ids` reads one) and gifs and clips too short for
  one such frame (under 1 s at 1 fps): the release's other
  path (`sample_indices`): one frame from the middle of every 1/fps-second segment
  (`arange(seg // 2, n, seg)`, seg = native_fps // fps), or `max_frames` frames by
  `linspace(0, n - 1, max_frames)` for a long clip; timestamp = index / native_fps.
"""
from __future__ import annotations

import fractions
import io
import math
import os

import av
import numpy as np

from data_pipelines import images, tra
from data_pipelines.errors import BadSample


def sample_indices(duration: int, vid_fps: float, fps: float, max_frames: int) -> np.ndarray:
  """The release's frame-folder / gif path: indices of `duration` frames at `vid_fps`."""
  if duration <= 0:
    raise BadSample("corrupt_video", "no frames")
  if fps and duration / vid_fps < max_frames:
    seg = max(int(min(vid_fps // fps, duration)), 1)
    idx = np.arange(seg // 2, duration, seg, dtype=int)
    if len(idx) <= max_frames:
      return idx
  return np.linspace(0, duration - 1, max_frames, dtype=int)


def fps_filter_indices(pts, time_base, end_pts, fps) -> np.ndarray:
  """Which input frame each output frame of ffmpeg's `fps=FPS:round=down` shows.

  pts: the frames' presentation timestamps (ints, ascending) in `time_base` seconds;
  end_pts: the end of the last frame (its pts + duration). A time becomes an output slot
  number by floor(t * fps) (exact rational arithmetic, as `av_rescale_q_rnd`); slots run
  from the first frame's to the end's (excluded), and slot n shows the last frame whose
  slot is <= n (a gap repeats a frame). Empty when the clip ends inside its first slot."""
  scale = fractions.Fraction(time_base) * fractions.Fraction(fps)
  slot = lambda p: math.floor(p * scale)
  slots = [slot(p) for p in pts]
  if not slots:
    return np.zeros((0,), int)
  out, j = [], 0
  for n in range(slots[0], slot(end_pts)):
    while j + 1 < len(slots) and slots[j + 1] <= n:
      j += 1
    out.append(j)
  return np.asarray(out, int)


FRAME_FOLDER_FPS = 3     # the rate the release takes a frame folder at (mm_utils)


def load_frames(files: list, fps: float = 1.0, max_frames: int = 180):
  """A frame folder's files (encoded image bytes, in name order) -> (frames uint8 [N, H, W,
  3] RGB, timestamps [N] seconds): `sample_indices` at FRAME_FOLDER_FPS, timestamp =
  index / 3; only the sampled files are decoded. Raises BadSample corrupt_video (a frame
  that does not decode, frames of different sizes)."""
  wanted = sample_indices(len(files), FRAME_FOLDER_FPS, fps, max_frames)
  frames = []
  for i in wanted:
    try:
      frames.append(images.load_image(files[int(i)]))
    except BadSample as e:
      raise BadSample("corrupt_video", f"frame {int(i)} of {len(files)}: {e.reason} ({e.detail})")
  if len({f.shape for f in frames}) > 1:
    raise BadSample("corrupt_video", f"frames of different sizes {sorted({f.shape[:2] for f in frames})}")
  return np.stack(frames), wanted / FRAME_FOLDER_FPS


def load_video(path, fps: float = 1.0, max_frames: int = 180):
  """path (or the file's bytes, or a frame folder's files: a list of bytes) -> (frames
  uint8 [N, H, W, 3] RGB, timestamps [N] seconds), sampled as the module docstring says.
  Raises BadSample: missing_file, corrupt_video, truncated_video."""
  if isinstance(path, list):
    return load_frames(path, fps, max_frames)
  if isinstance(path, bytes):
    src, name = io.BytesIO(path), "<bytes>"
  elif not os.path.isfile(path):
    raise BadSample("missing_file", str(path))
  else:
    src, name = path, path
  try:
    with av.open(src) as container:
      if not container.streams.video:
        raise BadSample("corrupt_video", f"{name}: no video stream")
      stream = container.streams.video[0]
      vid_fps = float(stream.average_rate or stream.guessed_rate or 0)
      if vid_fps <= 0:
        raise BadSample("corrupt_video", f"{name}: unknown frame rate")
      # The frames' timestamps, from the packets (no decoding).
      packets = [(pk.pts, pk.duration) for pk in container.demux(stream)
                 if pk.pts is not None and pk.size]
      if not packets:
        raise BadSample("corrupt_video", f"{name}: no frames")
      packets.sort()
      pts = [p for p, _ in packets]
      tb = stream.time_base
      last_dur = packets[-1][1] or int(round(1 / (vid_fps * tb)))
      _check_complete(stream, container, pts[-1] + last_dur, tb, name)
      gif = "gif" in (container.format.name or "")
      wanted = None if gif or not fps else fps_filter_indices(pts, tb, pts[-1] + last_dur,
                                                               fractions.Fraction(fps).limit_denominator(1001))
      if wanted is not None and len(wanted):
        start = float(stream.start_time * tb) if stream.start_time is not None else 0.0
        stamps = start + np.arange(len(wanted)) / float(fps)
        if len(wanted) > max_frames:
          keep = np.linspace(0, len(wanted) - 1, max_frames, dtype=int)
          wanted, stamps = wanted[keep], stamps[keep]
      else:                      # gifs, clips shorter than one output frame
        wanted = sample_indices(len(pts), vid_fps, fps, max_frames)
        stamps = wanted / vid_fps
      container.seek(0)
      want = set(int(i) for i in wanted)
      got = {}
      for i, frame in enumerate(container.decode(stream)):
        if i in want:
          got[i] = frame.to_ndarray(format="rgb24")
        if i >= wanted.max():
          break
  except BadSample:
    raise
  except (av.error.FFmpegError, OSError, ValueError, IndexError) as e:
    raise BadSample("corrupt_video", f"{name}: {e}")
  missing = [i for i in want if i not in got]
  if missing:
    raise BadSample("truncated_video", f"{name}: {len(got)} of {len(want)} sampled frames "
                    f"decoded (the stream has {len(pts)} packets)")
  frames = np.stack([got[int(i)] for i in wanted])
  return frames, np.asarray(stamps, np.float64)


def _check_complete(stream, container, end_pts, tb, name):
  """A file cut short: its frames end over a second before the length it declares."""
  declared = None
  if stream.duration and tb:
    declared = float(stream.duration * tb)
  elif container.duration:
    declared = container.duration / 1e6
  if declared and float(end_pts * tb) < declared - 1.0:
    raise BadSample("truncated_video", f"{name}: frames end at {float(end_pts * tb):.1f} s, "
                    f"the container declares {declared:.1f} s")


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
