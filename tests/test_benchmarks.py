"""The paper's benchmarks from their released layouts (data_pipelines/benchmarks.py) and
their scores (penguin_jax/benchmark.py): each reader against the layout's own fields read
here with json / csv / pyarrow, the prompt against lmms-eval's task strings written out
literally, the scores through an oracle and an always-"A" answerer (1.0, and 1/4 on the
balanced multiple-choice files: a scorer or reader that mixes up questions fails one of
the two), bad files one line, and the model's answers through `launch.eval --benchmark`
and during training."""
import base64
import csv
import json
import os
import sys

import pyarrow.parquet as pq
import pytest

from data_pipelines import benchmarks, demo_benchmarks
from data_pipelines.errors import BadSample
from data_pipelines.sample import SampleConfig
from data_pipelines.tokenizer import Qwen3Tokenizer
from penguin_jax import benchmark, scoring

N = 4
SHORT = "\nAnswer the question using a single word or phrase."
LETTER = "Answer with the option's letter from the given choices directly."


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  root = tmp_path_factory.mktemp("bench")
  assert demo_benchmarks.write(str(root), n=N, seed=3) == {n: N for n in benchmarks.SPECS}
  return root


def _tsv(path):
  csv.field_size_limit(sys.maxsize)
  with open(path, newline="") as f:
    return list(csv.DictReader(f, delimiter="\t"))


def _expected(name, root):
  """-> [(prompt, references, options, media)] of the files as lmms-eval's task builds them."""
  out = []
  if name in ("docvqa", "infovqa"):
    path = {"docvqa": "val_v1.0_withQT.json",
            "infovqa": "infographicsVQA_val_v1.0_withQT.json"}[name]
    for it in json.load(open(root / name / path))["data"]:
      img = it.get("image") or "infographicsvqa_images/" + it["image_local_name"]
      out.append((f"<image>\n{it['question']}{SHORT}", tuple(it["answers"]), None,
                  root / name / img))
  elif name == "chartqa":
    for split in ("human", "augmented"):
      for it in json.load(open(root / name / "test" / f"test_{split}.json")):
        out.append((f"<image>\n{it['query']}\nAnswer the question with a single word.",
                    (it["label"],), None, root / name / "test" / "png" / it["imgname"]))
  elif name == "textvqa":
    for it in json.load(open(root / name / "TextVQA_0.5.1_val.json"))["data"]:
      out.append((f"<image>\n{it['question'].capitalize()}{SHORT}", tuple(it["answers"]),
                  None, root / name / "train_images" / f"{it['image_id']}.jpg"))
  elif name == "ocrbench":
    for r in _tsv(root / name / "OCRBench.tsv"):
      out.append((r["question"], (json.loads(r["answer"].replace("'", '"'))[0],), None,
                  base64.b64decode(r["image"])))
  elif name in ("ai2d", "mmmu", "mmbench"):
    file = {"ai2d": "AI2D_TEST.tsv", "mmmu": "MMMU_DEV_VAL.tsv", "mmbench": "MMBench_DEV_EN.tsv"}
    for r in _tsv(root / name / file[name]):
      if name == "mmmu" and r["split"] != "validation":
        continue
      opts = {k: r[k] for k in "ABCD"}
      listed = "\n".join(f"{k}. {v}" for k, v in opts.items())
      if name == "ai2d":
        prompt = f"{r['question']}\n{listed}\n{LETTER}"
      elif name == "mmmu":        # "<image 1>" where the one image goes
        prompt = f"{r['question']}\n{listed}\n\n{LETTER}".replace("<image 1>", "<image>")
      else:
        prompt = (f"{r['hint']} {r['question']} There are several options:\n{listed}\n\n"
                  f"{LETTER}")
      out.append((prompt, (r["answer"],), opts, base64.b64decode(r["image"])))
  elif name == "videomme":
    t = pq.read_table(root / name / "videomme" / "test-00000-of-00001.parquet").to_pylist()
    for r in t:
      prompt = ("Select the best answer to the following multiple-choice question based on "
                "the video and the subtitles. Respond with only the letter (A, B, C, or D) "
                f"of the correct option.\n{r['question']}\n" + "\n".join(r["options"]) +
                f"\n\n{LETTER}")
      opts = {o[0]: o[3:] for o in r["options"]}
      out.append((prompt, (r["answer"],), opts, root / name / "data" / f"{r['videoID']}.mp4"))
  return out


@pytest.mark.parametrize("name", list(benchmarks.SPECS))
def test_each_reader_prompts_as_lmms_eval_and_reads_its_media(files, name):
  questions, bad = benchmarks.read(name, str(files / name))
  want = _expected(name, files)
  assert not bad and len(questions) == len(want) == N
  for q, (prompt, refs, opts, media) in zip(questions, want):
    assert (q.prompt, q.references, q.options) == (prompt, refs, opts)
    rec = benchmarks.record(q)
    text = rec["conversations"][0]["value"]
    if name == "videomme":
      assert rec["video"] == str(media) and text == "<video>\n" + prompt and not rec["images"]
    else:
      data = media if isinstance(media, bytes) else open(media, "rb").read()
      assert rec["images"] == [data] and rec["video"] is None
      assert text.count("<image>") == 1
      assert text == (prompt if "<image>" in prompt else "<image>\n" + prompt)
  assert benchmarks.read(name, str(files / name), limit=2)[0] == questions[:2]


_TOKENIZER = []


class Answerer:
  """A stand-in for inference.Generator: each question's prompt is built (the model's
  inputs, as the generator builds them) and answered by `answer(question)`."""

  def __init__(self, answer):
    if not _TOKENIZER:
      _TOKENIZER.append(Qwen3Tokenizer.from_vocab_file())
    self.answer, self.skipped = answer, 0
    self.loaded = type("L", (), {"tokenizer": _TOKENIZER[0], "sample_config": SampleConfig()})()

  def answer_each(self, makers, batch_size, strict=False, max_new_tokens=None):
    out = []
    for make in makers:
      q, feats = make()
      assert len(feats["input_ids"]) > len(feats["visual_positions"]) >= 1
      out.append((q, self.answer(q)))
    yield out

  def summary(self):
    return ""


def _oracle(q):
  if q.options:
    return f"The answer is ({q.references[0]})."
  return max(q.references, key=q.references.count)    # the humans' most common answer


@pytest.mark.parametrize("name", list(benchmarks.SPECS))
def test_an_oracle_scores_one_and_always_a_scores_a_quarter(files, name, tmp_path):
  questions, _ = benchmarks.read(name, str(files / name))
  out = tmp_path / "answers.jsonl"
  s, recs = benchmark.evaluate_questions(Answerer(_oracle), name, questions, out=str(out),
                                         log=lambda m: None)
  assert (s["benchmark"], s["score"], s["n"], s["skipped"]) == (name, 1.0, N, 0)
  assert [r["id"] for r in recs] == [q.id for q in questions]
  # the answers file is what `launch.eval --score` reads: the same score from it
  metric = benchmarks.SPECS[name].metric
  assert scoring.score_file(str(out), metric)[metric] == 1.0
  s, _ = benchmark.evaluate_questions(Answerer(lambda q: "A"), name, questions,
                                      log=lambda m: None)
  assert s["score"] == (0.25 if metric == "multiple_choice" else 0.0)
  if name == "chartqa":
    s, _ = benchmark.evaluate_questions(Answerer(_oracle), name, questions, log=lambda m: None)
    assert s["groups"] == {"augmented": 1.0, "human": 1.0}


def test_an_mmmu_open_question_is_prompted_short_and_scored_by_mmmus_parser(files, tmp_path):
  """A validation row without options: lmms-eval's open-question prompt, `mmmu_open`."""
  rows = [r for r in _tsv(files / "mmmu" / "MMMU_DEV_VAL.tsv") if r["split"] == "validation"]
  row = {**rows[0], "question": "<image 1> How many legs?", "answer": "14"}
  for k in "ABCD":
    row[k] = "nan" if k == "A" else ""
  (tmp_path / "mmmu").mkdir()
  with open(tmp_path / "mmmu" / "MMMU_DEV_VAL.tsv", "w", newline="") as f:
    w = csv.DictWriter(f, list(row), delimiter="\t")
    w.writeheader()
    w.writerow(row)
  (q,), bad = benchmarks.read("mmmu", str(tmp_path / "mmmu"))
  assert not bad and (q.metric, q.references, q.options) == ("mmmu_open", ("14",), None)
  assert q.prompt == ("<image> How many legs?\n\nAnswer the question using a single word "
                      "or phrase.")
  assert benchmark.score_one(q, "So the spider has 14 legs... The answer is 14.") == 1.0
  assert benchmark.score_one(q, "The answer is 8.") == 0.0


def test_bad_files_are_one_line_and_bad_questions_are_named(files, tmp_path):
  with pytest.raises(FileNotFoundError, match="docvqa: none of val_v1.0_withQT.json"):
    benchmarks.read("docvqa", str(tmp_path))
  with pytest.raises(FileNotFoundError, match="is not a folder"):
    benchmarks.read("ai2d", str(tmp_path / "nowhere"))
  with pytest.raises(ValueError, match="unknown benchmark 'docvq'"):
    benchmarks.read("docvq", str(tmp_path))
  (tmp_path / "val_v1.0_withQT.json").write_text("{not json")
  with pytest.raises(ValueError, match="val_v1.0_withQT.json: not JSON"):
    benchmarks.read("docvqa", str(tmp_path))
  # a question without answers, another whose image is missing: named, the rest read
  d = json.load(open(files / "docvqa" / "val_v1.0_withQT.json"))
  del d["data"][0]["answers"]
  d["data"][1]["image"] = "documents/nowhere.png"
  bad_dir = tmp_path / "docvqa"
  bad_dir.mkdir()
  json.dump(d, open(bad_dir / "val_v1.0_withQT.json", "w"))
  os.symlink(files / "docvqa" / "documents", bad_dir / "documents")
  qs, bad = benchmarks.read("docvqa", str(bad_dir))
  assert len(qs) == N - 1 and len(bad) == 1
  assert "docvqa-1000" in str(bad[0]) and "'answers'" in str(bad[0])
  with pytest.raises(BadSample, match="missing_file"):
    benchmarks.record(qs[0])
  # a TSV row whose answer is no option, one whose image is not base64, one sharing the
  # image of an earlier row by its index (VLMEvalKit's convention)
  rows = _tsv(files / "ai2d" / "AI2D_TEST.tsv")
  rows[0]["answer"] = "F"
  rows[1]["image"] = "%%%" * 30
  rows[3]["image"] = rows[2]["index"]
  ai2d = tmp_path / "ai2d"
  ai2d.mkdir()
  with open(ai2d / "AI2D_TEST.tsv", "w", newline="") as f:
    w = csv.DictWriter(f, list(rows[0]), delimiter="\t")
    w.writeheader()
    w.writerows(rows)
  qs, bad = benchmarks.read("ai2d", str(ai2d))
  assert [q.id for q in qs] == ["ai2d-1", "ai2d-2", "ai2d-3"] and len(bad) == 1
  assert "'F' is not one of its options" in str(bad[0])
  with pytest.raises(BadSample, match="ai2d-1.*corrupt_image"):
    benchmarks.record(qs[0])
  assert benchmarks.record(qs[2])["images"] == benchmarks.record(qs[1])["images"]


def test_training_config_names_benchmarks_folders_and_counts():
  assert benchmark.parse_config("docvqa:/d/x:8, mmmu:/m", 32) == [("docvqa", "/d/x", 8),
                                                                 ("mmmu", "/m", 32)]
  with pytest.raises(ValueError, match="unknown benchmark 'doc'"):
    benchmark.parse_config("doc:/x", 3)
  with pytest.raises(ValueError, match="'docvqa' is not NAME:DIR"):
    benchmark.parse_config("docvqa", 3)


def test_launch_eval_benchmark_on_a_tiny_run(runs, files, tmp_path, capsys):
  """The model's own answers: one benchmark of each file kind (a TSV with an interleaved
  image), the answers file scored again by --score to the same figure."""
  from launch import eval as eval_cli
  workdir, hf_dir = runs["plain"]
  out = tmp_path / "mmmu.jsonl"
  assert eval_cli.main(["--benchmark=mmmu", f"--data={files / 'mmmu'}", f"--workdir={workdir}",
                        "--limit=3", f"--out={out}", "--max_new_tokens=4"]) == 0
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert (summary["benchmark"], summary["metric"], summary["n"]) == ("mmmu", "multiple_choice", 3)
  recs = [json.loads(l) for l in open(out)]
  assert len(recs) == 3 and all(r["answer"] is not None for r in recs)
  assert summary["score"] == scoring.score_file(str(out), "multiple_choice")["multiple_choice"]
  assert eval_cli.main(["--benchmark=docvqa", f"--data={files / 'docvqa'}",
                        f"--hf_dir={hf_dir}", "--limit=2", "--max_new_tokens=4"]) == 0
  assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n"] == 2
  assert eval_cli.main(["--benchmark=chartqa", f"--data={tmp_path}",
                        f"--workdir={workdir}"]) == 2
  err = capsys.readouterr().err
  assert "error: chartqa: none of test_human.json" in err and "Traceback" not in err


def test_benchmarks_during_training_leave_the_losses_unchanged(uninterrupted, files):
  """The reference run's step-20 checkpoint resumed with DocVQA and VideoMME questions
  answered every 5 steps (no held-out loss): eval/NAME/METRIC in metrics.jsonl and
  TensorBoard, and the losses of steps 21..30 == the reference run's (the evaluation reads
  only the parameters, and no training data)."""
  import glob
  import shutil
  from train_runs import metrics, run
  root, ref, _ = uninterrupted
  wd = root / "bench"
  shutil.copytree(root / "a", wd)
  shutil.rmtree(wd / "checkpoints" / "30")    # back to step 20: the rest runs again
  r = run(wd, root / "demo", "--config.eval.every=5", "--config.eval.batches=0",
          f"--config.eval.benchmarks=docvqa:{files / 'docvqa'}:2,videomme:{files / 'videomme'}")
  assert r.returncode == 0 and "resumed from step 20" in r.stderr, r.stderr[-3000:]
  assert "benchmark videomme: 4 questions" in r.stderr    # N: eval.benchmark_samples (32)
  m = metrics(wd)
  for s in range(21, 31):
    assert m[s]["loss"] == ref[s]["loss"], (s, m[s]["loss"], ref[s]["loss"])
  for s in (25, 30):
    e = m[s]["eval"]
    assert set(e) == {"docvqa/anls", "docvqa/n", "videomme/multiple_choice", "videomme/n"}
    assert (e["docvqa/n"], e["videomme/n"]) == (2, 4)
    assert 0 <= e["docvqa/anls"] <= 1 and e["videomme/multiple_choice"] in (0, .25, .5, .75, 1)
  events = glob.glob(str(wd / "tensorboard" / "events.out.tfevents*"))
  assert any(b"eval/videomme/multiple_choice" in open(e, "rb").read() for e in events)
  bad = run(root / "bench_bad", root / "demo", "--config.total_steps=2", "--config.eval.every=2",
            f"--config.eval.benchmarks=chartqa:{root / 'nowhere'}")
  assert bad.returncode == 2 and "Traceback" not in bad.stderr
  assert "error: chartqa: " in bad.stderr and "is not a folder" in bad.stderr


def test_training_jsonl_asks_as_the_readers_and_answers_letters(files, tmp_path):
  """`launch.demo --benchmarks`' fine-tuning data: one release-format sample per question,
  its user turn the reader's prompt with the media tags, its answer the letter (multiple
  choice) or the most common reference; every sample readable as a record."""
  from data_pipelines import records
  raw = tmp_path / "raw"
  n = demo_benchmarks.training_jsonl(str(files), str(raw))
  samples = [json.loads(l) for l in open(raw / "train.jsonl")]
  assert n == len(samples) == N * len(benchmarks.SPECS)
  by_id = {s["id"]: s for s in samples}
  for name in benchmarks.SPECS:
    for q in benchmarks.read(name, str(files / name))[0]:
      s = by_id[q.id]
      want = benchmarks.record(q)
      assert s["conversations"][0] == want["conversations"][0]
      assert s["conversations"][1]["value"] == (q.references[0] if q.options
                                                else max(q.references, key=q.references.count))
      rec = records.record_of(s, str(raw), allow_outside=True)
      assert rec["images"] == want["images"]
      assert (rec["video"] is None) == (want["video"] is None)


def test_benchmarks_report_lists_before_and_after():
  import tempfile
  from penguin_jax.demo import recipe_report
  st = {"benchmarks/before": {"ai2d": {"metric": "multiple_choice", "n": 24, "score": 0.0}},
        "benchmarks/after": {"ai2d": {"metric": "multiple_choice", "n": 24, "score": 0.5}},
        "benchmarks/finetune": {"steps": 400, "seconds": 140},
        "benchmarks_data": {"train_questions": 432}}
  with tempfile.TemporaryDirectory() as w:
    text = recipe_report.write_benchmarks(w, st)
    assert open(os.path.join(w, "benchmarks.md")).read() == text
  assert "| ai2d | multiple_choice | 24 | 0.000 | 0.500 |" in text
  assert "432 other questions in those formats, 400 steps (2:20)" in text
