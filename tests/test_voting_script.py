"""experiments.voting on real MNIST, a few training steps: the dense run,
voting from initialisation and after magnitude pruning, the shrunk networks'
accuracy, the files."""

import json

import numpy as np
import pytest

from experiments import voting


@pytest.mark.long_running(25)
def test_a_short_run_writes_its_table(data_dirs, tmp_path):
  source, tfds = data_dirs
  out = tmp_path / "out"
  args = ["--targets", "0.5", "--root", str(tmp_path / "runs"), "--out", str(out),
          "--set", "steps=24", "--set", f"source_dir={source}",
          "--set", f"tfds_dir={tfds}"]
  assert voting.main(args) == 0
  runs = {r["run"]: r for r in json.loads((out / "results.json").read_text())["runs"]}
  assert list(runs) == ["dense", "voting-0.5", "magnitude", "magnitude-voting-0.5"]
  assert runs["dense"]["widths"] == [300, 100]
  assert runs["dense"]["params_after"] == runs["dense"]["params_dense"] == 266_610
  assert runs["voting-0.5"]["widths"] == [150, 50]
  assert runs["magnitude-voting-0.5"]["widths"] == [150, 50]
  # 90% of the kernels' weights pruned by magnitude; voting removes more.
  assert runs["magnitude"]["nonzero_after"] < 0.11 * 266_610
  assert 0 < runs["magnitude-voting-0.5"]["further_removed"] < 1
  for r in runs.values():
    # The shrunk network computes what the node-masked one does.
    assert np.isclose(r["shrunk_accuracy"], r["masked_accuracy"], atol=2e-4)
    assert 0.3 < r["shrunk_accuracy"] <= 1
  assert len(runs["voting-0.5"]["events"]) == voting.EVENTS
  assert "| 0 | voting-0.5 | 150-50 |" in (out / "table.md").read_text()
  assert (out / "params_vs_accuracy.png").stat().st_size > 0
  # Collecting again reads the finished runs without training them again.
  assert voting.main(args + ["--only-collect"]) == 0
  again = json.loads((out / "results.json").read_text())["runs"]
  assert sorted(r["run"] for r in again) == sorted(runs)
