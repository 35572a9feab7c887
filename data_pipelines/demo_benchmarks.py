"""The demo corpus's validation questions written in each benchmark's released layout
(`data_pipelines/benchmarks.py` reads them as it reads the real files), so that the
miniature reports the paper's kinds of figures and every reader is exercised offline.

  python -m data_pipelines.demo_benchmarks --out=DIR [--n=8] [--seed=0]

Writes DIR/NAME/ for every benchmark of `benchmarks.SPECS`, n questions each:
  docvqa    rendered words (the corpus's `ocr` kind): "what does it say", ANLS
  infovqa   bar charts: which bar is the tallest, ANLS
  chartqa   bar charts: a bar's value (human split) or the tallest (augmented), relaxed
  textvqa   rendered words, ten human answers (the text, a few variants), VQA accuracy
  ocrbench  rendered words in a TSV with base64 images, containment
  ai2d      a coloured shape: its colour among four options
  mmmu      shapes to count, "<image 1>" in the question, dev and validation rows
  mmbench   a handwritten digit among four options, with a hint
  videomme  a shape moving in a video: which shape among four, in a parquet + data/
Answers are balanced over options A-D (the letter is the question's index modulo 4), so a
model that always answers one letter scores 1/4. `training_jsonl` turns such files into
the release's JSONL, to fine-tune on the benchmarks' instruction formats
(`launch.demo --benchmarks`).
"""
from __future__ import annotations

import argparse
import base64
import csv
import json
import os
import sys

import numpy as np

from data_pipelines import benchmarks, demo_data

LETTERS = "ABCD"


def _b64(path: str) -> str:
  with open(path, "rb") as f:
    return base64.b64encode(f.read()).decode("ascii")


def _mc(rs, right: str, pool: list, i: int) -> tuple[dict, str]:
  """Four options, the right one at letter i % 4, the others drawn from `pool`."""
  others = [p for p in pool if p != right]
  wrong = [others[k] for k in rs.permutation(len(others))[:3]]
  letter = LETTERS[i % 4]
  opts = wrong[:i % 4] + [right] + wrong[i % 4:]
  return dict(zip(LETTERS, opts)), letter


def _write_tsv(path: str, rows: list[dict]):
  cols = list(rows[0])
  with open(path, "w", encoding="utf-8", newline="") as f:
    w = csv.DictWriter(f, cols, delimiter="\t")
    w.writeheader()
    w.writerows(rows)


def write(out: str, n: int = 8, seed: int = 0) -> dict:
  """Every benchmark's files under out/NAME (module docstring) -> {name: questions}."""
  rs = np.random.RandomState(seed)
  made = {}

  def folder(*parts):
    d = os.path.join(out, *parts)
    os.makedirs(d, exist_ok=True)
    return d

  # DocVQA: val_v1.0_withQT.json, images under documents/
  docs = folder("docvqa", "documents")
  data = []
  for i in range(n):
    q, a = demo_data.ocr(rs, os.path.join(docs, f"doc{i:04d}_1.png"))
    data.append({"questionId": 1000 + i, "question": q, "question_types": ["others"],
                 "image": f"documents/doc{i:04d}_1.png", "docId": i,
                 "answers": [a, a.upper()], "data_split": "val"})
  with open(os.path.join(out, "docvqa", "val_v1.0_withQT.json"), "w") as f:
    json.dump({"dataset_name": "SP-DocVQA", "dataset_split": "val", "dataset_version": "1.0",
               "data": data}, f)
  made["docvqa"] = n

  # InfoVQA: infographicsVQA_val_v1.0_withQT.json, images in a folder beside it
  imgs = folder("infovqa", "infographicsvqa_images")
  data = []
  for i in range(n):
    target = i % len(demo_data.COLORS)
    q, a = demo_data.chart(rs, os.path.join(imgs, f"{20000 + i}.jpeg"), target)
    data.append({"questionId": 2000 + i, "question": q, "image_local_name": f"{20000 + i}.jpeg",
                 "answers": [a, list(demo_data.COLORS)[target]]})
  with open(os.path.join(out, "infovqa", "infographicsVQA_val_v1.0_withQT.json"), "w") as f:
    json.dump({"dataset_name": "infographicsVQA", "dataset_split": "val", "data": data}, f)
  made["infovqa"] = n

  # ChartQA: test/test_human.json, test/test_augmented.json, test/png/
  png = folder("chartqa", "test", "png")
  for split in ("human", "augmented"):
    items = []
    for i in range((n + 1) // 2 if split == "human" else n // 2):
      name = f"{split}_{i}.png"
      q, a = demo_data.chart(rs, os.path.join(png, name),
                             None if split == "human" else i % len(demo_data.COLORS))
      label = a.split()[-1].rstrip(".") if "value" in q else a.split()[1]
      items.append({"imgname": name, "query": q, "label": label})
    with open(os.path.join(out, "chartqa", "test", f"test_{split}.json"), "w") as f:
      json.dump(items, f)
  made["chartqa"] = n

  # TextVQA: TextVQA_0.5.1_val.json (10 human answers), train_images/IMAGE_ID.jpg
  imgs = folder("textvqa", "train_images")
  data = []
  for i in range(n):
    image_id = f"{i:016x}"
    q, a = demo_data.ocr(rs, os.path.join(imgs, image_id + ".jpg"))
    first = a.split()[0]
    data.append({"question": q.lower(), "image_id": image_id, "image_classes": ["Poster"],
                 "flickr_original_url": "", "flickr_300k_url": "", "image_width": 392,
                 "image_height": 112, "answers": [a] * 7 + [first] * 3,
                 "question_tokens": q.lower().rstrip("?").split(), "question_id": 3000 + i,
                 "set_name": "val"})
  with open(os.path.join(out, "textvqa", "TextVQA_0.5.1_val.json"), "w") as f:
    json.dump({"dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1",
               "data": data}, f)
  made["textvqa"] = n

  # VLMEvalKit TSVs: base64 images, option columns, the answer a letter
  scratch = folder("_scratch")
  rows = []
  for i in range(n):
    p = os.path.join(scratch, f"ocr{i}.png")
    q, a = demo_data.ocr(rs, p)
    rows.append({"index": i, "image": _b64(p), "question": q, "answer": repr([a]),
                 "category": "Regular Text Recognition"})
  folder("ocrbench")
  _write_tsv(os.path.join(out, "ocrbench", "OCRBench.tsv"), rows)
  made["ocrbench"] = n

  names = list(demo_data.COLORS)
  rows = []
  for i in range(n):
    p = os.path.join(scratch, f"ai2d{i}.png")
    q, a = demo_data.colour(rs, p, i % len(names))
    opts, letter = _mc(rs, a.rstrip(".").lower(), names, i)
    rows.append({"index": i, "image": _b64(p), "question": q, **opts, "answer": letter,
                 "category": "colours", "l2-category": "", "split": "test"})
  folder("ai2d")
  _write_tsv(os.path.join(out, "ai2d", "AI2D_TEST.tsv"), rows)
  made["ai2d"] = n

  rows = []
  for i in range(n + 1):            # one dev row first: the reader keeps validation only
    p = os.path.join(scratch, f"mmmu{i}.png")
    q, a = demo_data.count(rs, p, i % 4)
    opts, letter = _mc(rs, a.rstrip("."), ["1", "2", "3", "4"], i)
    rows.append({"index": i, "image": _b64(p), "image_path": f"{i}.png",
                 "question": f"<image 1> {q}", **opts, "answer": letter,
                 "category": "Counting", "l2-category": "", "split": "dev" if i == 0
                 else "validation"})
  folder("mmmu")
  _write_tsv(os.path.join(out, "mmmu", "MMMU_DEV_VAL.tsv"), rows)
  made["mmmu"] = n

  rows = []
  for i in range(n):
    p = os.path.join(scratch, f"mmb{i}.png")
    q, a = demo_data.digit(rs, p, i % 10)
    digit = a.rstrip(".").split()[-1]
    opts, letter = _mc(rs, digit, [str(d) for d in range(10)], i)
    rows.append({"index": i, "question": q, "hint": "The image shows one handwritten digit.",
                 **opts, "answer": letter, "category": "digits", "l2-category": "",
                 "split": "dev", "image": _b64(p)})
  folder("mmbench")
  _write_tsv(os.path.join(out, "mmbench", "MMBench_DEV_EN.tsv"), rows)
  made["mmbench"] = n

  # VideoMME: videomme/test-00000-of-00001.parquet, data/VIDEOID.mp4
  import pyarrow as pa, pyarrow.parquet as pq   # here: only this layout is parquet
  vids = folder("videomme", "data")
  cols = {k: [] for k in ("video_id", "duration", "domain", "sub_category", "url", "videoID",
                          "question_id", "task_type", "question", "options", "answer")}
  pool = [f"{c} {s}" for c in names for s in demo_data.SHAPES]
  for i in range(n):
    vid = f"demo{i:03d}"
    q, a = demo_data.video(rs, os.path.join(vids, vid + ".mp4"), i % len(pool))
    opts, letter = _mc(rs, a[2:].rstrip("."), pool, i)
    for k, v in (("video_id", f"{i:03d}"), ("duration", "short"), ("domain", "Demo"),
                 ("sub_category", "Shapes"), ("url", ""), ("videoID", vid),
                 ("question_id", f"{i:03d}-1"), ("task_type", "Object Recognition"),
                 ("question", q.replace("<video>\n", "")),
                 ("options", [f"{k}. {v}." for k, v in opts.items()]), ("answer", letter)):
      cols[k].append(v)
  pq.write_table(pa.table(cols), os.path.join(folder("videomme", "videomme"),
                                              "test-00000-of-00001.parquet"))
  made["videomme"] = n
  for f in os.listdir(scratch):
    os.remove(os.path.join(scratch, f))
  os.rmdir(scratch)
  return made


def training_jsonl(files: str, raw: str) -> int:
  """Every benchmark's questions under `files` (as `write` lays them out) -> raw/train.jsonl
  in the release's format, each prompt exactly as the benchmark's reader builds it and
  the answer its letter (multiple choice) or its most common reference; base64 images
  written to raw/media, videos referenced where they are -> samples written."""
  os.makedirs(os.path.join(raw, "media"), exist_ok=True)
  lines = []
  for name in benchmarks.SPECS:
    for q in benchmarks.read(name, os.path.join(files, name))[0]:
      rec = benchmarks.record(q)
      sample = {"id": q.id}
      if rec["images"]:
        sample["image"] = []
        for k, data in enumerate(rec["images"]):
          rel = f"media/{q.id}-{k}.png"
          with open(os.path.join(raw, rel), "wb") as f:
            f.write(data)
          sample["image"].append(rel)
      if rec["video"]:
        sample["video"] = [os.path.relpath(rec["video"], raw)]
      answer = q.references[0] if q.options else max(q.references, key=q.references.count)
      sample["conversations"] = [rec["conversations"][0], {"from": "gpt", "value": answer}]
      lines.append(sample)
  with open(os.path.join(raw, "train.jsonl"), "w") as f:
    f.writelines(json.dumps(x) + "\n" for x in lines)
  return len(lines)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m data_pipelines.demo_benchmarks",
                               description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--out", required=True)
  ap.add_argument("--n", type=int, default=8, help="questions per benchmark")
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args(argv)
  print(json.dumps({"out": args.out, **write(args.out, args.n, args.seed)}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
