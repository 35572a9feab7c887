"""A video given as a folder of frames, as the release reads one
(`mm_utils.load_video_from_ids`): the frames and timestamps equal the release's own
(tests/fixtures/release_frames, made by its code), and such a sample goes through a
dataset build and the pipeline like a video file; a bad frame folder is one named skip."""
import json
import os
import shutil

import numpy as np
import pytest

from data_pipelines import build, pipeline, records, sample as sample_lib, tfds_penguin, video
from data_pipelines.errors import BadSample

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "release_frames")
FRAMES = os.path.join(FIXTURE, "frames")


@pytest.mark.parametrize("fps,max_frames", [(1.0, 180), (1.0, 8), (2.0, 180)])
def test_a_frame_folder_gives_the_releases_frames_and_timestamps(fps, max_frames):
  ref = np.load(os.path.join(FIXTURE, "reference.npz"))
  key = f"fps{fps:g}_max{max_frames}"
  files = records.media_bytes("frames", FIXTURE, folder_ok=True)
  assert isinstance(files, list) and len(files) == 40
  frames, stamps = video.load_video(files, fps, max_frames)
  np.testing.assert_array_equal(frames, ref[f"{key}_frames"])
  np.testing.assert_array_equal(stamps, ref[f"{key}_timestamps"])
  # negative control: the frames in numeric order (frame_1, frame_2, ...) are not the
  # release's, which takes the file names sorted as strings (frame_1, frame_10, ...)
  numeric = [open(os.path.join(FRAMES, f"frame_{i}.png"), "rb").read() for i in range(1, 41)]
  other, _ = video.load_video(numeric, fps, max_frames)
  assert not np.array_equal(other, ref[f"{key}_frames"])


def test_a_bad_frame_folder_is_a_named_bad_sample(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(BadSample) as e:
    records.media_bytes("empty", str(tmp_path), folder_ok=True)
  assert e.value.reason == "corrupt_video"
  bad = tmp_path / "bad"
  shutil.copytree(FRAMES, bad)
  (bad / "frame_13.png").write_bytes(b"not a png")      # sorted index 4: sampled at 1 fps
  with pytest.raises(BadSample) as e:
    video.load_video(records.media_bytes("bad", str(tmp_path), folder_ok=True), 1.0, 180)
  assert e.value.reason == "corrupt_video" and "frame 4 of 40" in e.value.detail
  # an image entry that is a folder stays a missing file
  with pytest.raises(BadSample) as e:
    records.media_bytes("empty", str(tmp_path))
  assert e.value.reason == "missing_file"


def test_a_frame_folder_sample_is_built_stored_and_packed(tmp_path):
  """Built with data_pipelines.build: the example holds the folder's files in name order;
  the pipeline's batch holds its 13 frames (1 fps), the same patches as the frames loaded
  directly; an empty folder is skipped with its reason counted."""
  data = tmp_path / "data"
  shutil.copytree(FRAMES, data / "clip")
  (data / "empty").mkdir()
  conv = [{"from": "human", "value": "<video>\nWhat changes?"}, {"from": "gpt", "value": "The colour."}]
  lines = [{"id": "folder", "video": "clip", "conversations": conv},
           {"id": "no_frames", "video": ["empty"], "conversations": conv}]
  (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(l) for l in lines))
  assert build.main([f"--annotations={tmp_path / 'train.jsonl'}", f"--data-folder={data}",
                     f"--out={tmp_path / 'tfds'}", "--name=frames", "--seq-len=2048"]) == 0
  meta = json.load(open(tmp_path / "tfds" / "penguin_vl" / "frames" / "1.1.0" / "metadata.json"))
  assert meta["train"]["written"] == 1 and meta["train"]["reasons"] == {"corrupt_video": 1}
  split = tfds_penguin.Split("penguin_vl/frames", "train", str(tmp_path / "tfds"))
  rec = split[0]
  names = sorted(os.listdir(FRAMES))
  assert rec["video"] == [open(os.path.join(FRAMES, n), "rb").read() for n in names]
  scfg = sample_lib.SampleConfig(seq_len=2048)
  pcfg = pipeline.PipelineConfig(max_patches=4096, max_visual_tokens=2048, packing_bins=1)
  from data_pipelines.tokenizer import from_spec
  batch = next(iter(pipeline.make_dataset(split, from_spec(""), scfg, pcfg, batch_size=1,
                                          one_pass=True)))
  frames, _ = video.load_video(rec["video"], scfg.fps, scfg.max_frames)
  want, _, _ = video.process_video(frames, merge_size=scfg.video_merge_size,
                                   min_tokens=scfg.min_tokens, max_tokens=scfg.max_tokens,
                                   use_tra=scfg.use_tra, mean=scfg.image_mean, std=scfg.image_std)
  assert len(frames) == 13 and int(batch["patch_segment_ids"].max()) == 13
  np.testing.assert_array_equal(batch["patches"][0][:len(want)], want)
