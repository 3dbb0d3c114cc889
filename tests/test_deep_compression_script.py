"""experiments.deep_compression on real MNIST, a few steps: the dense and the
pruned cell run, then sharing, fine-tuning and Huffman coding are
tabulated stage by stage."""

import json

import pytest

from experiments import deep_compression as compression


def test_cells_follow_deep_compression():
  dense, pruned = compression.cells(["lenet5"], [0])
  assert (dense.method, pruned.method, pruned.sparsity) == ("dense", "magnitude", 0.92)
  assert pruned.allocation == "global" and pruned.steps == 20 * 468
  small = compression.cells(["lenet300100"], [0], steps=20)[1]
  assert small.begin_step < small.end_step <= 20 and small.frequency >= 1


@pytest.mark.long_running(60)
def test_smoke_run_writes_every_stage(data_dirs, tmp_path):
  source, tfds = data_dirs
  out = tmp_path / "out"
  assert compression.main([
      "--models", "lenet300100", "--jobs", "1", "--steps", "20",
      "--fine-tune-steps", "3", "--set", f"source_dir={source}",
      "--set", f"tfds_dir={tfds}", "--root", str(tmp_path / "runs"),
      "--out", str(out)]) == 0
  record = json.loads((out / "results.json").read_text())["runs"][0]
  stages = record["stages"]
  assert list(stages) == ["dense float32", "pruned", "shared", "huffman"]
  assert stages["dense float32"]["bytes"] == 4 * 266_610
  assert (stages["dense float32"]["bytes"] > stages["pruned"]["bytes"]
          > stages["shared"]["bytes"] > stages["huffman"]["bytes"])
  assert abs(record["kernel_density"] - 0.08) < 0.001
  table = (out / "table.md").read_text()
  assert "+ Huffman coded" in table and "| lenet300100 | Han et al. |" in table
  assert (out / "error_vs_bytes.png").exists()


def test_any_method_and_sparsity_prune_the_pruned_cell():
  dense, pruned = compression.cells(["lenet300100"], [1], method="snip", sparsity=0.9)
  assert (dense.method, dense.sparsity, dense.name) == (
      "dense", 0.0, "lenet300100-dense-seed1")
  assert (pruned.method, pruned.sparsity, pruned.name) == (
      "snip", 0.9, "lenet300100-snip0.9-seed1")
  # The published setting keeps its run names.
  assert compression.cells(["lenet5"], [0])[1].name == "lenet5-magnitude-seed0"
