"""The experiment runner with ``flax_api=nnx``: the NNX twins train, prune
and resume as the Linen models do."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from experiments import config as config_lib
from experiments import run
from experiments import train

KERNELS = 784 * 300 + 300 * 100 + 100 * 10  # LeNet-300-100's pruned leaves


def _smoke(data_dirs, **changes):
  source, tfds_dir = data_dirs
  return dataclasses.replace(
      config_lib.PRESETS["smoke"], source_dir=source, tfds_dir=tfds_dir,
      flax_api="nnx", **changes)


@pytest.mark.long_running(20)
def test_an_nnx_run_prunes_to_the_target_and_resumes(data_dirs, tmp_path):
  config = _smoke(data_dirs, steps=10, begin_step=2, end_step=6, frequency=2,
                  eval_every=0, checkpoint_every=5)
  summary = train.train_and_evaluate(config, tmp_path / "full", progress=False)
  assert summary["global_sparsity"] == pytest.approx(round(0.9 * KERNELS) / KERNELS)
  assert summary["params"] == 266_610  # the Linen model's count
  assert set(summary["per_layer_sparsity"]) == {
      "hidden1/kernel", "hidden2/kernel", "out/kernel"}
  assert summary["connectivity"]["connected"]
  assert 0.1 < summary["final_test_accuracy"] <= 1.0
  state = train.load_checkpoint(config, tmp_path / "full")
  kernel = np.asarray(state.params["hidden1"]["kernel"])
  assert np.all(kernel[~np.asarray(state.masks["hidden1"]["kernel"])] == 0)

  train.train_and_evaluate(dataclasses.replace(config, steps=5),
                           tmp_path / "resumed", progress=False)
  train.train_and_evaluate(config, tmp_path / "resumed", resume=True,
                           progress=False)
  resumed = train.load_checkpoint(config, tmp_path / "resumed")
  for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_an_nnx_snip_run_keeps_its_masks(data_dirs, tmp_path):
  config = _smoke(data_dirs, method="snip", sparsity=0.95, init_batches=1,
                  init_batch_size=32, steps=6, eval_every=0)
  summary = train.train_and_evaluate(config, tmp_path, progress=False)
  assert summary["global_sparsity"] == pytest.approx(round(0.95 * KERNELS) / KERNELS)
  records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert {r["sparsity"] for r in records} == {summary["global_sparsity"]}


def test_an_nnx_snap_it_run_trains_the_shrunk_twin(data_dirs, tmp_path):
  config = _smoke(data_dirs, method="snap_it", sparsity=0.75, init_batches=1,
                  init_batch_size=32, rounds=1, steps=4, eval_every=0)
  summary = train.train_and_evaluate(config, tmp_path, progress=False)
  widths = summary["widths"]
  assert widths["hidden1"] + widths["hidden2"] == 400 - 300
  assert widths["out"] == 10
  state = train.load_checkpoint(config, tmp_path)
  assert state.params["hidden2"]["kernel"].shape == (widths["hidden1"],
                                                     widths["hidden2"])


def test_an_nnx_l0_run_gives_the_input_layer_its_own_drop_rate(data_dirs, tmp_path):
  config = _smoke(data_dirs, method="l0_constrained", steps=2, eval_every=0,
                  input_drop_rate=0.2, drop_rate=0.5)
  summary = train.train_and_evaluate(config, tmp_path, progress=False)
  density = summary["l0"]["expected_density_per_layer"]
  assert density["hidden1/kernel"] > 0.9 > 0.85 > density["hidden2/kernel"]
  assert summary["params"] == 266_610


@pytest.mark.long_running(25)
def test_an_nnx_batch_norm_run_updates_its_statistics(data_dirs, tmp_path):
  """ResNet-20 (the smallest model with batch norm) on MNIST, a few steps
  of batch 8: the running statistics change in training, and the summary
  reports the Linen model's parameter count."""
  config = _smoke(data_dirs, model="resnet20", batch_size=8, steps=3,
                  begin_step=1, end_step=2, frequency=1, sparsity=0.5,
                  eval_every=0, checkpoint_every=0)
  summary = train.train_and_evaluate(config, tmp_path, progress=False)
  assert summary["params"] == 269_722 - 27 * 16 + 9 * 16  # one input channel
  assert summary["global_sparsity"] == pytest.approx(0.5, abs=1e-6)
  state = train.load_checkpoint(config, tmp_path)
  stem = state.batch_stats["stem_norm"]
  assert not np.allclose(stem["mean"], 0) and not np.allclose(stem["var"], 1)


def test_the_cli_takes_flax_api(data_dirs, tmp_path, capsys, monkeypatch):
  source, tfds_dir = data_dirs
  monkeypatch.setenv("JAXPRUNE_DATA_DIR", source)
  monkeypatch.setenv("JAXPRUNE_TFDS_DIR", tfds_dir)
  assert run.main(["smoke", "--set", "flax_api=nnx", "--set", "steps=2",
                   "--set", "eval_every=0", "--workdir", str(tmp_path),
                   "--no-progress"]) == 0
  assert "lenet300100 (Flax NNX) on mnist" in capsys.readouterr().out
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["config"]["flax_api"] == "nnx"
