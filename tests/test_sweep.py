"""Sweeps: cells, resumption, aggregation, tables and plots."""

import dataclasses
import json

import pytest

from experiments import config as config_lib
from experiments import data
from experiments import models
from experiments import sweep


def test_cells_cover_the_grid_and_seeds():
  s = sweep.SWEEPS["flipout"]
  cells = s.cells()
  assert len(cells) == 2 * 4 * 4 * 3
  assert len({c.name for c in cells}) == len(cells)
  snip = [c for c in cells if c.method == "snip"]
  assert snip and all(c.schedule == "constant" for c in snip)
  assert all(c.schedule == "geometric" for c in cells if c.method != "snip")


@pytest.mark.parametrize("name", sorted(sweep.SWEEPS))
def test_every_sweep_has_distinct_cells_of_known_models(name):
  cells = sweep.SWEEPS[name].cells()
  assert len({c.name for c in cells}) == len(cells)
  for model in {c.model for c in cells}:
    models.get_model(model)  # raises on an unknown name
  assert {c.dataset for c in cells} <= set(data.NAMES)


def test_only_keeps_the_listed_grid_values():
  s = sweep.SWEEPS["flipout"]
  cells = s.cells([0], {"method": ["flipout", "magnitude"],
                        "sparsity": ["0.99609375"]})
  assert sorted((c.dataset, c.method) for c in cells) == [
      ("fashion_mnist", "flipout"), ("fashion_mnist", "magnitude"),
      ("mnist", "flipout"), ("mnist", "magnitude")]
  assert all(c.sparsity == 0.99609375 and c.seed == 0 for c in cells)
  with pytest.raises(ValueError, match="does not vary"):
    s.cells(only={"model": ["lenet5"]})
  with pytest.raises(ValueError, match="leaves no value"):
    s.cells(only={"method": ["flip_out"]})


def test_aggregate_table_and_plot(tmp_path):
  records = [
      {"dataset": "mnist", "method": m, "target_sparsity": t, "seed": seed,
       "global_sparsity": t, "final_test_accuracy": acc + 0.01 * seed}
      for m, acc in (("a", 0.9), ("b", 0.8))
      for t in (0.5, 0.9)
      for seed in (0, 1)
  ]
  rows = sweep.aggregate(records)
  a = next(r for r in rows if r["method"] == "a" and r["target_sparsity"] == 0.5)
  assert a["accuracy_mean"] == pytest.approx(90.5)
  assert a["accuracy_std"] == pytest.approx(0.5)
  table = sweep.markdown_table(rows)
  assert "| a | 90.50 ± 0.50 (n=2) | 90.50 ± 0.50 (n=2) |" in table
  sweep.plot(rows, tmp_path / "p.png", "demo")
  assert (tmp_path / "p.png").stat().st_size > 0


def test_run_cells_runs_once_and_resumes(data_dirs, tmp_path):
  source, tfds_dir = data_dirs
  base = dataclasses.replace(config_lib.PRESETS["smoke"], source_dir=source,
                             tfds_dir=tfds_dir, steps=6, eval_every=0,
                             checkpoint_every=0)
  cells = sweep.Sweep(base=base, grid={"method": ("magnitude",)}, seeds=(0,)).cells()
  sweep.run_cells(cells, tmp_path, jobs=1)
  summary = tmp_path / cells[0].name / "summary.json"
  first = summary.stat().st_mtime_ns
  sweep.run_cells(cells, tmp_path, jobs=1)  # up to date: not run again
  assert summary.stat().st_mtime_ns == first
  records = sweep.collect(cells, tmp_path)
  assert len(records) == 1 and records[0]["method"] == "magnitude"
  assert json.loads(summary.read_text())["steps"] == 6


def test_keep_earlier_merges_runs_done_elsewhere(tmp_path):
  def run(seed, accuracy):
    return {"dataset": "mnist", "model": "lenet5", "method": "flipout",
            "target_sparsity": 0.99, "seed": seed, "global_sparsity": 0.99,
            "final_test_accuracy": accuracy}

  # Nothing earlier: the records as they are.
  assert sweep.with_earlier_runs([run(0, 0.5)], tmp_path) == ([run(0, 0.5)], [])
  sweep.write_results("demo", [run(0, 0.5), run(1, 0.6)], tmp_path, "first")
  records, commands = sweep.with_earlier_runs([run(1, 0.7), run(2, 0.8)],
                                              tmp_path)
  # Seed 0 kept from before, seed 1 replaced by the new run, seed 2 added.
  assert sorted((r["seed"], r["final_test_accuracy"]) for r in records) == [
      (0, 0.5), (1, 0.7), (2, 0.8)]
  assert commands == ["first"]
  rows = sweep.write_results("demo", records, tmp_path, "second", commands)
  assert rows[0]["seeds"] == 3
  assert rows[0]["accuracy_mean"] == pytest.approx(100 * (0.5 + 0.7 + 0.8) / 3)
  written = json.loads((tmp_path / "results.json").read_text())
  assert written["command"] == "second"
  assert written["earlier_commands"] == ["first"]
  assert "Produced by `first`, then `second`." in (tmp_path / "table.md").read_text()
  # A third extension keeps the whole history of commands.
  _, commands = sweep.with_earlier_runs([run(3, 0.9)], tmp_path)
  assert commands == ["first", "second"]


def test_results_survive_a_write_killed_halfway(tmp_path, monkeypatch):
  # --keep-earlier reads results.json back, and it may hold the only copy
  # of runs whose directories are gone: a write that dies must leave the
  # old file whole.
  run = {"dataset": "mnist", "model": "lenet5", "method": "flipout",
         "target_sparsity": 0.99, "seed": 0, "global_sparsity": 0.99,
         "final_test_accuracy": 0.5}
  sweep.write_results("demo", [run], tmp_path, "first")
  before = (tmp_path / "results.json").read_text()

  def killed(*args):
    raise KeyboardInterrupt

  monkeypatch.setattr("os.replace", killed)
  with pytest.raises(KeyboardInterrupt):
    sweep.write_results("demo", [dict(run, seed=1)], tmp_path, "second")
  assert (tmp_path / "results.json").read_text() == before
  assert sorted(p.name for p in tmp_path.iterdir()) == [
      "accuracy_vs_sparsity.png", "results.json", "table.md"]
