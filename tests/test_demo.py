"""`python -m launch.demo --quick`: the whole recipe in miniature (stage 0 LLM, SigLIP
teacher, stages 1a -> 1b -> 2 -> 3 chained, export, evaluation), as a user runs it."""
import json
import os

import pytest

from launch import demo

pytestmark = pytest.mark.slow


def test_demo_quick_chains_every_stage_and_reports(quick_demo, capsys):
  w, _ = quick_demo         # conftest: the command a user runs, `launch.demo --quick`
  st = json.load(open(w / "results.json"))
  # stage 0 trained on the corpus's text alone; its LLM is an HF Qwen3 folder that stage
  # 1a's encoder and LLM start from (the release's code path), with the SigLIP teacher
  assert json.load(open(w / "stage0" / "qwen3" / "config.json"))["model_type"] == "qwen3"
  s0 = [json.loads(l) for l in open(w / "stage0" / "metrics.jsonl")]
  assert all(m["visual_tokens_per_s"] == 0 for m in s0 if "loss" in m)
  log1a = open(w / "stage1a" / "train.log").read()
  assert f"encoder initialised from text-only Qwen3 {w / 'stage0' / 'qwen3'}" in log1a
  assert f"LLM initialised from {w / 'stage0' / 'qwen3'}" in log1a
  assert f"teacher VL3-SigLIP-NaViT from {w / 'teacher'}" in log1a
  assert os.path.isfile(w / "teacher" / "model.safetensors")
  t = st["teacher"]
  assert t["loss_last"] < t["loss_first"] and t["val_texts"] > 1
  prev = "stage1a"
  for key in ("stage1b", "stage2", "stage3"):       # each from the previous checkpoint
    assert f"from {w / prev}" in open(w / key / "train.log").read(), key
    prev = key
  for key in ("stage0", "stage1a", "stage1b", "stage2", "stage3"):
    assert st[key]["loss_last"] < st[key]["loss_first"], (key, st[key])
  for key in ("stage0", "stage3"):                  # --quick: the baseline and the final
    e = st[f"eval_{key}"]
    n = sum(1 for _ in open(e["answers"]))
    assert n == 12 and 0 <= e["exact_match"] <= 1 and e["held_out_lm_loss"] > 0
    assert set(e["by_kind"]) == {"chart", "colour", "count", "digit", "photo", "video"}
  # the baseline was asked without images
  base = [json.loads(l) for l in open(st["eval_stage0"]["answers"])]
  assert not any("<image>" in b["prompt"] or "<video>" in b["prompt"] for b in base)
  assert st["export"]["same_answers"] == st["export"]["prompts"] == 12
  md = open(w / "results.md").read()
  for row in ("| stage0 (text only: the baseline) | 4 |", "| stage1a | 3 |", "| stage3 | 3 |",
              "| teacher (SigLIP) |", "| export |", "| colour |"):
    assert row in md, row
  assert open(w / "loss_curves.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  assert "| stage1b | 2 |" in md and "not evaluated (--quick)" in md
  # run again: every step is done, nothing is retrained (in process: no jax work)
  os.remove(w / "results.md")
  assert demo.main([f"--workdir={w}", "--quick"]) == 0
  assert "== stage" not in capsys.readouterr().err
  assert open(w / "results.md").read() == md
