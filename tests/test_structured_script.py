"""experiments.structured: the speed-up of a shrunk run is timed once, the
seed table, and runs kept across collections."""

import json
import types

import numpy as np
import pytest

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

  monkeypatch.setattr(structured.checkpoints, "load_checkpoint",
                      lambda config, workdir: f"state of {workdir.name}")
  monkeypatch.setattr(structured, "inference_speedup", fake_speedup)

  def record(retime=False):
    return structured.run_record(small, tmp_path, dense, None, retime)

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


def test_seed_table_averages_each_model_and_sparsity_over_seeds():
  def run(method, sparsity, seed, accuracy, params, speedup=None):
    record = {"model": "conv6", "method": method, "node_sparsity": sparsity,
              "seed": seed, "accuracy": accuracy, "params": params,
              "widths": None}
    if speedup:
      record.update(speedup=speedup, dense_median_s=1.0,
                    small_median_s=1.0 / speedup)
    return record

  records = [run("dense", 0.5, 0, 0.91, 100), run("dense", 0.5, 1, 0.93, 100),
             run("snap_it", 0.75, 0, 0.80, 30, 6.0),
             run("snap_it", 0.75, 1, 0.86, 34, 7.0),
             run("snap_it", 0.75, 2, 0.83, 35, 2.0),
             run("snap_it", 0.5, 0, 0.90, 50, 2.5)]
  rows = structured.seed_table(records).splitlines()[2:]
  acc = 100 * np.array([0.80, 0.86, 0.83])
  assert rows == [
      "| conv6 | dense | 2 | 92.00 ± 1.00 | 100 | 1 |",
      "| conv6 | 50% | 1 | 90.00 ± 0.00 | 50 | 2.50x (2.50-2.50) |",
      f"| conv6 | 75% | 3 | {acc.mean():.2f} ± {acc.std():.2f} | 33 | "
      "6.00x (2.00-7.00) |",
  ]
  assert "| conv6 | 75% | 1 | 86.00 | 34 |" in structured.table(records)


def test_keep_earlier_keeps_runs_whose_directories_are_gone(tmp_path,
                                                            monkeypatch):
  root, out = tmp_path / "runs", tmp_path / "out"
  root.mkdir()

  def run(method, sparsity, seed, accuracy):
    return {"model": "lenet300100", "dataset": "mnist", "method": method,
            "node_sparsity": sparsity, "seed": seed, "accuracy": accuracy,
            "params": 1000, "widths": None, "wall_time_s": 1.0}

  # Collected in an earlier checkout: seed 0, and a seed-1 dense run that
  # the collection below redoes.
  structured.write_results([run("dense", 0.0, 0, 0.98),
                            run("snap_it", 0.5, 0, 0.97),
                            run("dense", 0.0, 1, 0.10)], out, "first")
  for config in structured.cells(["lenet300100"], [1]):
    _write_summary(root, config, 0.9)
  monkeypatch.setattr(structured.data, "load", lambda *a, **k: types.SimpleNamespace(
      images=np.zeros((1, 28, 28, 1), np.float32), name="mnist"))
  monkeypatch.setattr(structured.checkpoints, "load_checkpoint", lambda c, w: None)
  monkeypatch.setattr(structured, "inference_speedup", lambda *a: {
      "dense_median_s": 2.0, "small_median_s": 1.0, "speedup": 2.0})
  args = ["--seeds", "1", "--models", "lenet300100", "--root", str(root),
          "--out", str(out), "--only-collect"]

  structured.main(args + ["--keep-earlier"])
  written = json.loads((out / "results.json").read_text())
  assert sorted((r["seed"], r["node_sparsity"], r["accuracy"])
                for r in written["runs"]) == [
      (0, 0.0, 0.98), (0, 0.5, 0.97),
      (1, 0.0, 0.9), (1, 0.5, 0.9), (1, 0.75, 0.9), (1, 0.9, 0.9)]
  assert written["earlier_commands"] == ["first"]
  assert "Produced by `first`, then `python -m" in (out / "table.md").read_text()

  # Nothing to collect: the results stay as they were.
  before = (out / "results.json").read_text()
  with pytest.raises(SystemExit, match="no finished runs"):
    structured.main(args[:4] + ["--root", str(tmp_path / "empty"),
                                "--out", str(out), "--only-collect"])
  assert (out / "results.json").read_text() == before
