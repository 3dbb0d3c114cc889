"""experiments.hfp on real Fashion-MNIST, a few steps on a tiny budget: the
dense run, the latency table, Opti-Cut with information gain to two budgets,
the L1 baseline at the same multiply-adds, the files."""

import json

import pytest

from experiments import hfp


@pytest.mark.long_running(130)
def test_a_short_run_writes_its_table(data_dirs, tmp_path):
  source, tfds = data_dirs
  out = tmp_path / "out"
  args = ["--fractions", "0.95,0.9", "--batch", "16", "--tables", "1",
          "--repeats", "1", "--grid", "2", "--calibration", "2",
          "--per-round", "2000", "--recover-steps", "1", "--finetune-steps", "1",
          "--timing-batches", "2", "--test-images", "100",
          "--root", str(tmp_path / "runs"), "--out", str(out),
          "--set", "steps=3", "--set", "log_every=1",
          "--set", f"source_dir={source}", "--set", f"tfds_dir={tfds}"]
  assert hfp.main(args) == 0
  written = json.loads((out / "results.json").read_text())
  runs = written["runs"]
  assert [(r["method"], r["fraction"]) for r in runs] == [
      ("dense", 1.0), ("hfp", 0.95), ("hfp", 0.9), ("l1_layerwise", 0.95),
      ("l1_layerwise", 0.9)]
  dense = runs[0]
  assert dense["params"] == 1_802_698 and dense["measured_ratio"] == 1.0
  for r in runs[1:]:
    assert r["params"] < dense["params"]
    assert r["predicted_s"] <= r["budget"] * (1 + 1e-9) or r["method"] != "hfp"
    assert r["measured_s"] > 0 and 0 <= r["accuracy"] <= 1
  for h, b in ((runs[1], runs[3]), (runs[2], runs[4])):
    assert b["multiply_adds"] <= h["multiply_adds"]  # matched from below
  assert runs[2]["multiply_adds"] < runs[1]["multiply_adds"]
  assert written["latency_table"]["loadavg"]
  table = json.loads((out / "latency_table.json").read_text())
  assert table["table"]["input_shape"] == [16, 28, 28, 1]
  text = (out / "table.md").read_text()
  assert "| 95% | hfp |" in text and "python -m experiments.hfp" in text
  for name in ("accuracy_vs_params.png", "accuracy_vs_latency.png"):
    assert (out / name).stat().st_size > 0
