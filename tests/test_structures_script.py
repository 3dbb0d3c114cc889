"""experiments.structures: a few steps of three variants, collected."""

import json

import pytest

from experiments import structures


def test_cells_name_every_variant_and_refuse_unknown_ones():
  configs = structures.cells(["lenet300100"], ["mnist"], [0])
  assert len(configs) == len(structures.VARIANTS)
  assert len({c.name for c in configs}) == len(configs)
  two_of_four = next(c for c in configs if c.structure == "n_of_m:2:4")
  assert (two_of_four.method, two_of_four.sparsity) == ("magnitude", 0.5)
  with pytest.raises(ValueError, match="unknown variants"):
    structures.cells(["lenet300100"], ["mnist"], [0], ["3:4"])


@pytest.mark.long_running(35)
def test_a_short_sweep_exports_measures_and_shrinks(tmp_path, monkeypatch):
  monkeypatch.setenv("JAXPRUNE_DATA_DIR", "../shared/data")
  out = tmp_path / "out"
  structures.main([
      "--models", "lenet300100", "--datasets", "mnist", "--jobs", "1",
      "--variants", "dense,2:4,channels 50%", "--root", str(tmp_path / "runs"),
      "--out", str(out), "--set", "steps=12", "--set", "begin_step=2",
      "--set", "end_step=8", "--set", "frequency=2"])
  runs = {r["variant"]: r for r in json.loads((out / "results.json").read_text())["runs"]}
  assert sorted(runs) == ["2:4", "channels 50%", "dense"]
  assert runs["dense"]["exported_bytes"] == 4 * 266_610
  # The N:M form by hand: per kernel 2 float32 values and two 2-bit
  # positions per group of 4 inputs; the 410 biases dense.
  groups = [784 // 4 * 300, 300 // 4 * 100, 100 // 4 * 10]
  assert runs["2:4"]["exported_bytes"] == sum(
      8 * g + -(-4 * g // 8) for g in groups) + 4 * 410
  assert runs["2:4"]["kernel_sparsity"] == pytest.approx(0.5)
  channels = runs["channels 50%"]
  assert channels["widths"] == [150, 50]
  assert channels["exported_bytes"] == 4 * (784 * 150 + 150 + 150 * 50 + 50
                                            + 50 * 10 + 10)
  assert 0.0 <= channels["shrunk_accuracy"] <= 1.0
  assert channels["latency_ratio"] > 0
  assert (out / "table.md").read_text().count("| lenet300100 |") == 3
  assert (out / "accuracy_vs_bytes.png").stat().st_size > 0
