"""Smoke test of benchmarks.sparse_inference: a tiny MLP, a few calls.

The calls are too few for the ratios to mean anything; the test checks that
the benchmark runs, that its records hold what its docstring promises, and
that the weights it counts are those of the masks and the shrunk layers.
"""

from __future__ import annotations

import json
import math

import pytest

from benchmarks import sparse_inference

_TINY = {"tiny": sparse_inference.Model(16, (12, 8, 4))}
_PLAN = sparse_inference.Plan(budget_s=0.01, min_calls=4, max_calls=4, block=2,
                              warmup=1)


@pytest.fixture(scope="module")
def records():
  return sparse_inference.race("tiny", batch=3, plan=_PLAN, sparsities=(0.5, 0.9),
                               node_sparsities=(0.5,), models=_TINY)


def test_race_reports_every_variant_with_finite_times(records):
  assert [(r["variant"], r["kind"]) for r in records] == [
      ("dense", "dense"), ("bcoo 50%", "bcoo"), ("bcoo 90%", "bcoo"),
      ("shrunk 50%", "shrunk")]
  for r in records:
    assert r["model"] == "tiny" and r["layers"] == "16-12-8-4" and r["batch"] == 3
    assert r["calls"] == 4 and r["block"] == 2
    assert math.isfinite(r["ratio"]) and r["ratio"] > 0 and r["median_s"] > 0
    assert len(r["ratio_quartiles"]) == 2
    assert r["max_abs_diff"] < 1e-4
  assert records[0]["ratio"] == 1.0


def test_weights_are_the_kept_and_the_shrunk_ones(records):
  dense = 16 * 12 + 12 * 8 + 8 * 4
  kept = {0.5: 96 + 48 + 16, 0.9: 19 + 10 + 3}  # n - round(s * n) per layer
  assert [r["params"] for r in records] == [
      dense, kept[0.5], kept[0.9], 16 * 6 + 6 * 4 + 4 * 4]


def test_storage_records_and_markdown(records, tmp_path):
  stored = sparse_inference.storage("tiny", sparsities=(0.5,), models=_TINY)
  assert [(r["format"], r["sparsity"]) for r in stored] == [
      ("bitmask", 0.5), ("csr", 0.5), ("n_of_m 2:4", 0.5)]
  for r in stored:
    assert r["dense_float32_bytes"] == 4 * (16 * 12 + 12 + 12 * 8 + 8 + 8 * 4 + 4)
    assert 0 < r["nbytes"] < r["file_bytes"]
    assert r["ratio"] == pytest.approx(r["nbytes"] / r["dense_float32_bytes"])
  text = sparse_inference.markdown(
      {"backend": "cpu", "processor": "x", "cpu_count": 2, "jax": "0"},
      records, stored)
  rows = [line for line in text.splitlines() if line.startswith("| tiny")]
  assert len(rows) == len(records) + len(stored)
  json.dumps(records)  # the records are plain JSON


def test_two_of_four_masks_keep_two_of_every_four():
  params = sparse_inference.random_params(_TINY["tiny"])
  masks = sparse_inference.two_of_four_masks(params)
  for layer in masks.values():
    kernel = layer["kernel"]
    groups = kernel.reshape(kernel.shape[0] // 4, 4, kernel.shape[1])
    assert (groups.sum(axis=1) == 2).all()
