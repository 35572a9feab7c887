"""Remat policies (layers.REMAT_POLICIES) and their choice (`model.remat_policy=auto`):
the FLOPs each policy recomputes, counted in the layer's gradient, against the fractions
derived by hand from the layer's weight shapes; the search's rules on made-up
measurements; `auto` end to end in launch.aot (cpu:8) and launch.train (CPU)."""
import json
import os
import subprocess
import sys

import pytest

from penguin_jax.model_config import TransformerConfig
from penguin_jax.train import flops, remat

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}

# One layer: hidden 64, 4 query heads and 2 key/value heads of 16, MLP 192. Matmul FLOPs per
# token are 2 x the weights: q 64x64, k and v 64x32 each, o 64x64, gate, up, down 64x192.
SIZES = dict(hidden_size=64, intermediate_size=192, num_heads=4, num_kv_heads=2, head_dim=16)
Q, K, V, O, GATE, UP, DOWN = 4096, 2048, 2048, 4096, 12288, 12288, 12288
ALL = Q + K + V + O + GATE + UP + DOWN

# What the backward pass computes again under each policy, by hand: a matmul is recomputed
# when the output the backward needs is neither saved nor computable from what is saved.
# down_proj's output feeds nothing inside the layer (the residual add needs no value): never.
# Attention's two batched dots (scores, then probabilities x values): saving the context
# (attention's output) spares the second; the scores are needed again for the softmax's
# gradient unless every dot is saved ("dots").
EXPECTED = {
    "none": (0, 0),
    "full": ((Q + K + V + O + GATE + UP) / ALL, 1.0),
    "offload": ((Q + K + V + O + GATE + UP) / ALL, 1.0),
    "save_qkv": ((O + GATE + UP) / ALL, 1.0),
    "save_attention": ((GATE + UP) / ALL, 0.5),
    "offload_attention": ((GATE + UP) / ALL, 0.5),
    "minimal": (0.0, 0.5),
    "offload_minimal": (0.0, 0.5),
    "dots": (0.0, 0.0),
    "dots_no_batch": (0.0, 1.0),      # attention's dots have a batch dimension
}


@pytest.mark.parametrize("policy", sorted(EXPECTED))
def test_recomputed_fractions_equal_the_hand_derived_ones(policy):
  tower = TransformerConfig(**SIZES, num_layers=2, remat_policy=policy)
  got = flops.recompute_fractions(tower, causal=True, attention="xla")
  assert got == pytest.approx(EXPECTED[policy], abs=1e-9), (policy, got)


def test_every_policy_is_counted_and_a_fused_kernel_recomputes_its_attention():
  assert set(EXPECTED) == set(remat.POLICIES)
  for policy, want in (("minimal", 1.0), ("dots", 1.0), ("none", 0.0)):
    tower = TransformerConfig(**SIZES, num_layers=2, remat_policy=policy)
    assert flops.recompute_fractions(tower, attention="splash")[1] == want


def _trials(*rows):
  return [remat.Trial(p, r, compute_s=c) for p, r, c in rows]


def test_search_takes_the_shortest_step_that_fits_with_headroom():
  """Cheapest first; one that does not fit, one above 90% of memory, then an offloading
  policy slower (host transfers) than the next recomputing one; the rest bounded out."""
  measured = {
      "none": {"fits": False, "oom": "needs 30G"},
      "minimal": {"fits": True, "fraction": 0.95, "step_s": 10.0, "mfu": 0.9},
      "offload_minimal": {"fits": True, "fraction": 0.5, "step_s": 14.0, "mfu": 0.64,
                          "communication_s": 1.0},
      "save_attention": {"fits": True, "fraction": 0.7, "step_s": 12.0, "mfu": 0.75,
                         "communication_s": 1.0},
  }
  trials = _trials(("none", 0, 9.0), ("minimal", 1, 9.0), ("offload_minimal", 1, 9.0),
                   ("save_attention", 2, 11.0), ("save_qkv", 3, 11.5), ("full", 4, 12.0))
  calls = []
  best, out = remat.search(trials, lambda p: calls.append(p) or measured[p])
  assert best.policy == "save_attention"
  assert calls == ["none", "minimal", "offload_minimal", "save_attention"]
  notes = {t.policy: t.note for t in out}
  assert notes["none"] == "does not fit (needs 30G)"
  assert "above 90%" in notes["minimal"]
  assert "not compiled" in notes["save_qkv"] and "not compiled" in notes["full"]
  # 11.5 + 1.0 >= 12.0 bounds save_qkv out; with a faster best it would have been tried
  assert not any(t.measured for t in out if t.policy in ("save_qkv", "full"))


def test_search_without_a_prediction_takes_the_first_that_fits():
  best, out = remat.search(_trials(("none", 0, None), ("dots", 0, None), ("full", 5, None)),
                           lambda p: {"fits": p != "none", "fraction": 0.5, "step_s": None})
  assert best.policy == "dots" and [t.measured for t in out] == [True, True, False]


def test_nothing_fits():
  best, out = remat.search(_trials(("none", 0, 1.0), ("full", 5, 2.0)),
                           lambda p: {"fits": False})
  assert best is None and all(t.note.startswith("does not fit") for t in out)


@pytest.mark.slow
def test_aot_auto_on_cpu8_reports_the_search(tmp_path):
  """cpu:8 has no memory limit and no chip figures: "none" (no recompute) fits and is
  taken, the others are not compiled; the report says so, and the cache is written."""
  out, cache = tmp_path / "r.json", tmp_path / "cache.jsonl"
  r = subprocess.run([sys.executable, "-m", "launch.aot", "--config=configs/stage3.py:tiny",
                      "--topology=cpu:8", "--config.data.global_batch=8",
                      "--config.model.remat_policy=auto", f"--cache={cache}", f"--json={out}"],
                     cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  rep = json.loads(out.read_text())
  assert rep["remat"] == "none" and rep["remat_requested"] == "auto"
  rows = {t["policy"]: t for t in rep["remat_search"]}
  assert set(rows) == set(remat.POLICIES) and rows["none"]["measured"]
  assert not any(t["measured"] for p, t in rows.items() if p != "none")
  assert rows["full"]["recompute_flops"] > rows["save_attention"]["recompute_flops"] > 0
  assert "remat_policy auto chose none" in r.stdout
  assert len(cache.read_text().splitlines()) == 1
  sweep = subprocess.run([sys.executable, "-m", "launch.aot", "--sweep", "--search=remat",
                          "--stages=stage3", "--variants=tiny", "--topologies=cpu:8",
                          "--vary=data.global_batch=8", f"--out={tmp_path}",
                          f"--cache={cache}"],
                         cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
  assert sweep.returncode == 0, sweep.stderr[-3000:]   # the candidate came from the cache
  assert "model.remat_policy=auto: fits" in sweep.stdout
  assert "| stage3:tiny | cpu:8 | 8x1x1 | 1 | none |" in (tmp_path / "sweep.md").read_text()
  assert len(cache.read_text().splitlines()) == 2      # + the sweep's point, not recompiled


def test_the_trainer_resolves_auto_on_its_devices():
  """loop.run's call: on CPU devices (no memory limit) "auto" is the cheapest, "none"; a
  policy given by name is kept."""
  from configs import stage3
  from penguin_jax.train import program, runtime
  cfg = stage3.get_config("tiny")
  cfg.model.remat_policy, cfg.data.global_batch = "auto", 8     # one row per CPU device
  mesh, lines = runtime.mesh(cfg), []
  got = remat.resolve(cfg, mesh, lambda c: program.build(c, mesh), lines.append)
  assert got.model.remat_policy == "none" and cfg.model.remat_policy == "auto"
  assert lines == ["remat_policy auto: none (no memory limit on cpu)"]
  cfg.model.remat_policy = "save_qkv"
  assert remat.resolve(cfg, mesh, None) is cfg
