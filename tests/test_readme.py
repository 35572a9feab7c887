"""The README's Quickstart runs as written, and every Python block of the README and of
docs/ runs: each in a folder that holds what it names (tiny random models at
path/to/..., the demo corpus as penguin_vl/release in tfds_data/), what it computes
checked."""
import glob
import json
import os
import re
import subprocess

import pytest

import penguin_jax
from conftest import tiny_qwen3_hf
from train_runs import ENV, REPO

DOCS = [os.path.join(REPO, "README.md"), *sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))]


def _blocks(lang: str, files=DOCS) -> list[str]:
  return [b for f in files for b in re.findall(rf"```{lang}\n(.*?)```", open(f).read(), re.S)]


def _block(marker: str) -> str:
  found = [b for b in _blocks("python") if marker in b]
  assert len(found) == 1, f"expected one Python block with {marker!r}"
  return found[0]


MARKERS = ("any of the four model types", "greedy_generate(model", "pipeline.make_dataset")


def test_every_python_block_is_run_here():
  assert sorted(_blocks("python")) == sorted(_block(m) for m in MARKERS)


def test_the_readme_is_a_door_not_a_notebook():
  text = open(os.path.join(REPO, "README.md")).read()
  assert len(text.encode()) <= 12_000
  quick = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
  assert len(re.findall(r"```", quick)) == 2          # one block


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("readme")
  tiny_qwen3_hf(root / "path" / "to" / "Qwen3-1.7B")
  tiny_qwen3_hf(root / "path" / "to" / "Qwen3-0.6B", seed=1)
  enc, params = penguin_jax.encoder_from_qwen3(str(root / "path" / "to" / "Qwen3-0.6B"))
  penguin_jax.save_pretrained(enc, params, str(root / "path" / "to" / "penguin_encoder"))
  return root


def test_the_library_blocks_run(folder, monkeypatch):
  monkeypatch.chdir(folder)
  ns = {}
  exec(_block(MARKERS[0]), ns)                                 # the README's four calls
  assert ns["enc"].cfg.hidden_size == 64 and os.path.isfile(folder / "out_dir" / "config.json")
  ns = {}
  exec(_block(MARKERS[1]), ns)                                 # docs/export.md
  assert ns["logits"].shape == (1, 4, 320) and ns["new_ids"].shape == (1, 8)
  assert ns["feats"].shape == (16, 64)                  # 8 x 8 patches merged 2 x 2


def test_the_pipeline_block_runs(tmp_path, monkeypatch):
  from data_pipelines import demo_data, tfds_penguin
  demo_data.generate(str(tmp_path / "demo"), 16, 4, seed=0)
  tfds_penguin.prepare(str(tmp_path / "demo"), str(tmp_path / "tfds_data"), "release")
  monkeypatch.chdir(tmp_path)
  ns = {}
  exec(_block("pipeline.make_dataset"), ns)
  assert ns["batch"]["input_ids"].shape == (8, 4096) and (ns["batch"]["segment_ids"] > 0).any()
  assert ns["state"]                                    # the iterator's state, for resume


@pytest.mark.slow
def test_the_quickstart_runs_as_written_and_its_outputs_chain(tmp_path):
  """The Quickstart's one shell block, line by line, in a fresh folder that has the
  repository's configs/ (as a clone has): every command exits 0, and each reads what the
  one before wrote."""
  (block,) = [b for b in _blocks("bash", [DOCS[0]])]
  os.symlink(os.path.join(REPO, "configs"), tmp_path / "configs")
  outs = []
  for line in block.strip().splitlines():
    r = subprocess.run(line, shell=True, cwd=tmp_path, env=ENV, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, (line, r.stderr[-3000:])
    outs.append(r)
  runs = tmp_path / "runs"
  for stage, prev in [("stage1b", "stage1"), ("stage2", "stage1b"), ("stage3", "stage2")]:
    # the source as recorded in the run's config: an absolute path
    assert f"from {runs / prev} (step 30)" in outs[["stage1", "stage1b", "stage2", "stage3"].index(stage)].stderr
  assert outs[4].stdout.strip() and "prefill:" in outs[4].stderr          # an answer
  figures = json.loads(outs[5].stdout.strip().splitlines()[-1])
  n = sum(1 for _ in open(runs / "demo" / "raw" / "val.jsonl"))
  assert figures["step"] == 30 and figures["answers"]["count"] == n
  assert sum(1 for _ in open(runs / "answers.jsonl")) == n
  assert json.load(open(runs / "penguin_vl_hf" / "config.json"))["model_type"] == "penguinvl_qwen3"
  assert outs[7].stdout == outs[4].stdout                # the export answers as the workdir
  noise = ("Downloading and preparing", "Using custom data configuration",
           "Metadata file does not exist", "E0000", "Traceback")
  for line, r in zip(block.strip().splitlines(), outs):
    assert not any(w in r.stderr for w in noise), (line, r.stderr[-2000:])
