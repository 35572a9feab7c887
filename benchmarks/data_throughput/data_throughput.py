"""Data pipeline throughput and packing fill, on the demo corpus or a corpus shaped like
the paper's data.

  python benchmarks/data_throughput/data_throughput.py [--corpus=demo|paper] [--batches=64]
      [--workers=0] [--packing=best_fit] [--max_patches=0] [--max_visual_tokens=0]

`demo`: the demo corpus (data_pipelines.demo_data), samples of at most 1,024 tokens, rows of
2,048 tokens. `paper`: many photographs at their own sizes (scikit-image's, up to
1000 x 1000), some large documents (rendered A4 pages, 1240 x 1754) and some long videos
(60 s), at the real stages' sample settings (`sample.STAGES`: rows of 16,384 tokens, up to
10,240 tokens per image). Each is built as the TFDS dataset penguin_vl in a temporary
folder (read with tfds.data_source), then the Grain pipeline packs it.

A row's patch and visual-token slots (`--max_patches`, `--max_visual_tokens`; 0 = from the
corpus) follow the corpus: the dataset's metadata has its tokens and patches, and a row of
S tokens is given S x patches / tokens / 0.97 patch slots (rounded up to 64), so that
when the token slots are full the patch slots are about 97% full too, and at least the
largest sample's patches (else that sample is skipped as too long); visual tokens alike,
counted on the first 200 samples. Prints one line per figure: the corpus's
patches_per_token and visual_per_token, the row shape, token_fill=, patch_fill=,
visual_fill= (the share of slots holding real data) and batches_per_s=.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import math
import os
import tempfile
import time

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from data_pipelines import demo_data, pipeline as P, sample as sample_lib, tfds_penguin
from data_pipelines.tokenizer import Qwen3Tokenizer

# tiny-stage sizes: samples of at most 1,024 tokens (the build's filter), rows of 2,048
DEMO = sample_lib.SampleConfig(min_tokens=4, max_tokens=128, seq_len=1024)
DEMO_ROW = 2048
PAPER = sample_lib.STAGES                      # rows of 16,384 tokens, 10,240 per image
SLACK = 0.97                                   # patch slots per row: full when tokens are at 97%


def paper_corpus(folder: str, n: int, seed: int = 0) -> None:
  """n samples: 70% photographs, 15% documents, 15% videos of 60 s."""
  import skimage.data  # here: only when this corpus is generated
  os.makedirs(folder, exist_ok=True)
  rs = np.random.RandomState(seed)
  names = sorted(demo_data.PHOTOS)
  for name in names:
    arr = getattr(skimage.data, name)()
    arr = np.repeat(arr[..., None], 3, -1) if arr.ndim == 2 else arr[..., :3]
    Image.fromarray(arr).save(os.path.join(folder, f"{name}.jpg"), quality=90)
  font = ImageFont.load_default(size=22)
  conv = lambda q, a: [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
  lines = []
  for i in range(n):
    kind = rs.choice(["photo", "document", "video"], p=[0.7, 0.15, 0.15])
    if kind == "photo":
      name = names[rs.randint(len(names))]
      lines.append({"id": f"p{i}", "image": [f"{name}.jpg"], "conversations": conv(
          "<image>\nDescribe the image in detail.", demo_data.PHOTOS[name].capitalize() + ".")})
    elif kind == "document":
      page = Image.new("RGB", (1240, 1754), (255, 255, 255))
      d = ImageDraw.Draw(page)
      words = rs.choice(demo_data.WORDS, size=(60, 9))
      for row, ws in enumerate(words):
        d.text((80, 80 + 26 * row), " ".join(ws), fill=(0, 0, 0), font=font)
      page.save(os.path.join(folder, f"doc{i}.png"))
      lines.append({"id": f"d{i}", "image": [f"doc{i}.png"], "conversations": conv(
          "<image>\nTranscribe the first line.", " ".join(words[0]))})
    else:
      q, a = demo_data.video(rs, os.path.join(folder, f"v{i}.mp4"), seconds=60, rate=2,
                             size=(336, 448))
      lines.append({"id": f"v{i}", "video": [f"v{i}.mp4"], "conversations": conv(q, a)})
  with open(os.path.join(folder, "train.jsonl"), "w") as f:
    f.write("\n".join(json.dumps(l) for l in lines) + "\n")


def visual_per_token(source, tok, scfg, n: int = 200) -> tuple[float, int, int]:
  """Over the first n samples: visual tokens per token, and the most patches and visual
  tokens of one sample (a row must hold the largest, or it is skipped as too long)."""
  vis = toks = most_p = most_v = 0
  for i in range(min(n, len(source))):
    f = sample_lib.features(source[i], tok, scfg)
    vis, toks = vis + len(f["visual_positions"]), toks + len(f["input_ids"])
    most_p, most_v = max(most_p, len(f["patches"])), max(most_v, len(f["visual_positions"]))
  return vis / toks, most_p, most_v


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--corpus", default="demo", choices=["demo", "paper"])
  ap.add_argument("--batches", type=int, default=64, help="at least a few packing rounds")
  ap.add_argument("--workers", type=int, default=0)
  ap.add_argument("--packing", default="best_fit", choices=["first_fit", "best_fit"])
  ap.add_argument("--max_patches", type=int, default=0, help="0: from the corpus")
  ap.add_argument("--max_visual_tokens", type=int, default=0, help="0: from the corpus")
  ap.add_argument("--batch_size", type=int, default=0, help="0: 4 (demo), 1 (paper)")
  ap.add_argument("--bins", type=int, default=64)
  ap.add_argument("--samples", type=int, default=0, help="0: 200 (demo), 120 (paper)")
  args = ap.parse_args()
  demo = args.corpus == "demo"
  scfg = DEMO if demo else PAPER
  n = args.samples or (200 if demo else 120)
  batch_size = args.batch_size or (4 if demo else 1)
  tmp = tempfile.mkdtemp(prefix=f"penguin_{args.corpus}_")
  t0 = time.time()
  if demo:
    demo_data.generate(tmp, n, 0, seed=0)
  else:
    paper_corpus(tmp, n)
  tok = Qwen3Tokenizer.from_vocab_file()
  config = tfds_penguin.PenguinConfig(name="bench", sample=scfg, splits={"train": "train.jsonl"})
  builder = tfds_penguin.prepare(tmp, os.path.join(tmp, "tfds"), config)
  meta = builder.info.metadata["train"]
  source = tfds_penguin.Split("penguin_vl/bench", "train", os.path.join(tmp, "tfds"))
  print(f"# {args.corpus} corpus: {meta['written']} samples built in {time.time() - t0:.1f}s ({tmp})")
  ppt = meta["patches"] / meta["tokens"]
  vpt, most_p, most_v = visual_per_token(source, tok, scfg)
  S = DEMO_ROW if demo else scfg.seq_len
  scfg = dataclasses.replace(scfg, seq_len=S)
  patches = args.max_patches or 64 * math.ceil(max(S * ppt / SLACK, most_p) / 64)
  visual = args.max_visual_tokens or 64 * math.ceil(max(S * vpt / SLACK, most_v) / 64)
  skipped = collections.Counter()
  print(f"patches_per_token={ppt:.3f} visual_per_token={vpt:.3f}")
  print(f"row: {S} tokens, {patches} patches, {visual} visual tokens; batch {batch_size}; "
        f"{args.packing} over {args.bins} bins")
  cfg = P.PipelineConfig(max_patches=patches, max_visual_tokens=visual, packing=args.packing,
                         packing_bins=args.bins, workers=args.workers)
  it = iter(P.make_dataset(source, tok, scfg, cfg, batch_size=batch_size, skipped=skipped))
  # Timed from the first batch: a packer emits its bins a round at a time, so any window
  # shorter than several rounds (bins / batch_size batches each) would be misleading.
  fills = {"token": [], "patch": [], "visual": []}
  t0 = time.perf_counter()
  for _ in range(args.batches):
    b = next(it)
    fills["token"].append(np.mean(b["segment_ids"] > 0))
    fills["patch"].append(np.mean(b["patch_segment_ids"] > 0))
    fills["visual"].append(np.mean(b["visual_positions"] < S))
  dt = time.perf_counter() - t0
  for k, v in fills.items():
    print(f"{k}_fill={np.mean(v):.3f}")
  print(f"batches_per_s={args.batches / dt:.2f}")
  print(f"skipped={dict(skipped)}")


if __name__ == "__main__":
  main()
