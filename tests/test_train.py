"""`python -m launch.train`: the tiny stage-1 run learns from its teacher (imported from an
HF folder, frozen, saved with the run), `--help` (the four stages chain in test_demo.py). Faults (kill -9,
SIGTERM, bad data, bad checkpoints, full disks) are in test_faults.py."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import penguin_jax
from penguin_jax.teacher import ViTTeacher
from conftest import read_only
from train_runs import ENV, REPO


@pytest.mark.slow
def test_tiny_stage1_runs_logs_and_learns(uninterrupted):
  root, m, out = uninterrupted
  assert sorted(m) == list(range(1, 31))
  for k in ("loss", "lm_loss", "amplitude", "direction", "relation", "grad_norm",
            "tokens_per_s", "visual_tokens_per_s", "lr", "goodput", "data_skipped"):
    assert k in m[30], k
  assert 0 < m[30]["goodput"] < 1 and set(m[30]["lr"]) == {
      "vision_encoder", "vision_projector", "vision_distill_layer"}   # named by module
  assert "step 30/30 loss=" in out and "done at step 30 (checkpoint on disk)" in out
  assert "train step compiled in" in out and "checkpoint step 10 saved (" in out
  assert sorted(os.listdir(root / "a" / "checkpoints")) == ["10", "20", "30"]
  events = os.listdir(root / "a" / "tensorboard")
  assert any(e.startswith("events.out.tfevents") for e in events)


@pytest.mark.slow
def test_stage1_distils_from_the_imported_teacher_which_stays_frozen(uninterrupted):
  """The tiny config's teacher is written as an HF folder (save_pretrained) and imported
  like the real VL3-SigLIP-NaViT; every reconstruction part falls; the teacher saved with
  the last checkpoint is bit-identical to the folder it was loaded from."""
  root, m, out = uninterrupted
  folder = root / "a" / "random_teacher"
  assert json.load(open(folder / "config.json"))["model_type"] == "video_llama_3_vision"
  assert f"teacher VL3-SigLIP-NaViT from {folder}" in out
  mean = lambda k, steps: sum(m[s][k] for s in steps) / len(steps)   # batches differ
  for k in ("loss", "amplitude", "direction", "relation"):
    assert mean(k, range(26, 31)) < 0.8 * mean(k, range(1, 6)), k
  model, before = penguin_jax.from_pretrained(str(folder))
  assert isinstance(model, ViTTeacher)
  after = ocp.StandardCheckpointer().restore(root / "a" / "checkpoints" / "30" / "teacher")
  flat = lambda t: {jax.tree_util.keystr(p): np.asarray(x)
                    for p, x in jax.tree_util.tree_flatten_with_path(t)[0]}
  a, b = flat(before), flat(after)
  assert sorted(a) == sorted(b) and len(a) > 4
  for k in a:
    assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


def test_help_exits_0_and_lists_stages_variants_and_config_fields():
  r = subprocess.run([sys.executable, "-m", "launch.train", "--help"], cwd=REPO, env=ENV,
                     capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr[-2000:]
  assert ("STAGE in stage0, stage1, stage1_hres, stage2, stage3; VARIANT in tiny, 2b, 8b "
          "(no VARIANT: 2b; stage0, the demo's text-only LLM: tiny only)") in r.stdout
  for line in ("--config.init.teacher='random'", "--workdir",
               # a field declared in a settings dataclass comes with its help
               "--config.data.seq_len=512    # tokens per row, visual tokens included",
               "--config.loss.relation_scope='image'    # relation loss pairs"):
    assert line in r.stdout, line


def _one_line_error(*args, workdir="W"):
  r = subprocess.run([sys.executable, "-m", "launch.train", f"--workdir={workdir}", *args],
                     cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
  errors = [l for l in r.stderr.splitlines() if "error:" in l]
  assert r.returncode == 2 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
  return errors[0]


def test_no_variant_is_the_paper_2b_and_a_laptop_gets_one_line_naming_tiny(tmp_path):
  """`configs/stage1.py` alone is 2b; with no data, teacher or LLM it stops before
  anything is made, naming what is missing and the command for a laptop."""
  err = _one_line_error("--config=configs/stage1.py", workdir=tmp_path / "w")
  assert "stage1:2b needs training data" in err and "the teacher" in err and "the LLM" in err
  assert "python -m launch.train --config=configs/stage1.py:tiny --workdir=W" in err
  assert "python -m data_pipelines.tfds_build" in err and "hf download" in err
  assert not (tmp_path / "w").exists()


def test_a_workdir_that_cannot_be_a_folder_is_one_line(tmp_path):
  (tmp_path / "file").write_text("x")
  err = _one_line_error("--config=configs/stage1.py:tiny", workdir=tmp_path / "file")
  assert f"--workdir={tmp_path / 'file'} is a file; give a folder" in err
  err = _one_line_error("--config=configs/stage1.py:tiny", workdir=tmp_path / "file" / "run")
  assert "cannot make the folder" in err
  with read_only(tmp_path / "ro"):
    err = _one_line_error("--config=configs/stage1.py:tiny", workdir=tmp_path / "ro")
  assert f"--workdir={tmp_path / 'ro'}: the folder is not writable (" in err
  # a writable workdir whose checkpoint folder is read-only: refused before any work
  ckpts = tmp_path / "w" / "checkpoints"
  with read_only(ckpts):
    err = _one_line_error("--config=configs/stage1.py:tiny", workdir=tmp_path / "w")
  assert f"the checkpoint folder {ckpts}: the folder is not writable (" in err
  assert not (tmp_path / "w" / "metrics.jsonl").exists()


def test_a_mesh_that_does_not_fit_says_how_to_get_the_devices(tmp_path):
  err = _one_line_error("--config=configs/stage1.py:tiny", "--config.mesh.fsdp=4",
                        "--config.mesh.data=1", workdir=tmp_path / "w")
  assert "needs 4 devices, 1 are visible" in err and "--local_device_count=N" in err


@pytest.mark.slow
def test_optimizer_state_in_host_memory_trains_and_resumes_identically(uninterrupted, tmp_path):
  """optim.offload_opt_state: the reference run's step-20 checkpoint (its Adam state saved
  from device memory) resumes with Adam's moments in pinned host memory; steps 21..30 give
  losses equal (==) to the reference run's, and the state it saves is in host memory."""
  import shutil
  from train_runs import metrics, run
  root, ref, _ = uninterrupted
  wd = tmp_path / "off"
  shutil.copytree(root / "a", wd)
  shutil.rmtree(wd / "checkpoints" / "30")    # back to step 20: the rest runs again
  r = run(wd, root / "demo", "--config.optim.offload_opt_state=True")
  assert r.returncode == 0 and "resumed from step 20" in r.stderr, r.stderr[-3000:]
  again = metrics(wd)
  for s in range(21, 31):
    assert again[s]["loss"] == ref[s]["loss"], s
  from configs import stage1
  from penguin_jax.sharding import make_mesh
  from penguin_jax.train import program
  cfg = stage1.get_config("tiny")
  cfg.optim.offload_opt_state = True
  p = program.build(cfg, make_mesh(devices=jax.devices()[:1]))     # as the run's one device
  kinds = {x.sharding.memory_kind for x in jax.tree.leaves(p.abstract_state.opt_state)}
  assert kinds == {"pinned_host"}
  restored = ocp.CheckpointManager(wd / "checkpoints").restore(
      30, args=ocp.args.Composite(state=ocp.args.StandardRestore(p.abstract_state)))
  assert {x.sharding.memory_kind for x in jax.tree.leaves(restored.state.opt_state)} == kinds
