"""Embedded demo data: a small, learnable image / video-text corpus, generated offline and
deterministically from a seed, in the release's JSONL format (what `:tiny` configs train on).

  python -m data_pipelines.demo_data --out=DIR [--train=400] [--val=40] [--seed=0]

Writes DIR/train.jsonl, DIR/val.jsonl and DIR/media/, and the same conversations without
their media, DIR/train_text.jsonl and DIR/val_text.jsonl (`without_media`). Kinds of sample:
  chart   rendered bar charts; Q/A about a bar's value or the tallest bar
  ocr     rendered words on a plain background; Q: what does it say
  photo   real photographs bundled with scikit-image, randomly cropped / flipped; captions
  digit   8x8 digits bundled with scikit-learn, upscaled; Q: which digit
  video   a coloured shape moving on a background, a scene cut at a known second;
          Q/A about the shape, its colour, or when the scene changes
  text    text-only arithmetic and word questions (short: they also fill packed rows)
  colour  one shape on a plain background; Q: what colour is it
  count   one to four shapes of one colour; Q: how many

The training split mixes every kind. The validation split measures what the image adds:
only questions that the text alone cannot answer (`VAL_KINDS`: a colour, a count, a digit,
a photo's subject, the tallest bar's colour, a video's moving shape), each kind's answers
spread evenly over its classes, so a model that ignores the image scores about one over
the number of classes (1/4 to 1/12 by kind).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFont

COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (50, 80, 220),
          "yellow": (235, 200, 30), "purple": (140, 60, 170), "orange": (240, 130, 20)}
WORDS = ("penguin ice snow fish ocean cold swim egg chick colony wind south slide waddle "
         "feather beak flipper krill glacier emperor").split()
PHOTOS = {  # scikit-image's bundled images and what they show
    "astronaut": "an astronaut in a white space suit in front of a flag",
    "camera": "a black and white photo of a man with a camera on a tripod",
    "coffee": "a cup of coffee on a saucer",
    "chelsea": "a tabby cat looking to the side",
    "rocket": "a rocket on its launch pad",
    "coins": "a grey photo of many old coins",
    "moon": "a grey photo of the surface of the moon",
}
SHAPES = ("square", "circle")
KINDS = ("chart", "ocr", "photo", "digit", "video", "text", "colour", "count")
# Validation: kind -> its answer classes (the sample generators take a class index).
VAL_CLASSES = {"colour": len(COLORS), "count": 4, "digit": 10, "photo": len(PHOTOS),
               "chart": len(COLORS), "video": len(COLORS) * len(SHAPES)}
VAL_KINDS = tuple(VAL_CLASSES)
# Kinds the recipe never trains: `launch.demo --finetune` adapts its final model to them.
FINETUNE_KINDS = ("position",)
VAL_CLASSES["position"] = 4


def _font(size):
  return ImageFont.load_default(size=size)


def chart(rs, path, target=None):
  """target: the tallest bar's colour (an index into COLORS): a "which is tallest" question."""
  names = rs.choice(list(COLORS), size=rs.randint(3, 6), replace=False)
  values = rs.randint(1, 10, size=len(names))
  if target is not None:
    want = list(COLORS)[target]
    if want not in names:
      names[rs.randint(len(names))] = want
    values[list(names).index(want)] = values.max() + 1   # the one tallest bar
  W, H = 336, 252
  im = Image.new("RGB", (W, H), (255, 255, 255))
  d = ImageDraw.Draw(im)
  bw = (W - 40) // len(names)
  for i, (n, v) in enumerate(zip(names, values)):
    x0 = 20 + i * bw + 6
    d.rectangle([x0, H - 30 - v * 20, x0 + bw - 12, H - 30], fill=COLORS[n])
    d.text((x0, H - 26), str(v), fill=(0, 0, 0), font=_font(16))
  d.line([15, H - 30, W - 15, H - 30], fill=(0, 0, 0), width=2)
  im.save(path)
  tie = (values == values.max()).sum() > 1               # no one tallest bar: ask a value
  if target is None and (rs.rand() < 0.5 or tie):
    k = rs.randint(len(names))
    return f"What is the value of the {names[k]} bar?", f"The {names[k]} bar is {values[k]}."
  k = int(np.argmax(values))
  return "Which bar is the tallest?", f"The {names[k]} bar."


def ocr(rs, path, target=None):
  text = " ".join(rs.choice(WORDS, size=rs.randint(1, 4)))
  bg = tuple(int(x) for x in rs.randint(200, 256, size=3))
  im = Image.new("RGB", (392, 112), bg)
  ImageDraw.Draw(im).text((14, 36), text, fill=(0, 0, 0), font=_font(int(rs.randint(24, 34))))
  im.save(path)
  return "What does the text in the image say?", text


def photo(rs, path, target=None):
  import skimage.data  # here: only when a corpus is generated
  name = sorted(PHOTOS)[target] if target is not None else rs.choice(sorted(PHOTOS))
  arr = getattr(skimage.data, name)()
  if arr.ndim == 2:
    arr = np.repeat(arr[..., None], 3, axis=-1)
  h, w = arr.shape[:2]
  ch, cw = int(h * rs.uniform(0.7, 1.0)), int(w * rs.uniform(0.7, 1.0))
  y, x = rs.randint(0, h - ch + 1), rs.randint(0, w - cw + 1)
  arr = arr[y:y + ch, x:x + cw]
  if rs.rand() < 0.5:
    arr = arr[:, ::-1]
  Image.fromarray(np.ascontiguousarray(arr)).resize((cw // 2, ch // 2), Image.BICUBIC).save(path)
  return "Describe the image briefly.", PHOTOS[name].capitalize() + "."


_DIGITS = None


def digit(rs, path, target=None):
  global _DIGITS
  if _DIGITS is None:
    from sklearn.datasets import load_digits  # here: 0.9 s to import, only for a corpus
    _DIGITS = load_digits()
  if target is None:
    i = rs.randint(len(_DIGITS.images))
  else:
    i = rs.choice(np.flatnonzero(_DIGITS.target == target))
  img = (_DIGITS.images[i] / 16.0 * 255).astype(np.uint8)
  Image.fromarray(img).resize((112, 112), Image.NEAREST).convert("RGB").save(path)
  return "Which digit is shown?", f"The digit {_DIGITS.target[i]}."


def video(rs, path, target=None, seconds=6, rate=4, size=(112, 140)):
  """target: (colour, shape) as one index: a "what shape moves" question."""
  h, w = size
  shape = rs.choice(SHAPES)
  cname = rs.choice(list(COLORS))
  if target is not None:
    cname, shape = list(COLORS)[target // len(SHAPES)], SHAPES[target % len(SHAPES)]
  cut = int(rs.randint(2, seconds - 1))                      # scene cut at this second
  bgs = [tuple(int(x) for x in rs.randint(0, 120, size=3)), tuple(int(x) for x in rs.randint(150, 256, size=3))]
  with av.open(path, "w") as out:
    st = out.add_stream("mpeg4", rate=rate)
    st.width, st.height, st.pix_fmt = w, h, "yuv420p"
    for i in range(seconds * rate):
      t = i / rate
      im = Image.new("RGB", (w, h), bgs[int(t >= cut)])
      d = ImageDraw.Draw(im)
      x = int(10 + (w - 50) * (i / (seconds * rate)))
      _draw_shape(d, shape, [x, h // 2 - 15, x + 30, h // 2 + 15], COLORS[cname])
      for p in st.encode(av.VideoFrame.from_ndarray(np.asarray(im), format="rgb24")):
        out.mux(p)
    for p in st.encode():
      out.mux(p)
  q = 0 if target is not None else rs.randint(3)
  if q == 0:
    return "<video>\nWhat shape moves across the video?", f"A {cname} {shape}."
  if q == 1:
    return "<video>\nAt what time does the scene change?", f"At {cut} seconds."
  return "<video>\nWhich way does the shape move?", "From left to right."


def _draw_shape(d, shape, box, fill):
  (d.rectangle if shape == "square" else d.ellipse)(box, fill=fill)


def colour(rs, path, target=None):
  names = list(COLORS)
  cname = names[target] if target is not None else rs.choice(names)
  im = Image.new("RGB", (112, 112), tuple(int(x) for x in rs.randint(225, 256, size=3)))
  s = int(rs.randint(30, 70))
  x, y = rs.randint(4, 112 - s - 4, size=2)
  _draw_shape(ImageDraw.Draw(im), rs.choice(SHAPES), [x, y, x + s, y + s], COLORS[cname])
  im.save(path)
  return "What colour is the shape?", f"{cname.capitalize()}."


def count(rs, path, target=None):
  n = target + 1 if target is not None else int(rs.randint(1, 5))
  im = Image.new("RGB", (112, 112), tuple(int(x) for x in rs.randint(225, 256, size=3)))
  d, fill, shape = ImageDraw.Draw(im), COLORS[rs.choice(list(COLORS))], rs.choice(SHAPES)
  cells = rs.permutation(4)[:n]                 # one shape per quadrant: none overlap
  for c in cells:
    s = int(rs.randint(20, 40))
    x = (c % 2) * 56 + rs.randint(2, 56 - s - 2)
    y = (c // 2) * 56 + rs.randint(2, 56 - s - 2)
    _draw_shape(d, shape, [x, y, x + s, y + s], fill)
  im.save(path)
  return "How many shapes are there?", f"{n}."


CORNERS = ("top left", "top right", "bottom left", "bottom right")


def position(rs, path, target=None):
  """One shape in a corner: where is it? (a kind the recipe never trains, `FINETUNE_KINDS`)."""
  corner = target if target is not None else int(rs.randint(4))
  im = Image.new("RGB", (112, 112), tuple(int(x) for x in rs.randint(225, 256, size=3)))
  s = int(rs.randint(24, 40))
  x = (corner % 2) * 56 + rs.randint(2, 56 - s - 2)
  y = (corner // 2) * 56 + rs.randint(2, 56 - s - 2)
  _draw_shape(ImageDraw.Draw(im), rs.choice(SHAPES), [x, y, x + s, y + s],
              COLORS[rs.choice(list(COLORS))])
  im.save(path)
  return "Where is the shape?", f"{CORNERS[corner].capitalize()}."


def text(rs):
  if rs.rand() < 0.5:
    a, b = rs.randint(0, 50, size=2)
    return f"What is {a} plus {b}?", f"{a + b}."
  w = rs.choice(WORDS)
  return f"How many letters are in the word '{w}'?", f"{len(w)}."


def without_media(sample: dict) -> dict:
  """The sample as a text-only LLM sees it: no images or videos, no `<image>` / `<video>`
  tags (the demo's stage-0 LLM trains on this, and the text-only baseline answers it)."""
  conv = [{**t, "value": t["value"].replace("<image>\n", "").replace("<video>\n", "")}
          for t in sample["conversations"]]
  return {k: v for k, v in sample.items() if k not in ("image", "video")} | {
      "conversations": conv}


def generate(out: str, n_train: int = 400, n_val: int = 40, seed: int = 0,
             kinds: tuple = KINDS, val_kinds: tuple = VAL_KINDS) -> dict:
  """The corpus in `out` (see the module docstring); `kinds` / `val_kinds`: the kinds of
  the training / validation samples (the fine-tuning demo's: FINETUNE_KINDS)."""
  os.makedirs(os.path.join(out, "media"), exist_ok=True)
  counts = {}
  for split, n, s in [("train", n_train, seed), ("val", n_val, seed + 1_000_003)]:
    rs = np.random.RandomState(s)
    lines = []
    for i in range(n):
      kinds_here = kinds if split == "train" else val_kinds
      kind = kinds_here[i % len(kinds_here)]
      # validation: the classes of a kind in turn, so that answers are balanced
      target = None if split == "train" else (i // len(kinds_here)) % VAL_CLASSES[kind]
      sid = f"{split}-{i:05d}-{kind}"
      if kind == "text":
        q, a = text(rs)
        lines.append({"id": sid, "conversations": [
            {"from": "human", "value": q}, {"from": "gpt", "value": a}]})
      elif kind == "video":
        rel = f"media/{sid}.mp4"
        q, a = video(rs, os.path.join(out, rel), target)
        lines.append({"id": sid, "video": [rel],
                      "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]})
      else:
        rel = f"media/{sid}.png"
        q, a = globals()[kind](rs, os.path.join(out, rel), target)
        lines.append({"id": sid, "image": [rel], "conversations": [
            {"from": "human", "value": "<image>\n" + q}, {"from": "gpt", "value": a}]})
    with open(os.path.join(out, f"{split}.jsonl"), "w") as f:
      f.writelines(json.dumps(l) + "\n" for l in lines)
    with open(os.path.join(out, f"{split}_text.jsonl"), "w") as f:
      f.writelines(json.dumps(without_media(l)) + "\n" for l in lines)
    counts[split] = len(lines)
  return counts


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m data_pipelines.demo_data", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--out", required=True)
  ap.add_argument("--train", type=int, default=400)
  ap.add_argument("--val", type=int, default=40)
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args(argv)
  counts = generate(args.out, args.train, args.val, args.seed)
  print(json.dumps({"out": args.out, **counts}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
