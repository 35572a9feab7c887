"""A remote WORKDIR (penguin_jax/train/workdir.py): metrics.jsonl, TensorBoard events and
the run lock through etils.epath on gs://, against an in-memory stand-in for GCS
(tests/fake_gcs.py); and the same on a local path. Checkpoints on gs:// are orbax's own
(TensorStore's GCS driver): not exercised offline."""
import json
import os

import pytest
from etils import epath

from configs import stage1
from penguin_jax.sharding import make_mesh
from penguin_jax.train import program as program_lib, workdir as workdir_lib
from penguin_jax.train.metrics import MetricsWriter


def _metrics(**kw):
  m = {"loss": 2.0, "grad_norm": 1.0, "lm_loss": 2.0, "skipped": 0, "skipped_total": 0,
       "nonfinite_in_a_row": 0, "dropped_label_tokens": 0, "label_tokens": 10}
  return {**m, **kw}


@pytest.mark.parametrize("where", ["gs", "local"])
def test_metrics_and_tensorboard_go_to_the_workdir(gcs, tmp_path, where):
  cfg = stage1.get_config("tiny")
  cfg.data.global_batch = 8
  program = program_lib.build(cfg, make_mesh())
  root = f"{gcs}/run" if where == "gs" else str(tmp_path / "run")
  workdir_lib.make(root)
  kw = dict(process_index=0, process_count=1, device_count=1, device_kind="cpu", t_start=0.0)
  w = MetricsWriter(root, program, **kw)
  w.write(1, _metrics(loss=3.0), {"vision_encoder": 1e-3})
  w.write(2, _metrics(loss=2.5), {"vision_encoder": 1e-3})
  w.close()
  again = MetricsWriter(root, program, **kw)         # a resumed run keeps the lines
  again.write(3, _metrics(loss=2.0), {"vision_encoder": 1e-3})
  again.close()
  lines = (epath.Path(root) / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(l)["loss"] for l in lines] == [3.0, 2.5, 2.0]
  events = [p.name for p in (epath.Path(root) / "tensorboard").iterdir()]
  assert any(e.startswith("events.out.tfevents") for e in events)


def test_the_run_lock_works_on_gcs(gcs):
  run = f"{gcs}/run"
  workdir_lib.make(run)
  workdir_lib.lock(run)
  lock = epath.Path(run) / "run.lock"
  assert lock.read_text().split()[1] == str(os.getpid())
  with pytest.raises(ValueError, match=f"is in use by another run \\(pid {os.getpid()}"):
    workdir_lib.lock(run)
  lock.write_text(f"{lock.read_text().split()[0]} 999999999")   # a run that is gone
  workdir_lib.lock(run)
  assert lock.read_text().split()[1] == str(os.getpid())
