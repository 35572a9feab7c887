"""`python -m launch.aot`: the training step compiled ahead of time for 8 CPU devices and
for a TPU topology (libtpu's compiler, installed by the test extra; no TPU), the same
program as `launch.train`'s, collectives counted with loop trip counts, and a cached sweep."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
TINY_8 = ["--config.data.global_batch=8"]     # one row per CPU device


def _aot(*args, timeout=600):
  return subprocess.run([sys.executable, "-m", "launch.aot", *args], cwd=REPO, env=ENV,
                        capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_cpu8_report(tmp_path):
  out = tmp_path / "r.json"
  r = _aot("--config=configs/stage1.py:tiny", "--topology=cpu:8", f"--json={out}", *TINY_8)
  assert r.returncode == 0, r.stderr[-3000:]
  rep = json.loads(out.read_text())
  assert rep["chips"] == 8 and rep["mesh"] == {"data": 8, "fsdp": 1, "tensor": 1}
  assert rep["fits"] and rep["memory"]["peak"] > rep["memory"]["params"] > 0
  assert rep["flops"]["model"] > 0 and rep["flops"]["teacher"]["matmul"] > 0
  kinds = rep["collectives"]["by_kind"]
  assert "all-reduce" in kinds                   # data parallel: gradients are all-reduced
  for line in ("memory per chip:", "model FLOPs per step", "collectives per chip per step"):
    assert line in r.stdout


@pytest.mark.slow
@pytest.mark.libtpu
def test_v5e4_compile_fits_above_the_analytic_lower_bound(tmp_path):
  """libtpu compiles the tiny stage-3 step for v5e-4 with the real splash kernel; the
  compiler's peak is at least what the state alone must take per chip."""
  from configs import stage3
  from penguin_jax import registry
  from penguin_jax.train import program
  out = tmp_path / "r.json"
  r = _aot("--config=configs/stage3.py:tiny", "--topology=v5e-4", f"--json={out}")
  assert r.returncode == 0, r.stderr[-3000:]
  rep = json.loads(out.read_text())
  assert rep["fits"] and rep["device_kind"] == "TPU v5 lite" and rep["chips"] == 4
  vcfg, _ = program.model_config(stage3.get_config("tiny"))
  from penguin_jax.vlm import PenguinVL
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(registry.abstract_params(PenguinVL(vcfg))))
  lower_bound = n * 4 * 3 / 4                    # f32 params + Adam mu, nu, over 4 chips
  m = rep["memory"]
  assert m["peak"] >= lower_bound and m["params"] + m["opt_state"] >= lower_bound
  assert m["peak"] <= m["usable"] == pytest.approx(15.75 * 2**30)
  assert rep["prediction"]["step_s"] > 0 and 0 < rep["prediction"]["mfu"] <= 1
  assert "fits: yes" in r.stdout


@pytest.mark.slow
@pytest.mark.libtpu
def test_teacher_is_gathered_once_per_step_not_per_micro_batch(tmp_path):
  """Stage 1a for v5e-4 (libtpu), teacher split over fsdp 4: its all-gathers per step are
  the same with 1 micro-batch as with 3 (gathered once, kept whole for the loop; XLA:TPU
  otherwise gathers it again in every micro-batch)."""
  got = {}
  for batch in (4, 12):      # one row per chip: 1 or 3 micro-batches
    out = tmp_path / f"r{batch}.json"
    r = _aot("--config=configs/stage1.py:tiny", "--topology=v5e-4", f"--json={out}",
             f"--config.data.global_batch={batch}", "--config.data.rows_per_chip=1",
             "--config.mesh.data=1", "--config.mesh.fsdp=4")
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads(out.read_text())
    assert rep["grad_accum"] == batch // 4
    got[batch] = sum(x["bytes"] for x in rep["collectives"]["rows"]
                     if x["where"] == "teacher" and x["kind"] == "all-gather")
  assert got[4] > 0 and got[12] == got[4], got


def test_train_and_aot_lower_the_same_program():
  """What launch.train jits is what launch.aot compiles (cpu:8, same lowered text)."""
  from configs import stage1
  from penguin_jax.train import aot_analysis as aot, hardware, program, runtime
  cfg = stage1.get_config("tiny")
  cfg.data.global_batch = 8
  a = program.build(cfg, runtime.mesh(cfg)).lower().as_text()      # as loop.run builds it
  b = aot.make_program(cfg, hardware.parse_slice("cpu:8")).lower().as_text()
  assert a == b and "manual_computation" in a    # the per-device loss is in it


@pytest.mark.libtpu
def test_auto_attention_lowers_the_tpu_kernel_for_tpu_devices():
  """With compile-only TPU devices in the mesh, "auto" picks splash and lowers the Mosaic
  kernel (not the interpreter), though this host is a CPU; on CPU devices, xla."""
  from flax import linen as nn
  from penguin_jax.layers import attention, resolve_attention
  from penguin_jax.sharding import LOGICAL_RULES, make_mesh
  from penguin_jax.train import hardware
  q = jax.ShapeDtypeStruct((4, 256, 4, 128), jnp.bfloat16)
  seg = jax.ShapeDtypeStruct((4, 256), jnp.int32)
  f = lambda q_, s_: attention(q_, q_[:, :, :2], q_[:, :, :2], q_segment_ids=s_,
                               kv_segment_ids=s_, causal=False, implementation="auto")
  for spec, want in (("v5e-4", "splash"), ("cpu:4", "xla")):
    mesh = make_mesh(devices=hardware.compile_devices(hardware.parse_slice(spec)))
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
      assert resolve_attention("auto") == want
      text = jax.jit(f).lower(q, seg).as_text()
    assert ("tpu_custom_call" in text) == (want == "splash"), spec


def test_collectives_count_loop_trip_counts():
  """A psum inside a 7-step scan, under shard_map over 8 CPU devices: 7 per run."""
  from jax.sharding import PartitionSpec as PS
  from penguin_jax.sharding import make_mesh
  from penguin_jax.train import hlo
  mesh = make_mesh()

  def body(c, x):
    return c + jax.lax.psum(x, "data"), None

  f = jax.jit(jax.shard_map(lambda xs: jax.lax.scan(body, jnp.zeros((3, 128)), xs)[0],
                            mesh=mesh, in_specs=PS(None, "data"), out_specs=PS()))
  text = f.lower(jnp.ones((7, 24, 128))).compile().as_text()
  rows = [r for r in hlo.collectives(text)["rows"] if r["kind"] == "all-reduce"]
  assert sum(r["count"] for r in rows) == 7
  assert sum(r["bytes"] for r in rows) == 7 * 3 * 128 * 4


@pytest.mark.slow
def test_sweep_writes_table_and_plot_and_never_recompiles(tmp_path):
  args = ["--sweep", "--stages=stage3", "--variants=tiny", "--topologies=cpu:8",
          "--vary=data.global_batch=8,16", f"--out={tmp_path}"]
  r = _aot(*args)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "[1/2] stage3:tiny cpu:8 data.global_batch=8: fits" in r.stdout
  for f in ("sweep.csv", "sweep.md", "sweep.png", "cache.jsonl"):
    assert (tmp_path / f).stat().st_size > 0, f
  table = (tmp_path / "sweep.md").read_text()
  assert table.count("| stage3:tiny | cpu:8 |") == 2
  again = _aot(*args)
  assert again.returncode == 0 and again.stdout.count("(cached)") == 2
  search = _aot("--sweep", "--search=batch", "--stages=stage3", "--variants=tiny",
                "--topologies=cpu:8", "--vary=data.global_batch=8", f"--out={tmp_path}")
  assert search.returncode == 0, search.stderr[-3000:]
  assert "rows_per_chip=1: fits" in search.stdout  # 2 rows per chip would not divide 8


def test_usage_errors_are_one_line():
  r = _aot("--config=configs/stage3.py:tiny", "--topology=v9-3")
  assert r.returncode == 2 and "unknown topology 'v9-3'" in r.stderr
  assert "Traceback" not in r.stderr


def test_missing_or_mismatched_libtpu_says_what_to_install(monkeypatch):
  from importlib import metadata
  from penguin_jax.train import hardware
  real = metadata.version
  jax_version = real("jax")

  def fake(name, have=None):
    if name == "libtpu":
      if have is None:
        raise metadata.PackageNotFoundError(name)
      return have
    return real(name)
  monkeypatch.setattr(metadata, "version", fake)
  assert f'pip install "jax[tpu]=={jax_version}"' in hardware.libtpu_problem()
  monkeypatch.setattr(metadata, "version", lambda n: fake(n, "0.0.1"))
  assert "libtpu 0.0.1 does not match jax" in hardware.libtpu_problem()
  monkeypatch.setattr(metadata, "version", real)
  assert hardware.libtpu_problem() is None         # the test extra installed the right one


def test_a_family_lists_the_slices_that_can_divide_the_batch():
  from penguin_jax.train import aot_sweep
  assert aot_sweep.family_slices("v5e", 128) == [
      "v5e-1", "v5e-4", "v5e-8", "v5e-16", "v5e-32", "v5e-64", "v5e-128"]
  assert aot_sweep.family_slices("v5p", 16) == ["v5p-8", "v5p-16", "v5p-32"]   # cores
  with pytest.raises(ValueError, match="chip families"):
    aot_sweep.family_slices("v5e-16", 128)


def test_search_slice_bisects_to_the_smallest_slice_that_fits_with_headroom(tmp_path):
  """The bisection over v5e-1 ... v5e-128 (global batch 128), against made-up compiles:
  a slice fits from 32 chips on, 16 chips fits but above 90% of HBM."""
  from penguin_jax.train import aot_sweep
  s = aot_sweep.Sweep(str(tmp_path), log=lambda *_: None)
  tried = []

  def compile_point(stage, variant, topo, ov):
    tried.append(topo)
    chips = int(topo.split("-")[1])
    rep = {"fits": chips >= 16, "topology": topo, "compile_s": 1.0,
           "memory": {"fraction": 0.95 if chips == 16 else 0.5, "usable": 1.0, "peak": 1.0}}
    return rep, False
  s.compile_point = compile_point
  best = s.search_slice("stage3", "2b", "v5e", {}, "label")
  assert best["topology"] == "v5e-32" and tried == ["v5e-16", "v5e-64", "v5e-32"]


@pytest.mark.libtpu
def test_a_one_chip_slice_has_its_compile_only_device():
  """v5e-1 is one chip on its own host (libtpu refused the 2x2 host bounds of bigger
  slices for it, so a slice search could not compile its smallest point)."""
  from penguin_jax.train import hardware
  for spec, n in (("v5e-1", 1), ("v5e-4", 4)):
    devices = hardware.compile_devices(hardware.parse_slice(spec))
    assert len(devices) == n and devices[0].device_kind == "TPU v5 lite", spec


def test_slice_settings_apply_to_their_slice_only_and_yield_to_the_command_line():
  """configs/common.py SLICE_SETTINGS: 8b stage 3 on v5e-16 takes optimizer-state offload
  and tensor 2 (what fits it, docs/scale.md), nothing on v5e-64 or for stage 1; a field
  the command line set stays; the running slice is named from the devices."""
  import types
  from configs import common, stage1, stage3
  from penguin_jax.train import hardware
  c = stage3.get_config("8b")
  assert common.for_slice(c, "v5e-16") == {"optim.offload_opt_state": True, "mesh.tensor": 2}
  assert c.optim.offload_opt_state is True and c.mesh.tensor == 2 and c.mesh.fsdp == -1
  c = stage3.get_config("8b")
  assert common.for_slice(c, "v5e-16", explicit={"mesh.tensor"}) == {
      "optim.offload_opt_state": True}
  assert c.mesh.tensor == 1
  for cfg, sl in ((stage3.get_config("8b"), "v5e-64"), (stage3.get_config("2b"), "v5e-16"),
                  (stage1.get_config("8b"), "v5e-16")):
    before = cfg.to_dict()
    assert common.for_slice(cfg, sl) == {} and cfg.to_dict() == before
  assert hardware.slice_name(hardware.parse_slice("v5e:4x4")) == "v5e-16"
  assert hardware.slice_name(hardware.parse_slice("v5p-8")) == "v5p-8"
  dev = lambda kind: types.SimpleNamespace(device_kind=kind)
  assert hardware.running_slice_name([dev("TPU v5 lite")] * 16) == "v5e-16"
  assert hardware.running_slice_name([dev("TPU v5p")] * 4) == "v5p-8"
  assert hardware.running_slice_name([dev("cpu")] * 8) is None
