"""The paper's benchmarks read from their released files, each question prompted the way
lmms-eval prompts Penguin-VL (its tasks' `default` prompt settings: no Penguin-specific
override exists; docs/evaluation.md cites each).

`read(name, DIR, limit)` finds a benchmark's files under DIR (the folder a user unpacked
the download into) and returns its first `limit` questions as `Question`s; `record(q)`
turns one into the training pipeline's record (media as bytes, the video as its path), so
that it is prompted with the chat format, image resizing and TRA of training.

  name      files under DIR, as released                                  metric
  docvqa    val_v1.0_withQT.json (or val_v1.0.json), its "image" paths    anls
            (documents/...) under DIR or one folder of DIR
  infovqa   infographicsVQA_val_v1.0_withQT.json, "image_local_name"      anls
            files under DIR or one folder of DIR
  chartqa   test_human.json and test_augmented.json (DIR or DIR/test),    relaxed_accuracy
            png/IMGNAME beside them                                       (by split)
  textvqa   TextVQA_0.5.1_val.json, train_images/IMAGE_ID.jpg             vqa_accuracy
  ocrbench  OCRBench.tsv (VLMEvalKit's TSV: base64 images)                ocrbench
  ai2d      AI2D_TEST.tsv                                                 multiple_choice
  mmmu      MMMU_DEV_VAL.tsv (its "validation" rows)                      multiple_choice
  mmbench   MMBench_DEV_EN.tsv                                            multiple_choice
  videomme  test-00000-of-00001.parquet (DIR or DIR/videomme), videos     multiple_choice
            data/VIDEOID.mp4 (or video/; .MP4, .mkv)

A missing file or folder is one error naming what was looked for (`FileNotFoundError`);
a question whose fields are unusable is a `BadSample` naming it, returned beside the
questions (the caller counts and skips it); a missing image is found when `record` reads
it. Benchmarks hold thousands of questions, not millions: a file is read whole, except a
TSV, read row by row up to `limit` (its images stay base64 text until `record`).
"""
from __future__ import annotations

import ast
import base64
import binascii
import csv
import dataclasses
import json
import os
import re
import sys
from typing import Callable, Optional

from data_pipelines.errors import BadSample

# lmms-eval's post-prompts (its tasks' `lmms_eval_specific_kwargs: default`).
SHORT = "\nAnswer the question using a single word or phrase."
ONE_WORD = "\nAnswer the question with a single word."
LETTER = "\nAnswer with the option's letter from the given choices directly."
VIDEOMME_INTRO = ("Select the best answer to the following multiple-choice question based on "
                  "the video and the subtitles. Respond with only the letter (A, B, C, or D) "
                  "of the correct option.")


@dataclasses.dataclass(frozen=True)
class Question:
  """One benchmark question, ready to prompt. `prompt`: the user turn's text, with
  `<image>` tags where its images go (else they come first, as lmms-eval's Penguin-VL
  model places them); `references`: the accepted answers (multiple choice: the letter);
  `group`: the sub-score it counts in ("" when the benchmark has none); `metric`: the
  scorer (`penguin_jax/scoring.py`'s names; one benchmark can mix them)."""
  id: str
  prompt: str
  references: tuple
  metric: str
  images: tuple = ()           # paths, relative to `folder` or absolute
  images_b64: tuple = ()       # base64 text (VLMEvalKit's TSVs)
  video: Optional[str] = None  # a path
  folder: str = ""
  options: Optional[dict] = None   # letter -> option text
  group: str = ""


@dataclasses.dataclass(frozen=True)
class Spec:
  """A benchmark: its reader (DIR -> rows of Questions or BadSamples), its metric, the cap
  on answer tokens and its files (help). The cap is lmms-eval's task setting where it
  gives one of at most 128 (mmbench: 1024 there, 32 here; textvqa: none there, 32 here);
  greedy decoding stops at the end-of-turn token well before it on a short answer."""
  name: str
  metric: str
  max_new_tokens: int
  files: str
  reader: Callable


def record(q: Question) -> dict:
  """A question -> the record `sample.features` prompts (media read now). Raises
  BadSample (a missing or undecodable image) naming the question."""
  n_img = len(q.images) + len(q.images_b64)
  text = q.prompt
  if n_img and text.count("<image>") != n_img:
    text = text.replace("<image>", "").strip()
    text = "<image>\n" * n_img + text
  if q.video is not None:
    text = "<video>\n" + text
  images = []
  for p in q.images:
    full = p if os.path.isabs(p) else os.path.join(q.folder, p)
    if not os.path.isfile(full):
      raise BadSample("missing_file", full, q.id)
    with open(full, "rb") as f:
      images.append(f.read())
  for s in q.images_b64:
    try:
      images.append(base64.b64decode(s, validate=True))
    except (binascii.Error, ValueError):
      raise BadSample("corrupt_image", "its base64 image does not decode", q.id) from None
  if q.video is not None and not os.path.isfile(q.video):
    raise BadSample("missing_file", q.video, q.id)
  return {"id": q.id, "conversations": [{"from": "human", "value": text}], "images": images,
          "video": q.video}


def read(name: str, data_dir: str, limit: Optional[int] = None):
  """-> ([Question], [BadSample]) of benchmark `name` under `data_dir`: its first `limit`
  usable questions (all: None), in the file's order, and the questions that cannot be used."""
  if name not in SPECS:
    raise ValueError(f"unknown benchmark {name!r}: one of {', '.join(SPECS)}")
  if not os.path.isdir(data_dir):
    raise FileNotFoundError(f"{name}: {data_dir} is not a folder (it should hold "
                            f"{SPECS[name].files})")
  questions, bad = [], []
  for q in SPECS[name].reader(data_dir):
    if isinstance(q, BadSample):
      bad.append(q)
      continue
    questions.append(q)
    if limit is not None and len(questions) >= limit:
      break
  if not questions:
    raise ValueError(f"{name}: no usable question under {data_dir} ({len(bad)} unusable)")
  return questions, bad


# --------------------------------------------------------------------------- finding files
def _find(data_dir: str, what: str, *names: str) -> str:
  """The first of `names` (relative paths) under data_dir, else a FileNotFoundError."""
  for n in names:
    if os.path.isfile(os.path.join(data_dir, n)):
      return os.path.join(data_dir, n)
  raise FileNotFoundError(f"{what}: none of {', '.join(names)} under {data_dir}")


def _image_root(where: list, rel: str) -> str:
  """The folder under which path `rel` (an image, or a folder of them) exists: one of
  `where`, or one of their sub-folders (a user may keep a benchmark's images beside or
  below its annotations)."""
  for d in where:
    subs = [d] + sorted(os.path.join(d, s) for s in os.listdir(d)
                        if os.path.isdir(os.path.join(d, s)))
    for s in subs:
      if os.path.exists(os.path.join(s, rel)):
        return s
  return where[0]          # a missing image is named when its question is read


def _load_json(path: str):
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: not JSON ({e})") from None


def _items(path: str, key: Optional[str] = "data") -> list:
  d = _load_json(path)
  items = d.get(key) if key and isinstance(d, dict) else d
  if not isinstance(items, list):
    raise ValueError(f"{path}: expected " + (f'a "{key}" list' if key else "a list"))
  return items


def _field(item, name: str, kind, qid) -> object:
  if not isinstance(item, dict) or not isinstance(item.get(name), kind):
    raise BadSample("malformed_sample", f"no {name!r} of type {kind.__name__}", qid)
  return item[name]


def _answers(item, name: str, qid) -> tuple:
  refs = item.get(name) if isinstance(item, dict) else None
  if isinstance(refs, str):
    refs = [refs]
  if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
    raise BadSample("malformed_sample", f"{name!r} must be a non-empty list of strings", qid)
  return tuple(refs)


def _rows(items, make):
  """Apply `make(i, item)` -> Question to each item; its BadSample is yielded instead."""
  for i, item in enumerate(items):
    try:
      yield make(i, item)
    except BadSample as e:
      yield e


# --------------------------------------------------------------------------- document VQA
def _doc_vqa(json_names: tuple, image_key: str, name: str):
  def reader(data_dir):
    path = _find(data_dir, name, *json_names)
    items = _items(path)
    folder = os.path.dirname(path)
    first = next((it.get(image_key) for it in items
                  if isinstance(it, dict) and isinstance(it.get(image_key), str)), None)
    root = _image_root([folder, data_dir], first) if first else folder

    def make(i, it):
      qid = f"{name}-{it.get('questionId', i) if isinstance(it, dict) else i}"
      q = _field(it, "question", str, qid)
      return Question(qid, "<image>\n" + q + SHORT, _answers(it, "answers", qid), "anls",
                      images=(_field(it, image_key, str, qid),), folder=root)
    return _rows(items, make)
  return reader


# --------------------------------------------------------------------------- ChartQA
def _chartqa(data_dir):
  splits = []
  for split in ("human", "augmented"):
    path = _find(data_dir, "chartqa", f"test_{split}.json", f"test/test_{split}.json")
    splits.append((split, path))
  for split, path in splits:
    folder = os.path.join(os.path.dirname(path), "png")

    def make(i, it, split=split, folder=folder):
      qid = f"chartqa-{split}-{i}"
      q = _field(it, "query", str, qid)
      label = it.get("label")
      if isinstance(label, (int, float)) and not isinstance(label, bool):
        label = f"{label:g}"
      if not isinstance(label, str):
        raise BadSample("malformed_sample", "no 'label'", qid)
      return Question(qid, "<image>\n" + q + ONE_WORD, (label,), "relaxed_accuracy",
                      images=(_field(it, "imgname", str, qid),), folder=folder, group=split)
    yield from _rows(_items(path, key=None), make)


# --------------------------------------------------------------------------- TextVQA
def _textvqa(data_dir):
  path = _find(data_dir, "textvqa", "TextVQA_0.5.1_val.json")
  items = _items(path)
  root = _image_root([os.path.dirname(path), data_dir], "train_images")

  def make(i, it):
    qid = f"textvqa-{it.get('question_id', i) if isinstance(it, dict) else i}"
    q = _field(it, "question", str, qid)
    image_id = _field(it, "image_id", str, qid)
    refs = _answers(it, "answers", qid)
    if len(refs) < 2:
      raise BadSample("malformed_sample", "VQA accuracy needs the human answers (10)", qid)
    # lmms-eval's textvqa: the question capitalised (str.capitalize), no OCR tokens
    return Question(qid, "<image>\n" + q.capitalize() + SHORT, refs, "vqa_accuracy",
                    images=(f"train_images/{image_id}.jpg",), folder=root)
  return _rows(items, make)


# --------------------------------------------------------------------------- VLMEvalKit TSVs
def _tsv_rows(path: str):
  """VLMEvalKit's TSV (pandas' to_csv with tabs): {column: text} per row, read lazily.
  A row whose `image` is short (64 characters or fewer) names the row whose image it
  shares (VLMEvalKit's convention): resolved here from the rows read so far."""
  csv.field_size_limit(sys.maxsize)
  images = {}
  with open(path, encoding="utf-8", newline="") as f:
    for row in csv.DictReader(f, delimiter="\t"):
      img = row.get("image") or ""
      if len(img) > 64:
        images[row.get("index")] = img
      elif img:
        row["image"] = images.get(img, "")
      yield row


def _image_list(row) -> tuple:
  """A TSV row's base64 image(s): one string, or a Python list of them written as text."""
  img = row.get("image") or ""
  if img.startswith("["):
    try:
      return tuple(ast.literal_eval(img))
    except (ValueError, SyntaxError):
      return ()
  return (img,) if img else ()


def _options(row) -> dict:
  """VLMEvalKit's option columns A, B, C, ... (empty and "nan" cells are no option)."""
  out = {}
  for letter in "ABCDEFGHIJ":
    v = row.get(letter)
    if v is None or v.strip() in ("", "nan"):
      continue
    out[letter] = v
  return out


def _tsv(file_name: str, name: str, build, split: Optional[str] = None):
  def reader(data_dir):
    path = _find(data_dir, name, file_name)
    for i, row in enumerate(_tsv_rows(path)):
      qid = f"{name}-{row.get('index', i)}"
      if split is not None and row.get("split", split) != split:
        continue
      try:
        imgs = _image_list(row)
        if not imgs:
          raise BadSample("malformed_sample", "no image in its 'image' column", qid)
        if not (row.get("question") or "").strip():
          raise BadSample("malformed_sample", "no question", qid)
        yield build(qid, row, imgs)
      except BadSample as e:
        yield e
  return reader


def _letter_answer(row, options, qid) -> str:
  a = (row.get("answer") or "").strip()
  if a not in options:
    raise BadSample("malformed_sample", f"the answer {a!r} is not one of its options "
                    f"{list(options)}", qid)
  return a


def _choices(options: dict) -> str:
  return "\n".join(f"{k}. {v}" for k, v in options.items())


def _ai2d(qid, row, imgs):
  opts = _options(row)
  if len(opts) < 2:
    raise BadSample("malformed_sample", "fewer than 2 options", qid)
  # lmms-eval ai2d (mcq): "{question}\n{A. ..\nB. ..}{post_prompt}"
  prompt = f"{row['question']}\n{_choices(opts)}{LETTER}"
  return Question(qid, prompt, (_letter_answer(row, opts, qid),), "multiple_choice",
                  images_b64=imgs, options=opts)


_IMAGE_N = re.compile(r"<image \d+>")


def _mmmu(qid, row, imgs):
  opts = _options(row)
  q = row["question"]
  if len(opts) >= 2:         # lmms-eval mmmu: "{question}\n{options}\n\n{mc prompt}"
    prompt = f"{q}\n{_choices(opts)}\n\n{LETTER.strip()}"
    refs, metric = (_letter_answer(row, opts, qid),), "multiple_choice"
  else:                      # an open question (no options)
    prompt, opts = f"{q}\n\n{SHORT.strip()}", None
    refs, metric = ((row.get("answer") or "").strip(),), "mmmu_open"
    if not refs[0]:
      raise BadSample("malformed_sample", "no answer", qid)
  # <image k> placeholders: each becomes the k-th image where each image is named once (as
  # lmms-eval's Penguin-VL model interleaves them); otherwise the images come first
  tags = _IMAGE_N.findall(prompt)
  if len(tags) == len(imgs) == len(set(tags)):
    order = [int(t[7:-1]) - 1 for t in tags]
    if sorted(order) == list(range(len(imgs))):
      imgs = tuple(imgs[k] for k in order)
      prompt = _IMAGE_N.sub("<image>", prompt)
  else:
    prompt = _IMAGE_N.sub("", prompt)
  return Question(qid, prompt, refs, metric, images_b64=imgs, options=opts,
                  group=row.get("category", ""))


def _mmbench(qid, row, imgs):
  opts = _options(row)
  if len(opts) < 2:
    raise BadSample("malformed_sample", "fewer than 2 options", qid)
  # lmms-eval mmbench_en: "{hint} {question} There are several options:\nA. ..\n{post}"
  options = "There are several options:\n" + _choices(opts)
  hint = (row.get("hint") or "").strip()
  query = f"{hint} {row['question']} {options}" if hint and hint != "nan" else \
      f"{row['question']} {options}"
  return Question(qid, f"{query}\n{LETTER}", (_letter_answer(row, opts, qid),),
                  "multiple_choice", images_b64=imgs, options=opts,
                  group=row.get("category", ""))


def _ocrbench(qid, row, imgs):
  ans = (row.get("answer") or "").strip()
  try:                        # a Python list written as text (VLMEvalKit), or one answer
    refs = ast.literal_eval(ans) if ans.startswith("[") else [ans]
  except (ValueError, SyntaxError):
    refs = [ans]
  refs = tuple(str(r) for r in refs if str(r).strip())
  if not refs:
    raise BadSample("malformed_sample", "no answer", qid)
  category = row.get("category", "")
  formula = category == "Handwritten Mathematical Expression Recognition"
  return Question(qid, row["question"].strip(), refs,
                  "ocrbench_formula" if formula else "ocrbench", images_b64=imgs,
                  group=category)


# --------------------------------------------------------------------------- VideoMME
_OPTION = re.compile(r"^\s*([A-Z])[.)]\s*(.*)$", re.S)


def _videomme(data_dir):
  import pyarrow.parquet as pq   # here: only this benchmark reads parquet
  name = "test-00000-of-00001.parquet"
  path = _find(data_dir, "videomme", name, f"videomme/{name}")
  rows = pq.read_table(path).to_pylist()
  folder = os.path.dirname(path)
  bases = [os.path.join(d, sub) for d in (folder, data_dir) for sub in ("data", "video")]

  def video_of(vid):
    for b in bases:
      for ext in (".mp4", ".MP4", ".mkv"):
        if os.path.isfile(os.path.join(b, vid + ext)):
          return os.path.join(b, vid + ext)
    return os.path.join(bases[0], vid + ".mp4")   # named as missing when read

  def make(i, row):
    qid = f"videomme-{row.get('question_id', i) if isinstance(row, dict) else i}"
    q = _field(row, "question", str, qid)
    raw = row.get("options")
    if not isinstance(raw, list) or len(raw) < 2:
      raise BadSample("malformed_sample", "'options' must be a list", qid)
    opts = {}
    for o in raw:
      m = _OPTION.match(str(o))
      if not m:
        raise BadSample("malformed_sample", f"option {o!r} does not start with a letter", qid)
      opts[m.group(1)] = m.group(2)
    # lmms-eval videomme: intro, question, the options as given ("A. ..."), post-prompt
    prompt = VIDEOMME_INTRO + "\n" + q + "\n" + "\n".join(map(str, raw)) + "\n" + LETTER
    ans = str(row.get("answer", "")).strip()
    if ans not in opts:
      raise BadSample("malformed_sample", f"the answer {ans!r} is not an option", qid)
    return Question(qid, prompt, (ans,), "multiple_choice",
                    video=video_of(_field(row, "videoID", str, qid)), options=opts,
                    group=str(row.get("duration", "")))
  return _rows(rows, make)


SPECS = {s.name: s for s in (
    Spec("docvqa", "anls", 32, "val_v1.0_withQT.json and its documents/",
         _doc_vqa(("val_v1.0_withQT.json", "val_v1.0.json", "val/val_v1.0_withQT.json",
                   "val/val_v1.0.json"), "image", "docvqa")),
    Spec("infovqa", "anls", 32, "infographicsVQA_val_v1.0_withQT.json and its images",
         _doc_vqa(("infographicsVQA_val_v1.0_withQT.json", "infographicsVQA_val_v1.0.json"),
                  "image_local_name", "infovqa")),
    Spec("chartqa", "relaxed_accuracy", 16, "test/test_human.json, test/test_augmented.json "
         "and test/png/", _chartqa),
    Spec("textvqa", "vqa_accuracy", 32, "TextVQA_0.5.1_val.json and train_images/", _textvqa),
    Spec("ocrbench", "ocrbench", 128, "OCRBench.tsv", _tsv("OCRBench.tsv", "ocrbench",
                                                           _ocrbench)),
    Spec("ai2d", "multiple_choice", 16, "AI2D_TEST.tsv", _tsv("AI2D_TEST.tsv", "ai2d", _ai2d)),
    Spec("mmmu", "multiple_choice", 128, "MMMU_DEV_VAL.tsv",
         _tsv("MMMU_DEV_VAL.tsv", "mmmu", _mmmu, split="validation")),
    Spec("mmbench", "multiple_choice", 32, "MMBench_DEV_EN.tsv",
         _tsv("MMBench_DEV_EN.tsv", "mmbench", _mmbench)),
    Spec("videomme", "multiple_choice", 16, "test-00000-of-00001.parquet and data/",
         _videomme),
)}
