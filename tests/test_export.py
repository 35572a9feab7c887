"""Handing a training run to PyTorch users (`launch.convert workdir-to-hf`) and reading the
released layout as it is (docs/design.md §1.5): logits, tokenizer, config fields, HF cache lookup."""
import json
import logging
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

import penguin_jax
from penguin_jax import hf, patches as P, registry, hf_keys
from penguin_jax.train import checkpoint as ckpt
from train_runs import export as _export

# 20 texts with chat markup, <image>, Chinese, code, emoji, odd whitespace, combining marks.
TEXTS = [
    "<|im_start|>user\n<image><image>\nWhat is 3 plus 4?<|im_end|>\n",
    "<|im_start|>assistant\n<think>\n\n</think>\n\nThe answer is 7.<|im_end|>\n",
    "图片里有什么？ 一只企鹅站在冰上。", "Time 0.0s:<image>,Time 1.0s:<image>\n",
    "def f(x):\n    return x ** 2  # square\n", "for (int i = 0; i < n; ++i) { a[i] = i; }",
    "  leading spaces and   runs\n\n\ttabs\t", "emoji 🐧🐧 and 😀 mixed with text",
    "cafe\u0301 naïve résumé", "<|endoftext|>", "a<image>b<image>c", "x\ny\r\nz\n\n\n",
    "", " ", "The chart shows 42.5% growth in 2023 (vs. 38%).",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n",
    "混合 mixed 文本 text 123", "https://example.com/a?b=c&d=e", "UPPER lower MiXeD",
    "line one\nline two\n<image>\nline three"]


def _multimodal_batch(image_id, vocab, seed=0):
  """Two rows: text + a 4x4 image (16 tokens) + text; text + a 2-frame video (merge 2)."""
  rs = np.random.RandomState(seed)
  text = lambda n: rs.randint(10, min(vocab, 300), n)
  rows = [([text(3), [image_id] * 16, text(5)], [(1, 4, 4)], [1]),
          ([text(2), [image_id] * 8, text(14)], [(2, 4, 4)], [2])]
  out = {k: [] for k in ["input_ids", "patches", "patch_segment_ids", "patch_positions",
                         "merge_index", "merge_weight", "visual_positions"]}
  for parts, grids, merges in rows:
    ids = np.concatenate([np.asarray(p, np.int32) for p in parts])
    lay = P.pack_items(grids, merges, max_patches=32, max_tokens=16)
    vis = np.full(16, len(ids))
    img = np.nonzero(ids == image_id)[0]
    vis[:len(img)] = img
    out["input_ids"].append(ids)
    out["patches"].append(rs.uniform(-1, 1, (32, 588)).astype(np.float32))
    for k in ["patch_segment_ids", "patch_positions", "merge_index", "merge_weight"]:
      out[k].append(lay[k])
    out["visual_positions"].append(vis)
  return {k: jnp.asarray(np.stack(v)) for k, v in out.items()}


def _run_logits(workdir, batch_fn):
  """Logits of the run's own model (its config, its checkpoint's parameters)."""
  from ml_collections import ConfigDict
  from penguin_jax.train import data as data_lib
  from penguin_jax.train.program import model_config
  _, run, params = ckpt.read_run(str(workdir))
  cfg = ConfigDict(run)
  tok = data_lib.tokenizer(cfg, str(workdir))
  vcfg, _ = model_config(cfg, vocab_size=params["llm"]["embed_tokens"]["embedding"].shape[0],
                         image_token_id=tok.image_token_id)
  vcfg = vcfg.replace_runtime(attention="xla", dtype=jnp.float32)
  assert vcfg.llm.scan_layers == cfg.model.scan_layers
  model = registry.build_model(vcfg)
  batch = batch_fn(tok.image_token_id, vcfg.llm.vocab_size)
  return np.asarray(model.apply({"params": params}, **batch)), batch


@pytest.mark.slow
@pytest.mark.parametrize("name", ["plain", "mesh"])
def test_exported_run_gives_the_runs_logits(runs, name):
  workdir, out = runs[name]
  want, batch = _run_logits(workdir, _multimodal_batch)
  model, params = penguin_jax.from_pretrained(str(out))
  got = np.asarray(model.apply({"params": params}, **batch))
  assert np.abs(want).max() > 0.1
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_exported_config_meets_design_1_5_and_survives_a_move(runs, tmp_path, monkeypatch):
  from safetensors import safe_open
  from transformers import PretrainedConfig
  from transformers.image_processing_utils import ImageProcessingMixin
  workdir, out = runs["plain"]
  d = json.load(open(out / "config.json"))
  assert d["model_type"] == "penguinvl_qwen3"
  assert d["architectures"] == ["PenguinVLQwen3ForCausalLM"]
  # mm_vision_encoder present, read before vision_encoder: both name the encoder folder
  assert d["mm_vision_encoder"] == d["vision_encoder"]
  name = d["mm_vision_encoder"]
  assert "penguin" in name.lower() and "clip" not in name and "siglip" not in name
  # resolvable from any working directory: transformers' own resolver, from elsewhere
  monkeypatch.chdir(tmp_path)
  assert os.path.isabs(name)
  enc_cfg, _ = PretrainedConfig.get_config_dict(name)
  assert enc_cfg["model_type"] == "penguinvl_vision_encoder"
  assert enc_cfg["hidden_size"] == d["vision_hidden_size"]
  pre, _ = ImageProcessingMixin.get_image_processor_dict(name)
  assert pre["image_mean"] == pre["image_std"] == [0.5, 0.5, 0.5]   # the run's (default)
  assert pre["patch_size"] == 14 and pre["image_processor_type"] == "PenguinVLImageProcessor"
  assert json.load(open(out / "preprocessor_config.json")) == pre  # the model folder's too
  # no distill head by default; the release then needs no teacher
  assert d["use_reconstruct"] is False and "vision_encoder_teacher" not in d
  # the projector's fields, the image token = the tokenizer's `<image>`
  assert d["vision_projector_type"] == "mlp2x_gelu"
  tc = json.load(open(out / "tokenizer_config.json"))
  image = [(int(i), t["special"]) for i, t in tc["added_tokens_decoder"].items()
           if t["content"] == "<image>"]
  assert image == [(d["image_token_index"], True)]
  ids = {t["content"]: int(i) for i, t in tc["added_tokens_decoder"].items()}
  assert d["eos_token_id"] == ids["<|im_end|>"] and d["bos_token_id"] == ids["<|endoftext|>"]
  assert d["eos_token_id"] < d["vocab_size"]   # the tiny tokenizer's, not Qwen3's 151645
  # tensors under the release's key names; the encoder folder is a standalone checkpoint
  with safe_open(str(out / "model.safetensors"), "np") as f:
    keys = set(f.keys())
  assert "model.vision_encoder.vision_encoder.encoder.norm.weight" in keys
  assert "model.vision_projector.readout.2.weight" in keys
  assert not any("distill" in k for k in keys)
  with safe_open(os.path.join(name, "model.safetensors"), "np") as f:
    enc_keys = set(f.keys())
  assert enc_keys == {k[len(hf_keys.VLM_ENCODER_PREFIX):] for k in keys
                      if k.startswith(hf_keys.VLM_ENCODER_PREFIX)}
  run = d["penguin_jax_run"]
  last = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert run["stage"] == "stage3" and run["step"] == last
  assert f"step {last}" in open(out / "README.md").read()
  # moved to another folder (the old one gone): still loads, same parameters
  model, before = penguin_jax.from_pretrained(str(out))
  moved = tmp_path / "elsewhere" / "model"
  shutil.copytree(out, moved)
  hidden = str(out) + ".hidden"
  os.rename(out, hidden)
  try:
    _, after = penguin_jax.from_pretrained(str(moved))
    # and for the release, whose name lookup does not look inside the folder: set-encoder
    from launch import convert
    assert not os.path.isdir(json.load(open(moved / "config.json"))["mm_vision_encoder"])
    assert convert.main(["set-encoder", f"--hf_dir={moved}"]) == 0
    name = json.load(open(moved / "config.json"))["mm_vision_encoder"]
    assert name == str(moved / "penguin_encoder")
    assert PretrainedConfig.get_config_dict(name)[0]["model_type"] == "penguinvl_vision_encoder"
  finally:
    os.rename(hidden, out)
  np.testing.assert_array_equal(after["llm"]["norm"]["scale"], before["llm"]["norm"]["scale"])


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sentencepiece", "qwen3"])
def test_exported_tokenizer_loads_in_transformers_with_the_same_ids(runs, tmp_path, kind):
  from transformers import AutoTokenizer
  from data_pipelines.chat import CHAT_TEMPLATE
  from data_pipelines.tokenizer import Qwen3Tokenizer, SentencePieceTokenizer, save_hf
  if kind == "sentencepiece":   # what the tiny run trained with, from its export
    out = runs["plain"][1]
    ours = SentencePieceTokenizer(str(runs["data"] / "spm.model"))
  else:
    ours = Qwen3Tokenizer.from_vocab_file()
    out = tmp_path / "tok"
    save_hf(ours, str(out), CHAT_TEMPLATE, 4096)
  theirs = AutoTokenizer.from_pretrained(str(out))
  for text in TEXTS:
    assert theirs.encode(text, add_special_tokens=False) == ours.encode(text), repr(text)
  assert theirs.convert_tokens_to_ids("<image>") == ours.image_token_id
  assert theirs.eos_token == "<|im_end|>"
  msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]
  assert theirs.apply_chat_template(msgs, tokenize=False) == (
      "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nYo<|im_end|>\n")
  assert theirs.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True) \
      .endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
  # launch.generate's prompts (chat.format_sample prompt_only) are the template's ids
  from data_pipelines.chat import format_sample
  sample = {"id": "q", "conversations": [{"from": "human", "value": "What is 3 plus 4?"}]}
  ids, labels = format_sample(ours, sample, [], prompt_only=True)
  msg = [{"role": "user", "content": "What is 3 plus 4?"}]
  assert ids.tolist() == theirs.encode(theirs.apply_chat_template(
      msg, tokenize=False, add_generation_prompt=True), add_special_tokens=False)
  assert (labels == -100).all()


def _tiny_vlm(teacher=None):
  from penguin_jax.model_config import EncoderConfig, Qwen3Config, VLMConfig
  from penguin_jax.vlm import PenguinVL
  import jax
  cfg = VLMConfig(llm=Qwen3Config(vocab_size=320, hidden_size=48, intermediate_size=96,
                                  num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16),
                  encoder=EncoderConfig(hidden_size=64, intermediate_size=128, num_layers=2,
                                        num_heads=4, num_kv_heads=2, head_dim=16),
                  image_token_index=300, teacher_hidden_size=teacher)
  model = PenguinVL(cfg)
  return model, registry.init_params(model, jax.random.PRNGKey(1))


def _as_released(path, hf_home):
  """Rewrite a saved VLM folder as the release publishes it: `vision_encoder` a hub id, no
  inline encoder config, no teacher width; the encoder in a fake HF cache."""
  d = json.load(open(path / "config.json"))
  for k in ("vision_encoder_config", "teacher_hidden_size", "mm_vision_encoder"):
    d.pop(k, None)
  d["vision_encoder"] = "tencent/Penguin-Encoder"
  json.dump(d, open(path / "config.json", "w"))
  repo = hf_home / "hub" / "models--tencent--Penguin-Encoder"
  (repo / "refs").mkdir(parents=True)
  (repo / "refs" / "main").write_text("0123abcd")
  shutil.move(str(path / "penguin_encoder"), str(repo / "snapshots" / "0123abcd"))
  return d


def test_released_layout_loads_from_the_hf_cache(tmp_path, monkeypatch, caplog):
  model, params = _tiny_vlm(teacher=32)
  src = tmp_path / "Penguin-VL-stage1"
  penguin_jax.save_pretrained(model, params, str(src))
  d = _as_released(src, tmp_path / "hf_home")
  assert d["use_reconstruct"] is True and d["vision_encoder_teacher"]
  elsewhere = tmp_path / "cwd"
  elsewhere.mkdir()
  monkeypatch.chdir(elsewhere)
  # huggingface_hub reads HF_HOME / HF_HUB_CACHE when it is imported: set what it derived
  from huggingface_hub import constants
  # not in the cache: the error names the places looked at
  monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_home" / "hub"))
  with pytest.raises(FileNotFoundError, match="looked for config.json in .*Hugging Face cache "
                     ".*empty_home.* for tencent/Penguin-Encoder"):
    penguin_jax.from_pretrained(str(src))
  # in the cache: loads, distill head width from the tensors
  monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))
  loaded_model, loaded = penguin_jax.from_pretrained(str(src))
  assert loaded_model.cfg.teacher_hidden_size == 32
  assert loaded_model.cfg.teacher_name == d["vision_encoder_teacher"]
  for path in [("vision_distill_layer", "linear", "kernel"), ("llm", "norm", "scale"),
               ("vision_encoder", "norm", "scale")]:
    a, b = params, loaded
    for k in path:
      a, b = a[k], b[k]
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # an explicit folder wins
  monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_home" / "hub"))
  snap = tmp_path / "hf_home" / "hub" / "models--tencent--Penguin-Encoder" / "snapshots" / "0123abcd"
  m2, _ = penguin_jax.from_pretrained(str(src), vision_encoder_dir=str(snap))
  assert m2.cfg.encoder.hidden_size == 64
  # a tensor no module loads is a warning naming it, never silent
  from penguin_jax import safetensors_io
  t = safetensors_io.load_file(str(src / "model.safetensors"))
  t["model.vision_encoder.stray.weight"] = np.zeros(3, np.float32)
  safetensors_io.save_file(t, str(src / "model.safetensors"))
  with caplog.at_level(logging.WARNING):
    penguin_jax.from_pretrained(str(src), vision_encoder_dir=str(snap))
  assert "model.vision_encoder.stray.weight" in caplog.text


@pytest.fixture
def stage1_run(uninterrupted):
  """conftest's tiny stage-1 run (checkpoints at 10, 20, 30), read only."""
  return uninterrupted[0] / "a"


@pytest.mark.slow
def test_stage1_export_drops_or_keeps_the_distill_head(stage1_run, tmp_path, capsys):
  _, run, params = ckpt.read_run(str(stage1_run))
  width = params["vision_distill_layer"]["linear"]["kernel"].shape[-1]
  plain = _export(stage1_run, tmp_path / "plain", "--dtype=float32")
  d = json.load(open(plain / "config.json"))
  assert d["use_reconstruct"] is False
  assert penguin_jax.from_pretrained(str(plain))[0].cfg.teacher_hidden_size is None
  kept = _export(stage1_run, tmp_path / "kept", "--dtype=float32", "--keep_distill_head")
  d = json.load(open(kept / "config.json"))
  assert d["use_reconstruct"] is True
  assert d["vision_encoder_teacher"] == "DAMO-NLP-SG/VL3-SigLIP-NaViT"   # the release needs one
  model, loaded = penguin_jax.from_pretrained(str(kept))
  assert model.cfg.teacher_hidden_size == width
  np.testing.assert_array_equal(loaded["vision_distill_layer"]["linear"]["kernel"],
                                params["vision_distill_layer"]["linear"]["kernel"])
  # a chosen step: this one, or a one-line error naming the steps there are
  _export(stage1_run, tmp_path / "step20", "--step=20")
  from launch import convert
  assert convert.main(["workdir-to-hf", f"--workdir={stage1_run}", f"--out={tmp_path / 'x'}",
                       "--step=7"]) == 2
  assert "no checkpoint at step 7 (it has [10, 20, 30])" in capsys.readouterr().err
  # bfloat16 by default, as the release's checkpoints
  bf = _export(stage1_run, tmp_path / "bf16")
  assert json.load(open(bf / "config.json"))["torch_dtype"] == "bfloat16"
  from penguin_jax import safetensors_io
  assert safetensors_io.load_file(str(bf / "model.safetensors"))["model.norm.weight"].dtype.name \
      == "bfloat16"


def test_workdir_to_hf_errors_are_one_line(tmp_path, capsys):
  from launch import convert
  assert convert.main(["workdir-to-hf", f"--workdir={tmp_path}", f"--out={tmp_path / 'o'}"]) == 2
  assert "no checkpoints folder" in capsys.readouterr().err
