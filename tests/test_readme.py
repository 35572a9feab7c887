"""The README's Python blocks run as written: each ```python block is executed in a
folder that holds what it names (tiny random models at path/to/..., the demo corpus
as penguin_vl/release in tfds_data/), and what it computes is checked."""
import os
import re

import pytest

import penguin_jax
from conftest import tiny_qwen3_hf

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def _block(marker: str) -> str:
  blocks = re.findall(r"```python\n(.*?)```", open(README).read(), re.S)
  found = [b for b in blocks if marker in b]
  assert len(found) == 1, f"expected one README block with {marker!r}"
  return found[0]


def test_every_python_block_is_run_here():
  blocks = re.findall(r"```python\n(.*?)```", open(README).read(), re.S)
  assert sorted(blocks) == sorted([_block("penguin_jax.from_pretrained"),
                                   _block("pipeline.make_dataset")])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("readme")
  tiny_qwen3_hf(root / "path" / "to" / "Qwen3-1.7B")
  tiny_qwen3_hf(root / "path" / "to" / "Qwen3-0.6B", seed=1)
  enc, params = penguin_jax.encoder_from_qwen3(str(root / "path" / "to" / "Qwen3-0.6B"))
  penguin_jax.save_pretrained(enc, params, str(root / "path" / "to" / "penguin_encoder"))
  return root


def test_the_use_block_runs(folder, monkeypatch):
  monkeypatch.chdir(folder)
  ns = {}
  exec(_block("penguin_jax.from_pretrained"), ns)
  assert ns["logits"].shape == (1, 4, 320) and ns["new_ids"].shape == (1, 8)
  assert ns["feats"].shape == (16, 64)                  # 8 x 8 patches merged 2 x 2
  assert os.path.isfile(folder / "out_dir" / "config.json")


def test_the_pipeline_block_runs(tmp_path, monkeypatch):
  from data_pipelines import demo_data, tfds_penguin
  demo_data.generate(str(tmp_path / "demo"), 16, 4, seed=0)
  tfds_penguin.prepare(str(tmp_path / "demo"), str(tmp_path / "tfds_data"), "release")
  monkeypatch.chdir(tmp_path)
  ns = {}
  exec(_block("pipeline.make_dataset"), ns)
  assert ns["batch"]["input_ids"].shape == (8, 4096) and (ns["batch"]["segment_ids"] > 0).any()
  assert ns["state"]                                    # the iterator's state, for resume
