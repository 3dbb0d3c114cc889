"""experiments.structured: the speed-up of a shrunk run is timed once."""

import json

from experiments import config as config_lib
from experiments import structured


def _write_summary(root, config, accuracy):
  workdir = root / config.name
  workdir.mkdir(exist_ok=True)
  (workdir / "summary.json").write_text(json.dumps({
      "config": config_lib.to_dict(config), "final_test_accuracy": accuracy,
      "params": 1000, "wall_time_s": 1.0}))


def test_speedup_is_timed_once_and_reused_until_a_run_changes(
    tmp_path, monkeypatch):
  dense, small = structured.cells(["lenet300100"], [0])[:2]
  assert (dense.method, small.method) == ("dense", "snap_it")
  _write_summary(tmp_path, dense, 0.98)
  _write_summary(tmp_path, small, 0.97)
  timed = []

  def fake_speedup(dense_run, small_run, images):
    timed.append((dense_run[1], small_run[1]))
    return {"dense_median_s": 2.0, "small_median_s": 0.5, "speedup": 4.0}

  monkeypatch.setattr(structured.train, "load_checkpoint",
                      lambda config, workdir: f"state of {workdir.name}")
  monkeypatch.setattr(structured, "inference_speedup", fake_speedup)

  def record(retime=False):
    return structured._record(small, tmp_path, dense, None, retime)

  first = record()
  assert timed == [(f"state of {dense.name}", f"state of {small.name}")]
  assert first["speedup"] == 4.0 and first["accuracy"] == 0.97
  assert record() == first and len(timed) == 1  # reused
  record(retime=True)
  assert len(timed) == 2
  _write_summary(tmp_path, dense, 0.99)  # the dense run trained again
  record()
  assert len(timed) == 3
  assert record()["timed_at"] and len(timed) == 3
