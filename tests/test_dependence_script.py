"""experiments.dependence on real MNIST, a few training steps: the dense run,
the removals at two tolerances, the shrunk network's accuracy, the files."""

import json

import numpy as np
import pytest

from experiments import dependence


@pytest.mark.long_running(40)
def test_a_short_run_writes_its_table(data_dirs, tmp_path):
  source, tfds = data_dirs
  out = tmp_path / "out"
  args = ["--datasets", "mnist", "--tolerances", "0.05,0.5", "--calibration", "300",
          "--root", str(tmp_path / "runs"), "--out", str(out),
          "--set", "steps=30", "--set", "log_every=10",
          "--set", f"source_dir={source}", "--set", f"tfds_dir={tfds}"]
  assert dependence.main(args) == 0
  runs = json.loads((out / "results.json").read_text())["runs"]
  assert [r["tolerance"] for r in runs] == [0.05, 0.5]
  loose = runs[1]
  assert loose["params_after"] < loose["params_before"] == 266_610
  assert loose["widths"][0] < 300
  for r in runs:
    # The shrunk network computes what the folded one does.
    assert np.isclose(r["shrunk_accuracy"], r["folded_accuracy"], atol=2e-4)
    assert 0.5 < r["dense_accuracy"] <= 1
  assert runs[0]["params_after"] >= loose["params_after"]
  assert "| mnist | 0 | 0.5 |" in (out / "table.md").read_text()
  assert (out / "params_vs_accuracy.png").stat().st_size > 0
  # Collecting again reads the finished run without training it again.
  assert dependence.main(args + ["--only-collect"]) == 0
