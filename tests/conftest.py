"""Test setup: 8 CPU devices for sharding tests, float32 matmuls, tiny HF models; the
suite's runs share one JAX compilation cache; under pytest-xdist (pytest.ini), the tests
of one expensive session fixture run in one worker, which makes it once."""
import contextlib
import os
import subprocess
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# libtpu (the TPU-compile tests, in-process and in launch.aot subprocesses) takes a lock
# file for the machine's chips; compiling for topologies uses none, and under xdist two
# processes load it at once
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
# made in the controlling process, inherited by the xdist workers (tests/train_runs.py)
os.environ.setdefault("PENGUIN_TESTS_JAX_CACHE", tempfile.mkdtemp(prefix="penguin_tests_jax_cache_"))

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

# session fixtures that start training runs: the tests using one go to one xdist worker
ONE_WORKER = ("quick_demo", "uninterrupted")


@pytest.hookimpl(tryfirst=True)   # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items):
  for item in items:
    used = [f for f in ONE_WORKER if f in getattr(item, "fixturenames", ())]
    if used:
      item.add_marker(pytest.mark.xdist_group(used[0]))


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


@pytest.fixture
def gcs():
  """The in-memory GCS stand-in (tests/fake_gcs.py), empty: -> "gs://bucket"."""
  import fake_gcs
  fake_gcs.install()
  yield "gs://bucket"
  fake_gcs.FakeGCS.store.clear()


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
def quick_demo(tmp_path_factory):
  """`python -m launch.demo --quick` as a user runs it (test_demo.py); its stage-3 run is
  also `runs["plain"]`. -> (W, the finished process)."""
  import subprocess
  import sys
  from train_runs import ENV, REPO
  w = tmp_path_factory.mktemp("quick_demo") / "demo"
  r = subprocess.run([sys.executable, "-m", "launch.demo", f"--workdir={w}", "--quick"],
                     cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  return w, r


@pytest.fixture(scope="session")
def runs(tmp_path_factory, quick_demo):
  """Two tiny stage-3 runs (test_export, test_generate, test_eval_cli), each exported in
  float32: "plain", launch.demo --quick's stage 3 (unscanned, one device, 3 steps from its
  stage 2), and "mesh", 2 steps scanned on a (fsdp 4, tensor 2) mesh of 8 devices on the
  same demo corpus. -> {name: (workdir, export), "data": the demo corpus's folder (raw/,
  spm.model)}."""
  from train_runs import export, short_run
  root = tmp_path_factory.mktemp("export")
  w, _ = quick_demo
  data = w / "data"
  short_run(root / "mesh", data, "configs/stage3.py:tiny",
            "--config.model.scan_layers=True", "--config.mesh.data=1", "--config.mesh.fsdp=4",
            "--config.mesh.tensor=2", devices=8)
  out = {name: (wd, export(wd, root / f"{name}_hf", "--dtype=float32"))
         for name, wd in (("plain", w / "stage3"), ("mesh", root / "mesh"))}
  return {**out, "data": data}


@contextlib.contextmanager
def read_only(path):
  """`path` (a folder, its files kept) made read-only for the code under test: a read-only
  bind mount onto itself as root (to whom permission bits mean nothing; without mount, the
  immutable attribute), else chmod."""
  path = str(path)
  os.makedirs(path, exist_ok=True)
  if os.geteuid() != 0:
    os.chmod(path, 0o555)
    try:
      yield
    finally:
      os.chmod(path, 0o755)
    return
  for args in (["--bind", path, path], ["-o", "remount,bind,ro", path]):
    r = subprocess.run(["mount", *args], capture_output=True, text=True)
    if r.returncode:
      subprocess.run(["umount", path], capture_output=True)
      break
  else:
    try:
      yield
    finally:
      subprocess.run(["umount", path], check=True)
    return
  # no mount (a container without CAP_SYS_ADMIN): the immutable attribute, which also
  # stops root from adding or removing entries in the folder
  c = subprocess.run(["chattr", "+i", path], capture_output=True, text=True)
  if c.returncode:
    pytest.fail(f"as root, cannot make {path} read-only: `mount {' '.join(args)}`: "
                f"{r.stderr.strip()}; `chattr +i`: {c.stderr.strip()} (run the suite as a "
                "user other than root, or with CAP_SYS_ADMIN or CAP_LINUX_IMMUTABLE)")
  try:
    yield
  finally:
    subprocess.run(["chattr", "-i", path], check=True)
