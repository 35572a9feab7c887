"""Test setup: 8 CPU devices for sharding tests, float32 matmuls, tiny HF models."""
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


def tiny_qwen3_hf(path, tied: bool = True, seed: int = 0, **kw):
  """A tiny random transformers Qwen3ForCausalLM saved with save_pretrained."""
  import torch
  import transformers
  cfg = transformers.Qwen3Config(
      vocab_size=kw.pop("vocab_size", 320), hidden_size=kw.pop("hidden_size", 64),
      intermediate_size=kw.pop("intermediate_size", 128),
      num_hidden_layers=kw.pop("num_hidden_layers", 2), num_attention_heads=4,
      num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
      tie_word_embeddings=tied, rms_norm_eps=1e-6, rope_theta=1_000_000.0, **kw)
  torch.manual_seed(seed)
  model = transformers.Qwen3ForCausalLM(cfg).eval()
  with torch.no_grad():  # random norms too, so the test sees a wrong norm
    for n, p in model.named_parameters():
      if "norm" in n:
        p.uniform_(0.5, 1.5)
  model.save_pretrained(str(path), safe_serialization=True)
  return model


@pytest.fixture(scope="session")
def qwen3_tied(tmp_path_factory):
  path = tmp_path_factory.mktemp("qwen3_tied")
  return path, tiny_qwen3_hf(path, tied=True)


@pytest.fixture(scope="session")
def qwen3_untied(tmp_path_factory):
  path = tmp_path_factory.mktemp("qwen3_untied")
  return path, tiny_qwen3_hf(path, tied=False, seed=1)


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory):
  """The reference run of test_train / test_faults: tiny stage 1a, 30 steps, in ROOT/a,
  demo corpus in ROOT/demo. -> (ROOT, metrics by step, stderr)."""
  from train_runs import metrics, run
  root = tmp_path_factory.mktemp("train")
  r = run(root / "a", root / "demo")
  assert r.returncode == 0, r.stderr[-3000:]
  return root, metrics(root / "a"), r.stderr


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
  """Two tiny stage-3 runs of 2 steps (test_export, test_generate, test_eval_cli):
  unscanned on one device; scanned on a (fsdp 4, tensor 2) mesh of 8 devices. Each
  exported in float32. -> {name: (workdir, export)}; the demo corpus is ROOT/demo."""
  from train_runs import export, short_run
  root = tmp_path_factory.mktemp("export")
  short_run(root / "plain", root / "demo", "configs/stage3.py:tiny")
  short_run(root / "mesh", root / "demo", "configs/stage3.py:tiny",
            "--config.model.scan_layers=True", "--config.mesh.data=1", "--config.mesh.fsdp=4",
            "--config.mesh.tensor=2", devices=8)
  return {name: (root / name, export(root / name, root / f"{name}_hf", "--dtype=float32"))
          for name in ("plain", "mesh")}
