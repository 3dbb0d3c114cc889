"""Smoke test of the benchmark suite: a few steps, every report writer.

The steps are too few for the ratios to mean anything; the test checks that
the suite runs, that its records hold what the reports and the JSON schema
promise, and that the memory accounting is exact.
"""

from __future__ import annotations

import json
import math

import jax
import numpy as np
import pytest

import jaxprune
from benchmarks import measure
from benchmarks import methods
from benchmarks import page_faults
from benchmarks import report
from benchmarks import throughput
from benchmarks import timing

COMMON_FIELDS = ("kind", "model", "method", "description", "ratio",
                 "plain_median_s", "pruned_median_s", "target", "passed")


@pytest.fixture(scope="module")
def lenet_bench():
  return measure.prepare("lenet300100", batch_size=8)


@pytest.fixture(scope="module")
def step_records(lenet_bench):
  bench = lenet_bench
  records = []
  for method in ("magnitude", "l0"):
    records += measure.measure_step(bench, method, steps=6, block=3, warmup=1,
                                    compile_repeats=2)
  return [report.judge(r) for r in records]


@pytest.fixture(scope="module")
def records(step_records):
  memory = measure.measure_memory("lenet300100", "magnitude")
  return step_records + [report.judge(r) for r in memory]


def test_step_records_have_the_fields_and_finite_ratios(step_records):
  kinds = [(r["kind"], r["method"]) for r in step_records]
  assert kinds == [("step", "magnitude"), ("amortised", "magnitude"),
                   ("compile", "magnitude"), ("step", "l0"), ("compile", "l0")]
  for record in step_records:
    assert set(COMMON_FIELDS) <= set(record)
    for field in ("ratio", "plain_median_s", "pruned_median_s"):
      assert math.isfinite(record[field]) and record[field] > 0, record
  step = step_records[0]
  assert step["steps"] == 6 and step["mask_updates"] == 1  # at step 0
  assert step["target"] == "ratio <= 1.02" and step["passed"] in (True, False)
  compile_record = step_records[2]
  assert compile_record["compiles"] == 2
  assert compile_record["target"] == "ratio <= 1.50"
  assert compile_record["passed"] in (True, False)


def test_memory_of_magnitude_pruning_is_one_byte_per_prunable_weight():
  record, = measure.measure_memory("lenet300100", "magnitude")
  # Dense kernels 784x300, 300x100, 100x10: one bool mask byte per weight.
  mask_bytes = 784 * 300 + 300 * 100 + 100 * 10
  # PruneState's scalars: step, level, nan_scores (int32) and the key data.
  key_bytes = jax.random.key_data(jax.random.key(0)).nbytes
  assert record["prunable_params"] == mask_bytes
  assert record["added_bytes"] == mask_bytes + 3 * 4 + key_bytes
  assert record["params"] == mask_bytes + 300 + 100 + 10
  assert record["params_bytes"] == 4 * record["params"]
  assert record["ratio"] == pytest.approx(
      record["added_bytes"] / record["params_bytes"])
  assert report.judge(record)["passed"] is True


def test_reports_are_written(records, tmp_path):
  environment = throughput.environment()
  assert {"devices", "jax", "jaxlib", "host", "processor"} <= set(environment)
  json_path = tmp_path / "bench.json"
  report.write_json(str(json_path), environment, records, {"mode": "test"})
  loaded = json.loads(json_path.read_text())
  assert loaded["environment"] == environment
  assert loaded["suite"] == {"mode": "test"}
  assert [r["kind"] for r in loaded["records"]] == [r["kind"] for r in records]

  markdown_path = tmp_path / "bench.md"
  report.write_markdown(str(markdown_path), environment, records)
  rows = [line for line in markdown_path.read_text().splitlines()
          if line.startswith("| ") and not line.startswith("| ---")
          and not line.startswith(("| kind |", "| model |"))]
  assert len(rows) == len(records)

  plot_path = tmp_path / "bench.png"
  report.write_plot(str(plot_path), records)
  assert plot_path.stat().st_size > 0
  assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_only_selects_one_row_of_the_plan():
  jobs = throughput.select(throughput.full_plan(), only=["lenet5:flipout"],
                           kinds=["step"])
  assert [(j.kind, j.model, j.method) for j in jobs] == [
      ("step", "lenet5", "flipout")]
  every_lenet5_job = throughput.select(throughput.full_plan(), only=["lenet5"])
  assert {j.model for j in every_lenet5_job} == {"lenet5"}
  assert len(every_lenet5_job) > 1


def test_quick_plan_leaves_out_the_largest_models():
  models = {job.model for job in throughput.quick_plan()}
  assert {"lenet300100", "lenet5", "transformer_small"} <= models
  assert not models & {"mlp26m", "mlp100m", "resnet20"}
  assert all(job.steps <= 200 for job in throughput.quick_plan())


def test_run_jobs_writes_the_json_after_each_job(tmp_path):
  jobs = [throughput.Job("memory", "lenet300100", "magnitude"),
          throughput.Job("memory", "lenet300100", "no_such_method")]
  suite_info = {"errors": []}
  json_path = tmp_path / "bench.json"
  records = throughput.run_jobs(jobs, {"host": "test"}, suite_info,
                                str(json_path))
  assert [r["method"] for r in records] == ["magnitude"]
  error, = suite_info["errors"]
  assert "no_such_method" in error
  saved = json.loads(json_path.read_text())
  assert saved["records"] == records and saved["suite"]["wall_s"] > 0


def test_page_faults_race_reports_every_step_kind():
  records = page_faults.race("lenet300100", rounds=1, block=2, batch=8)
  assert [r["kind"] for r in records] == [
      "plain", "scheduled, no update", "fixed masks"]
  for r in records:
    assert r["median_ms"] > 0 and math.isfinite(r["ratio"])
    assert r["faults_per_step"] >= 0
  plain, scheduled, fixed = (r["temp_bytes"] for r in records)
  # The mask refresh's scratch arrays are what enlarge the arena.
  assert scheduled > 2 * plain and fixed < scheduled


def test_held_masks_keep_their_random_masks_and_zeros_through_steps(lenet_bench):
  bench = lenet_bench
  pruned = methods.make("held_masks", steps=3)
  assert not pruned.update_steps and not pruned.gated
  carry = measure.initial_carry(bench, pruned.tx)
  start = jax.tree.map(np.asarray, jaxprune.masks_of(carry.opt_state))  # donated
  kernel = start["Dense_0"]["kernel"]
  assert 0.89 < 1 - kernel.mean() < 0.91 and start["Dense_0"]["bias"] is None
  step = timing.jit_step(timing.make_train_step(bench.model.module, pruned.tx))
  for _ in range(3):
    carry, _ = step(carry, bench.x, bench.y)
  end = jaxprune.masks_of(carry.opt_state)
  for before, after in zip(jax.tree.leaves(start), jax.tree.leaves(end)):
    np.testing.assert_array_equal(before, after)
  kernel_after = np.asarray(carry.params["Dense_0"]["kernel"])
  assert np.all(kernel_after[~kernel] == 0) and np.all(kernel_after[kernel] != 0)
  assert measure.achieved_sparsity(pruned, carry) == pytest.approx(
      jaxprune.sparsity(start).global_sparsity)
