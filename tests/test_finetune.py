"""Fine-tuning a released Penguin-VL (docs/finetune.md): a run starts from an HF folder
exactly, LoRA trains its adapters alone and resumes exactly from a checkpoint, its merged
export and its PEFT adapters give transformers' / PEFT's logits equal to ours, QLoRA
(int8, nf4) runs, a remote-code export loads with the Auto classes, and a size override
that contradicts the folder is one line.

The base is the recipe's tiny stage-3 run (`launch.demo --quick`), exported; the new data
a question kind the recipe never trained (`position`), built as a TFDS dataset with the
export's tokenizer, as a user builds theirs."""
import json
import os
import shutil
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import finetune
from data_pipelines import build, demo_data
from penguin_jax import registry, safetensors_io
from penguin_jax.inference import from_workdir
from penguin_jax.sharding import make_mesh
from penguin_jax.train import checkpoint as ckpt, init as init_lib, program as program_lib
from train_runs import ENV, REPO, export, metrics

pytestmark = pytest.mark.slow
RANK = 8
LORA = (f"--config.lora.rank={RANK}", "--config.optim.lr.llm=3e-3")   # adapters take a higher LR
TEXT_IDS = np.array([[1, 17, 250, 33, 402, 9, 77, 501, 12, 640, 5, 88]], np.int32)   # [1, 12]
# A model folder's own code, standing in for a released one's (loaded by the Auto classes
# with trust_remote_code): the LLM of a Penguin-VL folder as a Qwen3ForCausalLM.
TOY_CONFIG = '''from transformers import Qwen3Config


class ToyPenguinConfig(Qwen3Config):
  model_type = "penguinvl_qwen3"
'''
TOY_MODEL = '''from transformers import Qwen3ForCausalLM

from .configuration_toy import ToyPenguinConfig


class ToyPenguinForCausalLM(Qwen3ForCausalLM):
  config_class = ToyPenguinConfig
  _keys_to_ignore_on_load_unexpected = [r"model\\.vision_encoder\\.", r"model\\.vision_projector\\."]
'''
AUTO_MAP = {"AutoConfig": "configuration_toy.ToyPenguinConfig",
            "AutoModelForCausalLM": "modeling_toy.ToyPenguinForCausalLM"}


def _write_toy_code(folder):
  (folder / "configuration_toy.py").write_text(TOY_CONFIG)
  (folder / "modeling_toy.py").write_text(TOY_MODEL)
  d = json.loads((folder / "config.json").read_text())
  d["auto_map"] = AUTO_MAP
  (folder / "config.json").write_text(json.dumps(d, indent=2))


def train_cmd(workdir, init_from, *extra, data=None, steps=12):
  """`launch.train --config=configs/finetune.py:tiny` from `init_from`; on the position
  dataset (`data`: its TFDS folder) or the demo corpus (`--config.data.demo_dir=...`)."""
  on = [f"--config.data.tfds_data_dir={data}", "--config.data.tfds_name=penguin_vl/position",
        "--config.data.demo=False"] if data else []
  return [sys.executable, "-m", "launch.train", "--config=configs/finetune.py:tiny",
          f"--workdir={workdir}", f"--config.init.init_from={init_from}",
          f"--config.total_steps={steps}", "--config.log_every=1", "--config.checkpoint_every=4",
          "--config.eval.every=0", *on, *extra]


def train(*args, **kw):
  r = subprocess.run(train_cmd(*args, **kw), cwd=REPO, env=ENV, capture_output=True,
                     text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  return r


@pytest.fixture(scope="module")
def ft(quick_demo, tmp_path_factory):
  """The recipe's stage-3 run exported in float32 and bfloat16 (the latter with model code,
  as a released folder has), the position corpus as a TFDS dataset, and a LoRA run (rank
  8, 12 steps, checkpoints every 4) from the bfloat16 folder."""
  w, _ = quick_demo
  root = tmp_path_factory.mktemp("finetune")
  ns = types.SimpleNamespace(root=root, stage3=w / "stage3", demo=w / "data")
  ns.f32 = export(ns.stage3, root / "base_f32", "--dtype=float32")
  ns.bf16 = export(ns.stage3, root / "base_bf16", "--dtype=bfloat16")
  _write_toy_code(ns.bf16)
  demo_data.generate(str(root / "pos"), 48, 16, kinds=demo_data.FINETUNE_KINDS,
                     val_kinds=demo_data.FINETUNE_KINDS)
  ns.data = root / "tfds"
  assert build.main([f"--annotations={root / 'pos' / 'train.jsonl'}", f"--data-folder={root / 'pos'}",
                     f"--out={ns.data}", "--name=position", f"--tokenizer={ns.bf16}",
                     "--seq-len=512"]) == 0
  ns.lora = root / "lora"
  ns.lora_log = train(ns.lora, ns.bf16, *LORA, data=ns.data).stderr
  return ns


def _hf_llm(folder, dtype=None):
  """transformers' Qwen3ForCausalLM on the LLM tensors of a Penguin-VL folder (float32)."""
  import torch
  import transformers
  d = json.loads((folder / "config.json").read_text())
  cfg = transformers.Qwen3Config(**{k: d[k] for k in (
      "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
      "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_theta",
      "tie_word_embeddings", "max_position_embeddings")})
  model = transformers.Qwen3ForCausalLM(cfg).eval()
  t = safetensors_io.load_file(str(folder / "model.safetensors"))
  llm = {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in t.items()
         if not k.startswith(("model.vision_encoder.", "model.vision_projector."))}
  missing, unexpected = model.load_state_dict(llm, strict=False)
  assert set(missing) <= {"lm_head.weight"} and not unexpected, (missing, unexpected)
  model.tie_weights()
  return model


def _torch_logits(model):
  import torch
  with torch.no_grad():
    return model(torch.from_numpy(TEXT_IDS.astype(np.int64))).logits.numpy()


def _our_logits(workdir):
  """The run's own model (adapters applied, not merged) on TEXT_IDS, in float32."""
  run = from_workdir(str(workdir))
  model = registry.build_model(run.model.cfg.replace_runtime(attention="xla", dtype=jnp.float32))
  params = jax.tree.map(lambda x: x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating)
                        else x, run.params)
  return np.asarray(model.apply({"params": params}, jnp.asarray(TEXT_IDS)))


def _losses(workdir):
  return {s: (r["loss"], r["grad_norm"]) for s, r in metrics(workdir).items() if "loss" in r}


# --------------------------------------------------------------------------- import
def test_an_export_starts_a_run_with_the_workdirs_parameters(ft):
  """A run initialised from the float32 export holds, leaf by leaf, exactly the
  parameters of one initialised from the exported workdir (float32 program): the import is
  exact, so the two runs' first steps are the same. Negative control: from the bfloat16
  export (rounded weights) they differ."""
  got, program = {}, None
  for name, src in [("workdir", ft.stage3), ("f32", ft.f32), ("bf16", ft.bf16)]:
    cfg = _tiny_finetune_cfg(src)
    cfg.lora.rank = 0
    init_lib.resolve(cfg)                      # the same sizes from all three
    program = program or program_lib.build(cfg, make_mesh(**cfg.mesh.to_dict()), image_token_id=6)
    params = init_lib.initial_params(cfg, program, program.init_params(jax.random.PRNGKey(0)))
    got[name] = {"/".join(str(getattr(k, "key", k)) for k in p): np.asarray(x)
                 for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
  assert got["f32"].keys() == got["workdir"].keys() and len(got["f32"]) > 20
  for k, x in got["workdir"].items():
    np.testing.assert_array_equal(got["f32"][k], x, err_msg=k)
  assert any(not np.array_equal(got["bf16"][k], x) for k, x in got["workdir"].items())


def _tiny_finetune_cfg(init_from):
  cfg = finetune.get_config("tiny")
  cfg.init.init_from = str(init_from)
  cfg.mesh.data, cfg.mesh.fsdp, cfg.data.global_batch = 1, 8, 8   # the suite's 8 devices
  return cfg


@pytest.mark.parametrize("kind", ["qwen3", "orbax", "encoder"])
def test_init_from_a_qwen3_folder_an_orbax_checkpoint_or_an_encoder_folder(
    kind, ft, qwen3_tied, tmp_path):
  """The module the source holds comes from it, bit for bit (float32 program); the others
  stay the program's; the model's sizes are the source's."""
  from launch import convert
  qdir, _ = qwen3_tied
  src, module = {"qwen3": (qdir, "llm"), "orbax": (tmp_path / "ck", "llm"),
                 "encoder": (ft.f32 / "penguin_encoder", "vision_encoder")}[kind]
  if kind == "orbax":
    assert convert.main(["hf-to-orbax", f"--hf_dir={qdir}", f"--out={src}"]) == 0
  cfg = _tiny_finetune_cfg(src)
  init_lib.resolve(cfg)
  want = safetensors_io.load_file(str((qdir if kind != "encoder" else src) / "model.safetensors"))
  want = want["model.norm.weight" if module == "llm" else "encoder.norm.weight"]   # [hidden]
  hidden = want.shape[0]
  assert cfg.model[{"llm": "llm", "vision_encoder": "encoder"}[module]].hidden_size == hidden
  program = program_lib.build(cfg, make_mesh(**cfg.mesh.to_dict()), image_token_id=6)
  fresh = program.init_params(jax.random.PRNGKey(0))
  params = init_lib.initial_params(cfg, program, fresh)
  got = params[module]["norm"]["scale"]
  np.testing.assert_array_equal(np.asarray(got), want)
  other = "vision_encoder" if module == "llm" else "llm"
  np.testing.assert_array_equal(np.asarray(params[other]["norm"]["scale"]),
                                np.asarray(fresh[other]["norm"]["scale"]))


def test_a_size_override_that_contradicts_the_folder_is_one_line(ft):
  r = subprocess.run(train_cmd(ft.root / "contradicts", ft.bf16,
                               "--config.model.llm.hidden_size=96", data=ft.data),
                     cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
  assert r.returncode == 2, r.stderr[-2000:]
  last = r.stderr.strip().splitlines()[-1]
  assert "--config.model.llm.hidden_size=96" in last and "has 128" in last, r.stderr[-2000:]
  assert "Traceback" not in r.stderr


def _word_tokenizer(folder, texts, image_id, size):
  """A tokenizer.json of whole words (the corpus's, the chat format's symbols, `<image>`
  at `image_id`), every id below `size`: the release fixture's tiny vocabulary."""
  from tokenizers import Tokenizer, models, pre_tokenizers
  from data_pipelines.tokenizer import CHAT_SYMBOLS, IMAGE_TOKEN
  words = sorted({w for t in texts for w in t.split()} | {"user", "assistant", "system"})
  specials = [s for s in CHAT_SYMBOLS if s != IMAGE_TOKEN]
  vocab = {w: i for i, w in enumerate(["[UNK]", *specials, *words])}
  vocab[IMAGE_TOKEN] = image_id
  assert max(vocab.values()) < size and len(vocab) <= image_id
  tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  tok.add_special_tokens([*specials, IMAGE_TOKEN])
  tok.save(str(folder / "tokenizer.json"))


def _as_the_release_saved_it(dst, hf_home=None):
  """The release fixture's VLM folder copied to `dst`, its encoder named by absolute path
  (as the release's launcher writes it) or, with `hf_home`, by hub id and placed in that
  HF cache; a word tokenizer for the position corpus added."""
  import shutil
  release = os.path.join(os.path.dirname(__file__), "fixtures", "release_tiny")
  shutil.copytree(os.path.join(release, "vlm"), dst, symlinks=True)
  os.remove(dst / "penguin_encoder")
  d = json.loads((dst / "config.json").read_text())
  if hf_home is None:
    enc = dst.parent / f"{dst.name}_penguin_encoder"
    d["mm_vision_encoder"] = d["vision_encoder"] = str(enc)
  else:
    snap = hf_home / "hub" / "models--tencent--Penguin-Encoder" / "snapshots" / "0123abcd"
    (snap.parent.parent / "refs").mkdir(parents=True)
    (snap.parent.parent / "refs" / "main").write_text("0123abcd")
    enc = snap
    d["vision_encoder"] = "tencent/Penguin-Encoder"
    d.pop("mm_vision_encoder")
  shutil.copytree(os.path.join(release, "encoder"), enc)
  (dst / "config.json").write_text(json.dumps(d, indent=2))
  return d


def test_a_folder_the_release_saved_initialises_a_program(tmp_path):
  """The release's own save_pretrained output, its encoder named by absolute path: every
  module loads bit for bit (float32), sizes and normalisation from the folder."""
  src = tmp_path / "Penguin-VL-tiny"
  _as_the_release_saved_it(src)
  cfg = _tiny_finetune_cfg(src)
  init_lib.resolve(cfg)
  assert (cfg.model.llm.hidden_size, cfg.model.encoder.hidden_size) == (48, 64)
  assert cfg.data.preprocessor_config == f"{src}_penguin_encoder"
  program = program_lib.build(cfg, make_mesh(**cfg.mesh.to_dict()), image_token_id=300)
  params = init_lib.initial_params(cfg, program, program.init_params(jax.random.PRNGKey(0)))
  t = safetensors_io.load_file(str(src / "model.safetensors"))
  pairs = [(("llm", "norm", "scale"), t["model.norm.weight"]),
           (("vision_encoder", "norm", "scale"), t["model.vision_encoder.vision_encoder.encoder.norm.weight"]),
           (("vision_projector", "readout_0", "bias"), t["model.vision_projector.readout.0.bias"])]
  for path, want in pairs:
    got = params
    for k in path:
      got = got[k]
    np.testing.assert_array_equal(np.asarray(got), want)


def test_a_folder_the_release_saved_starts_a_lora_run_with_its_encoder_by_hub_id(ft, tmp_path):
  """The release's folder as published (`vision_encoder` a hub id, the encoder in the HF
  cache): a LoRA fine-tuning run starts from it, sizes from its config, image normalisation
  from its encoder's preprocessor_config.json (CLIP's), and trains."""
  hf_home = tmp_path / "hf_home"
  src = tmp_path / "Penguin-VL-tiny"
  _as_the_release_saved_it(src, hf_home)
  texts = [t["value"] for l in open(ft.root / "pos" / "train.jsonl")
           for t in json.loads(l)["conversations"]]
  _word_tokenizer(src, texts, image_id=300, size=320)
  data = tmp_path / "tfds"
  assert build.main([f"--annotations={ft.root / 'pos' / 'train.jsonl'}",
                     f"--data-folder={ft.root / 'pos'}", f"--out={data}", "--name=position",
                     f"--tokenizer={src}", "--seq-len=512"]) == 0
  env = {**ENV, "HF_HUB_CACHE": str(hf_home / "hub")}
  r = subprocess.run(train_cmd(tmp_path / "run", src, *LORA, data=data, steps=2), cwd=REPO,
                     env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "model.llm.hidden_size=48" in r.stderr and "model.encoder.hidden_size=64" in r.stderr
  assert "image normalisation from" in r.stderr and "0.48145466" in r.stderr
  assert f"initialised llm, vision_encoder, vision_projector from {src}" in r.stderr
  assert np.isfinite(metrics(tmp_path / "run")[2]["loss"])


# --------------------------------------------------------------------------- LoRA
def _adapter_count(folder, rank):
  """r (in + out) per q/k/v/o, gate/up/down projection of the LLM, from the folder's config."""
  d = json.loads((folder / "config.json").read_text())
  h, i, q = d["hidden_size"], d["intermediate_size"], d["num_attention_heads"] * d["head_dim"]
  kv = d["num_key_value_heads"] * d["head_dim"]
  per_layer = (h + q) + 2 * (h + kv) + (q + h) + 2 * (h + i) + (i + h)
  return rank * per_layer * d["num_hidden_layers"]


def test_a_lora_run_trains_its_adapters_alone_and_learns(ft):
  base = safetensors_io.load_file(str(ft.bf16 / "model.safetensors"))
  line = next(l for l in ft.lora_log.splitlines() if "trainable parameters:" in l)
  want = f"trainable parameters: {_adapter_count(ft.bf16, RANK):,} " \
         f"({sum(v.size for v in base.values()):,} frozen)"
  assert want in line, line
  loss = [m[0] for _, m in sorted(_losses(ft.lora).items())]
  assert len(loss) == 12
  assert np.mean(loss[:3]) - np.mean(loss[-3:]) > 0.3, loss
  # the checkpoint: the base stored frozen in bfloat16, the adapters in float32
  _, _, params = ckpt.read_run(str(ft.lora))
  flat = {"/".join(p): x for p, x in jax.tree_util.tree_flatten_with_path(params)[0]
          for p in [[str(getattr(k, "key", k)) for k in p]]}
  assert {str(x.dtype) for k, x in flat.items() if "lora_" not in k} == {"bfloat16"}
  assert {str(x.dtype) for k, x in flat.items() if "lora_" in k} == {"float32"}


def test_a_lora_run_resumes_exactly_from_its_checkpoint(ft, tmp_path):
  """The LoRA run's workdir cut back to its step-4 checkpoint (later checkpoints and
  metrics removed: what a run killed after step 4 leaves; kill -9 itself is
  test_faults.py's) resumes with the same losses and gradient norms, step by step."""
  wd = tmp_path / "lora"
  shutil.copytree(ft.lora, wd)
  for step in (8, 12):
    shutil.rmtree(wd / "checkpoints" / str(step))
  lines = (wd / "metrics.jsonl").read_text().splitlines(keepends=True)
  (wd / "metrics.jsonl").write_text("".join(l for l in lines if json.loads(l)["step"] <= 4))
  r = train(wd, ft.bf16, *LORA, data=ft.data)
  assert "resumed from step 4" in r.stderr, r.stderr[-2000:]
  assert _losses(wd) == _losses(ft.lora)


def test_the_merged_export_gives_transformers_our_logits_and_keeps_the_base(ft, tmp_path):
  """Merged in float32: transformers' Qwen3 on its LLM tensors gives the logits of our
  run (adapters applied on the fly) within 1e-4, where the base folder's LLM does not (the
  adapters are not a no-op). Merged in bfloat16: every tensor the adapters do not touch is
  bit-identical to the base folder's, the adapted projections are not."""
  ours = _our_logits(ft.lora)
  merged = export(ft.lora, tmp_path / "merged_f32", "--dtype=float32")
  np.testing.assert_allclose(_torch_logits(_hf_llm(merged)), ours, atol=1e-4, rtol=0)
  base = _torch_logits(_hf_llm(ft.bf16))
  assert np.abs(base - ours).max() > 1e-2
  merged = export(ft.lora, tmp_path / "merged_bf16", "--dtype=bfloat16")
  for name in ("model.safetensors", "penguin_encoder/model.safetensors"):
    a, b = (safetensors_io.load_file(str(d / name)) for d in (merged, ft.bf16))
    assert sorted(a) == sorted(b)
    adapted = {k for k in a if k.startswith("model.layers.") and k.endswith("_proj.weight")}
    for k in sorted(set(a) - adapted):
      assert a[k].dtype == b[k].dtype and np.array_equal(a[k].view(np.uint16), b[k].view(np.uint16)), k
    for k in sorted(adapted):
      assert not np.array_equal(a[k].view(np.uint16), b[k].view(np.uint16)), k
    assert len(adapted) == (14 if name == "model.safetensors" else 0)


def test_peft_loads_the_adapters_onto_the_base_and_gives_our_logits(ft, tmp_path):
  from launch import convert
  import peft
  out = tmp_path / "adapters"
  assert convert.main(["workdir-to-hf", f"--workdir={ft.lora}", f"--out={out}",
                       "--adapters_only"]) == 0
  c = json.loads((out / "adapter_config.json").read_text())
  assert (c["r"], c["lora_alpha"], c["lora_dropout"]) == (RANK, 16.0, 0.05)
  model = peft.PeftModel.from_pretrained(_hf_llm(ft.bf16), str(out)).eval()
  assert len([n for n, _ in model.named_modules() if n.endswith(".lora_A")]) == 14
  np.testing.assert_allclose(_torch_logits(model), _our_logits(ft.lora), atol=1e-4, rtol=0)


@pytest.mark.parametrize("base_dtype,stored", [("int8", np.int8), ("nf4", np.uint8)])
def test_qlora_runs_with_its_base_quantized(ft, base_dtype, stored):
  """int8 / nf4 QLoRA: the adapters are LoRA's (the same trainable count), the base is
  stored quantized, and the first loss is near LoRA's on its bfloat16 base, not equal."""
  wd = ft.root / f"qlora_{base_dtype}"
  r = train(wd, ft.bf16, *LORA, f"--config.lora.base_dtype={base_dtype}",
            data=ft.data, steps=3)
  line = next(l for l in r.stderr.splitlines() if "trainable parameters:" in l)
  assert f"trainable parameters: {_adapter_count(ft.bf16, RANK):,} " in line
  _, _, params = ckpt.read_run(str(wd))
  q = params["llm"]["layers"]["layers_0"]["self_attn"]["q_proj"]          # tiny: unscanned
  assert "kernel" not in q and q["kernel_q"].dtype == stored
  got, lora = metrics(wd)[1]["loss"], metrics(ft.lora)[1]["loss"]
  assert got != lora and abs(got - lora) / lora < 0.02, (got, lora)


# --------------------------------------------------------------------------- remote code
def test_exports_carry_the_model_code_and_load_with_the_auto_classes(ft, tmp_path):
  """The LoRA run started from a folder with model code: its export carries the code and
  `auto_map`, and AutoModelForCausalLM(trust_remote_code=True) loads it offline with the
  merged weights. A run from a folder without code takes it from --remote_code_from."""
  import transformers
  merged = export(ft.lora, tmp_path / "with_code", "--dtype=float32")
  assert json.loads((merged / "config.json").read_text())["auto_map"] == AUTO_MAP
  model = transformers.AutoModelForCausalLM.from_pretrained(str(merged), trust_remote_code=True,
                                                            local_files_only=True).eval()
  assert type(model).__name__ == "ToyPenguinForCausalLM"
  np.testing.assert_allclose(_torch_logits(model), _torch_logits(_hf_llm(merged)), atol=1e-6)
  plain = export(ft.stage3, tmp_path / "plain")
  assert "auto_map" not in json.loads((plain / "config.json").read_text())
  carried = export(ft.stage3, tmp_path / "carried", f"--remote_code_from={ft.bf16}")
  assert (carried / "modeling_toy.py").read_text() == TOY_MODEL
  transformers.AutoModelForCausalLM.from_pretrained(str(carried), trust_remote_code=True,
                                                    local_files_only=True)
