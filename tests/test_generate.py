"""`python -m launch.generate`: a trained run answers about images and videos, the same
from its workdir and from its `workdir-to-hf` export; bad input is one line."""
import json

import jax
import numpy as np
import pytest

from data_pipelines import prompts
from launch import generate
from penguin_jax import inference

pytestmark = pytest.mark.slow


def _perturbed(loaded, seed=0):
  """The model with every weight shifted by the same seeded noise (a 2-step tiny model
  repeats one token; this one does not), the same for any two loads of one model."""
  leaves, tree = jax.tree.flatten(loaded.params)
  rs = np.random.RandomState(seed)
  loaded.params = jax.tree.unflatten(tree, [
      np.asarray(x, np.float32) + rs.normal(0, 0.5, x.shape).astype(np.float32) for x in leaves])
  return loaded


def _answers(loaded, samples, base, max_new_tokens=10, batch_size=4):
  g = inference.Generator(loaded, max_new_tokens=max_new_tokens)
  out = []
  for i in range(0, len(samples), batch_size):
    feats = [prompts.features(prompts.as_prompt(s)[0], loaded.tokenizer, loaded.sample_config,
                              base) for s in samples[i:i + batch_size]]
    out += g.generate(prompts.prompt_batch(feats, loaded.tokenizer.pad_id))
  return out


def test_workdir_and_its_export_give_the_same_tokens(runs):
  workdir, exported = runs["plain"]
  raw = runs["data"] / "raw"
  samples = prompts.read_jsonl(str(raw / "val.jsonl"))[:6]      # charts ... and a video
  assert any(s.get("video") for s in samples) and any(s.get("image") for s in samples)
  a = _answers(_perturbed(inference.load(workdir=str(workdir))), samples, str(raw))
  b = _answers(_perturbed(inference.load(hf_dir=str(exported))), samples, str(raw))
  assert a == b
  assert len({t for row in a for t in row}) > 3           # not one repeated token
  # one row alone decodes as in its left-padded batch
  alone = _answers(_perturbed(inference.load(workdir=str(workdir))), samples[2:3], str(raw))
  assert alone[0] == a[2]


def test_cli_streams_an_answer_and_answers_a_file(runs, tmp_path, capsys):
  workdir, exported = runs["plain"]
  raw = runs["data"] / "raw"
  image = next(raw.glob("media/*chart*.png"))
  assert generate.main([f"--workdir={workdir}", f"--image={image}", "--max_new_tokens=5",
                        "--prompt=What is the value of the red bar?"]) == 0
  out, err = capsys.readouterr()
  assert out.count("\n") == 1                            # one streamed answer
  assert "prefill:" in err and "tokens/s" in err and "compilation" in err
  video = next(raw.glob("media/*.mp4"))
  assert generate.main([f"--hf_dir={exported}", f"--video={video}", "--max_new_tokens=3",
                        "--prompt=What happens in the video?"]) == 0
  assert "decode: " in capsys.readouterr().err
  answers = tmp_path / "answers.jsonl"
  assert generate.main([f"--workdir={workdir}", f"--prompts={raw / 'val.jsonl'}",
                        "--max_new_tokens=3", f"--out={answers}", "--batch_size=16"]) == 0
  out = capsys.readouterr().out
  recs = [json.loads(l) for l in open(answers)]
  n = sum(1 for l in open(raw / "val.jsonl") if l.strip())
  assert len(recs) == n and out.count("\n") == n
  assert all(r["reference"] and "<image>" not in r["reference"] for r in recs)


def test_bad_input_is_one_line(runs, tmp_path, capsys):
  workdir, _ = runs["plain"]
  garbage = tmp_path / "broken.png"
  garbage.write_bytes(b"not an image")
  image = next((runs["data"] / "raw").glob("media/*chart*.png"))
  cases = [
      ([f"--image={tmp_path / 'missing.png'}", "--prompt=hi"], "missing_file"),
      ([f"--image={garbage}", "--prompt=hi"], "corrupt_image"),
      ([f"--image={image}", "--prompt=<image> and <image>"], "image_tag_mismatch"),
      (["--prompt=hi", f"--video={garbage}"], "corrupt_video"),
  ]
  for flags, reason in cases:
    assert generate.main([f"--workdir={workdir}", "--max_new_tokens=2", *flags]) == 2, reason
    err = capsys.readouterr().err
    line = next(l for l in err.splitlines() if reason in l)
    assert "sample 'prompt'" in line, err
    assert "Traceback" not in err
  lines = tmp_path / "p.jsonl"
  lines.write_text('{"prompt": "hi"}\n{not json\n')
  assert generate.main([f"--workdir={workdir}", f"--prompts={lines}"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err[-1].startswith("error: ") and "line 2" in err[-1]
  assert generate.main([f"--workdir={tmp_path / 'nowhere'}", "--prompt=hi"]) == 2
  assert "no checkpoints folder" in capsys.readouterr().err
  assert generate.main([f"--hf_dir={tmp_path}", "--prompt=hi"]) == 2
  assert "no config.json" in capsys.readouterr().err


def test_eval_cli_on_a_tiny_run(runs, tmp_path, capsys):
  """`launch.eval`: one pass reads every usable sample once (label tokens counted
  independently from the chat format), names and skips a bad one, and scores each
  generated answer with evaluation.py."""
  from data_pipelines.sample import features
  from launch import eval as eval_cli
  from penguin_jax import evaluation
  workdir, _ = runs["plain"]
  raw = runs["data"] / "raw"
  lines = [l for l in open(raw / "val.jsonl") if l.strip()][:10]
  bad = json.loads(lines[0])
  bad.update(id="bad-one", image=["media/nowhere.png"])
  data = raw / "eval_test.jsonl"                         # media paths are relative to raw/
  data.write_text("".join(lines) + json.dumps(bad) + "\n")
  out = tmp_path / "answers.jsonl"
  assert eval_cli.main([f"--workdir={workdir}", f"--data={data}", f"--out={out}",
                        "--max_new_tokens=4"]) == 0
  std = capsys.readouterr()
  figures = json.loads(std.out.strip().splitlines()[-1])
  assert any("bad-one" in l and "missing_file" in l for l in std.err.splitlines())
  assert figures["samples"] == 10 and figures["skipped"] == {"missing_file": 1}
  run = inference.load(workdir=str(workdir))
  expected = 0
  for l in lines:
    s = json.loads(l)
    rec = {**s, "images": [open(raw / p, "rb").read() for p in s.get("image", [])],
           "video": open(raw / s["video"][0], "rb").read() if s.get("video") else None}
    expected += int((features(rec, run.tokenizer, run.sample_config)["labels"] >= 0).sum())
  held = figures["held_out"]
  assert held["label_tokens"] == expected and held["dropped_label_tokens"] == 0
  assert 0 <= held["correct_tokens"] <= expected and np.isfinite(held["loss"])
  assert held["accuracy"] == held["correct_tokens"] / expected
  recs = [json.loads(l) for l in open(out)]
  assert [r["id"] for r in recs] == [json.loads(l)["id"] for l in lines]
  assert all(r["exact_match"] == evaluation.exact_match(r["answer"], r["reference"]) for r in recs)
  assert figures["answers"]["count"] == 10 and figures["answers"]["skipped"] == 1
  assert figures["answers"]["exact_match"] == sum(r["exact_match"] for r in recs) / 10
