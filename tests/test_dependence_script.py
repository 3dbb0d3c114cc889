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
  assert not (out / "latency_vs_accuracy.png").exists()  # LeNet is not timed
  # Collecting again reads the finished run without training it again.
  assert dependence.main(args + ["--only-collect"]) == 0


@pytest.mark.long_running(15)
def test_conv6_removals_fold_through_pooling_and_time_the_shrunk_nets(tmp_path):
  """The conv path on a narrow initialised Conv-6 and random 8 x 8 images
  (maps of 8, 4, 2 and 1 positions: the late layers have more units than
  calibration rows): the rows are subsampled to ``max_rows``, the exact
  removals leave the logits as they were on the calibration images, through
  the max pools and the borders of the 'SAME' convs, the shrunk network
  computes what the folded one does, and every shrunk network is timed
  against the dense one."""
  import jax

  from experiments import networks

  config = dependence.cells(["mnist", "fashion_mnist"], [0], ["conv6"])[0]
  assert (config.name, config.dataset, config.steps) == (
      "conv6-fashion_mnist-dense-seed0", "fashion_mnist", 2 * 468)
  rng = np.random.default_rng(0)
  images = rng.normal(size=(34, 8, 8, 1)).astype(np.float32)
  calibration, test = images[:2], (images[2:], rng.integers(0, 10, 32))
  model = networks.get(config, widths=(8, 8, 16, 16, 32, 32, 32, 32))
  params = model.init(jax.random.key(0), images[:1])["params"]
  layers = sorted(params)
  assert layers[0] == "Conv_0" and layers[-1] == "Dense_2"
  records = dependence.removals(config, params, calibration, test,
                                [1e-5, 0.5], max_rows=100, latency=(8, 2))
  exact, loose = records
  assert exact["calibration_rows"] == {
      "Conv_0": 100, "Conv_1": 2 * 16, "Conv_2": 2 * 16, "Conv_3": 2 * 4,
      "Conv_4": 2 * 4, "Conv_5": 2, "Dense_0": 2, "Dense_1": 2}
  # More units than rows: the rank of the rows is kept (with the constant
  # for the units that a dense layer reads).
  assert exact["widths"][3:] == [8, 8, 1, 1, 1]
  assert loose["params_after"] <= exact["params_after"] < exact["params_before"]
  for r in records:
    assert np.isclose(r["shrunk_accuracy"], r["folded_accuracy"], atol=1 / 32)
    assert r["latency_batch"] == 8 and r["shrunk_median_s"] > 0
  acts = dependence.calibration_activations(model, params, calibration, layers,
                                            max_rows=10**9)
  found = dependence.fold_dependent(params, acts, layers, 1e-5)
  before = model.apply({"params": params}, calibration)
  after = model.apply({"params": found.params}, calibration)
  assert np.allclose(after, before, atol=1e-4 * float(np.abs(before).max()))
  out = tmp_path / "out"
  text = dependence.write_results(records, out, "python -m experiments.dependence")
  assert "| conv6 | fashion_mnist | 0 | 0.5 |" in text
  assert "Conv_0 100" in (out / "table.md").read_text()
  assert (out / "params_vs_accuracy.png").stat().st_size > 0
  assert (out / "latency_vs_accuracy.png").stat().st_size > 0
