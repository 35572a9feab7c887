"""The parallel dataset build: one process, then Apache Beam with 1 and 2 worker processes.

  python benchmarks/beam_build/beam_build.py [--photos=300] [--videos=20] [--workers=1,2]

Writes a corpus: `--photos` samples of scikit-image's photographs at their own sizes (up
to 1000 x 1000, JPEG), `--videos` 6 s clips (the demo corpus's), 10 bad samples (missing,
corrupt, truncated media, bad JSON), then builds it as `penguin_vl` with
`data_pipelines.build` in one process and with `--workers=N` (Beam's DirectRunner,
multi-processing). Prints each build's wall time, samples per second per worker, the
projected core-days for the paper's stage 1a (223M samples), and whether the Beam builds'
example files are byte for byte the same as each other and hold the same records as the
one-process build.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
STAGE_1A = 223e6                  # samples in the paper's stage 1a (docs/design.md §6)


def corpus(folder: str, photos: int, videos: int) -> int:
  """-> the number of samples written to folder/train.jsonl."""
  import skimage.data  # here: only when this corpus is generated
  from data_pipelines import demo_data
  os.makedirs(folder, exist_ok=True)
  names = sorted(demo_data.PHOTOS)
  for n in names:
    arr = getattr(skimage.data, n)()
    arr = np.repeat(arr[..., None], 3, -1) if arr.ndim == 2 else arr[..., :3]
    Image.fromarray(arr).save(os.path.join(folder, f"{n}.jpg"), quality=90)
  conv = lambda q, a: [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
  lines = [{"id": f"photo{i}", "image": [f"{names[i % len(names)]}.jpg"],
            "conversations": conv("<image>\nDescribe the image briefly.", demo_data.PHOTOS[names[i % len(names)]])}
           for i in range(photos)]
  rs = np.random.RandomState(0)
  for i in range(videos):
    q, a = demo_data.video(rs, os.path.join(folder, f"v{i}.mp4"))
    lines.append({"id": f"video{i}", "video": [f"v{i}.mp4"], "conversations": conv(q, a)})
  with open(os.path.join(folder, "broken.jpg"), "wb") as f:
    f.write(b"\xff\xd8\xff\xe0 not a jpeg")
  with open(os.path.join(folder, "v0.mp4"), "rb") as f:
    head = f.read(2000)
  with open(os.path.join(folder, "cut.mp4"), "wb") as f:
    f.write(head)
  bad = [{"id": f"missing{i}", "image": ["nope.jpg"], "conversations": conv("<image>\nWhat?", "X.")}
         for i in range(4)]
  bad += [{"id": f"corrupt{i}", "image": ["broken.jpg"], "conversations": conv("<image>\nWhat?", "X.")}
          for i in range(3)]
  bad += [{"id": "cut", "video": ["cut.mp4"], "conversations": conv("<video>\nWhat?", "X.")}]
  text = [json.dumps(l) for l in lines + bad] + ["{not json", '{"id": "no conversation"}']
  order = np.random.RandomState(1).permutation(len(text))
  with open(os.path.join(folder, "train.jsonl"), "w") as f:
    f.write("\n".join(text[i] for i in order) + "\n")
  return len(text)


def build(folder: str, out: str, name: str, workers: int) -> tuple[float, dict]:
  t = time.perf_counter()
  r = subprocess.run([sys.executable, "-m", "data_pipelines.build",
                      f"--annotations={folder}/train.jsonl", f"--data-folder={folder}",
                      f"--out={out}", f"--name={name}", f"--workers={workers}"],
                     cwd=ROOT, capture_output=True, text=True)
  if r.returncode:
    sys.exit(r.stderr[-3000:])
  return time.perf_counter() - t, json.loads(r.stdout.strip().splitlines()[-1])


def files_digest(out: str) -> str:
  h = hashlib.sha256()
  for root, _, fs in sorted(os.walk(out)):
    for f in sorted(fs):
      if "array_record" in f:
        h.update(f.encode())
        h.update(open(os.path.join(root, f), "rb").read())
  return h.hexdigest()[:16]


def records(out: str, name: str) -> list:
  from data_pipelines import tfds_penguin
  src = tfds_penguin.Split(f"penguin_vl/{name}", "train", out)
  return [src[i] for i in range(len(src))]


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--photos", type=int, default=300)
  ap.add_argument("--videos", type=int, default=20)
  ap.add_argument("--workers", default="1,2")
  args = ap.parse_args()
  tmp = tempfile.mkdtemp(prefix="beam_build_")
  n = corpus(os.path.join(tmp, "data"), args.photos, args.videos)
  print(f"corpus: {n} samples ({args.photos} photos, {args.videos} videos, 10 bad) in {tmp}")
  runs = [("plain", 0)] + [(f"w{w}", int(w)) for w in args.workers.split(",")]
  seen = {}
  for name, workers in runs:
    out = os.path.join(tmp, name)
    dt, meta = build(os.path.join(tmp, "data"), out, name, workers)
    per_worker = meta["train"]["written"] / dt / max(workers, 1)
    days = STAGE_1A / per_worker / 86400
    print(f"{name}: workers={workers} wall_s={dt:.1f} written={meta['train']['written']} "
          f"skipped={meta['train']['skipped']} samples_per_s_per_worker={per_worker:.1f} "
          f"stage1a_core_days={days:.1f} files={files_digest(out)}")
    seen[name] = (meta["train"], records(out, name))
  first = seen["plain"]
  for name, got in seen.items():
    print(f"{name}: same metadata as plain: {got[0] == first[0]}; same records in the same "
          f"order: {got[1] == first[1]}")


if __name__ == "__main__":
  main()
