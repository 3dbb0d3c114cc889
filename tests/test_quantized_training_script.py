"""experiments.quantized_training on real MNIST, a few steps: the pruned cell
runs, then post-training and quantization-aware int8 and int4 rows are
tabulated beside the float32 fine-tuning, with the pruned weights zero."""

import json

import numpy as np
import pytest

from experiments import quantized_training


def test_cells_prune_to_ninety_percent():
  (cell,) = quantized_training.cells(["lenet5"], [0])
  assert (cell.method, cell.sparsity, cell.allocation) == ("magnitude", 0.9, "global")
  assert cell.steps == 10 * 468


def test_kernel_bytes_pack_values_and_add_scales():
  params = {"w": np.ones((4, 3), np.float32), "b": np.ones(3, np.float32)}
  masks = {"w": np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0], [1, 1, 1]], bool),
           "b": None}
  float_bytes = quantized_training.kernel_bytes(params, masks, 32)
  # 5 kept int4 values pack into 3 bytes; the 3 output channels add a scale each.
  assert (float_bytes - quantized_training.kernel_bytes(params, masks, 4)
          == 4 * 5 - (3 + 4 * 3))


@pytest.mark.long_running(40)
def test_smoke_run_tabulates_every_variant(data_dirs, tmp_path):
  source, tfds = data_dirs
  out = tmp_path / "out"
  assert quantized_training.main([
      "--models", "lenet300100", "--jobs", "1", "--steps", "20",
      "--qat-steps", "2", "--set", f"source_dir={source}",
      "--set", f"tfds_dir={tfds}", "--root", str(tmp_path / "runs"),
      "--out", str(out)]) == 0
  record = json.loads((out / "results.json").read_text())["runs"][0]
  rows = {(r["variant"], r["training"]): r for r in record["rows"]}
  assert sorted(rows) == sorted([
      ("float32", "fine-tuned"), ("int8", "post-training"),
      ("int8", "quantization-aware"), ("int4", "post-training"),
      ("int4", "quantization-aware")])
  assert all(r["pruned_zero"] for r in rows.values())
  assert abs(record["kernel_density"] - 0.1) < 0.001
  assert (record["pruned_bytes"] > rows["int8", "quantization-aware"]["bytes"]
          > rows["int4", "quantization-aware"]["bytes"])
  served = rows["int8", "quantization-aware"]["served"]
  assert served["int8_zeros"]
  assert abs(served["error"] - rows["int8", "quantization-aware"]["error"]) < 0.5
  assert (out / "error_vs_bytes.png").exists()
