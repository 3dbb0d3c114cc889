"""The experiment runner: smoke run, resume equivalence, devices, reproducibility."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments import config as config_lib
from experiments import run
from experiments import train


def _smoke(data_dirs, **changes):
  source, tfds_dir = data_dirs
  return dataclasses.replace(
      config_lib.PRESETS["smoke"], source_dir=source, tfds_dir=tfds_dir, **changes
  )


def _final_state(workdir, data_dirs):
  state = train.load_checkpoint(_smoke(data_dirs), workdir)
  assert int(state.step) == 20
  return state


def _assert_trees_equal(a, b):
  paths = lambda t: [p for p, _ in jax.tree_util.tree_flatten_with_path(t)[0]]
  assert paths(a) == paths(b)
  assert len(paths(a)) > 10  # params, masks, moments, step, key
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def smoke_run(data_dirs, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("smoke")
  summary = train.train_and_evaluate(_smoke(data_dirs), workdir, progress=False)
  return workdir, summary


def test_smoke_run_writes_everything(smoke_run):
  workdir, summary = smoke_run
  for name in ("summary.json", "metrics.jsonl", "training.png", "layer_sparsity.png"):
    assert (workdir / name).stat().st_size > 0, name
  on_disk = json.loads((workdir / "summary.json").read_text())
  for key in ("final_test_accuracy", "best_test_accuracy", "global_sparsity",
              "per_layer_sparsity", "steps", "wall_time_s", "config"):
    assert key in on_disk
  assert on_disk["steps"] == 20
  # 266,200 kernel weights pruned to 90% globally: round(0.9 * 266200) zeros.
  assert on_disk["global_sparsity"] == pytest.approx(239580 / 266200)
  assert set(on_disk["per_layer_sparsity"]) == {
      "Dense_0/kernel", "Dense_1/kernel", "Dense_2/kernel"}
  assert 0.1 < on_disk["final_test_accuracy"] <= 1.0
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records if r["kind"] == "train"] == [5, 10, 15, 20]
  assert [r["step"] for r in records if r["kind"] == "eval"] == [10, 20]
  assert records[-1]["sparsity"] == pytest.approx(on_disk["global_sparsity"])


def test_resumed_run_equals_uninterrupted_run(data_dirs, smoke_run, tmp_path):
  whole_dir, whole = smoke_run
  # The same run cut in two: 10 steps, then resumed to 20.
  config = _smoke(data_dirs)
  train.train_and_evaluate(dataclasses.replace(config, steps=10), tmp_path, progress=False)
  resumed = train.train_and_evaluate(config, tmp_path, resume=True, progress=False)
  _assert_trees_equal(_final_state(whole_dir, data_dirs), _final_state(tmp_path, data_dirs))
  assert resumed["final_test_accuracy"] == whole["final_test_accuracy"]
  assert resumed["global_sparsity"] == whole["global_sparsity"]


def test_same_config_same_summary(data_dirs, smoke_run, tmp_path):
  _, first = smoke_run
  second = train.train_and_evaluate(_smoke(data_dirs), tmp_path, progress=False)
  drop = lambda s: {k: v for k, v in s.items() if k != "wall_time_s"}
  assert drop(first) == drop(second)


def test_two_devices_match_one(data_dirs, smoke_run, tmp_path):
  _, one = smoke_run
  source, tfds_dir = data_dirs
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
         "JAXPRUNE_DATA_DIR": source, "JAXPRUNE_TFDS_DIR": tfds_dir}
  subprocess.run(
      [sys.executable, "-m", "experiments.run", "smoke", "--workdir", str(tmp_path),
       "--no-progress"],
      env=env, check=True, capture_output=True, text=True, timeout=600,
  )
  two = json.loads((tmp_path / "summary.json").read_text())
  assert two["devices"] == 2
  one_state = _final_state(smoke_run[0], data_dirs)
  two_state = _final_state(tmp_path, data_dirs)
  for x, y in zip(jax.tree.leaves(one_state.params), jax.tree.leaves(two_state.params)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-5)
  for x, y in zip(jax.tree.leaves(one_state.masks), jax.tree.leaves(two_state.masks)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert two["global_sparsity"] == pytest.approx(one["global_sparsity"])
  assert two["final_test_accuracy"] == pytest.approx(one["final_test_accuracy"], abs=2e-3)
  assert two["final_test_loss"] == pytest.approx(one["final_test_loss"], rel=1e-3)


def test_relative_workdir(data_dirs, tmp_path, monkeypatch):
  # The README's main job writes to runs/NAME, relative to the current folder.
  monkeypatch.chdir(tmp_path)
  config = _smoke(data_dirs, steps=4, eval_every=0, checkpoint_every=2)
  train.train_and_evaluate(config, "runs/relative", progress=False)
  assert (tmp_path / "runs" / "relative" / "summary.json").exists()
  assert int(train.load_checkpoint(config, "runs/relative").step) == 4


def test_cli_rejects_a_bad_override(capsys):
  assert run.main(["smoke", "--set", "stepz=1"]) == 2
  assert "unknown config field 'stepz'" in capsys.readouterr().err


def test_cli_process_options_need_distributed(capsys):
  # Two processes: tests/test_distributed.py.
  with pytest.raises(SystemExit) as exit_:
    run.main(["smoke", "--num-processes", "2", "--process-id", "1"])
  assert exit_.value.code == 2
  assert ("--num-processes, --process-id: only with --distributed"
          in capsys.readouterr().err)


def test_a_gated_run_logs_density_and_multipliers_and_resumes(data_dirs, tmp_path):
  """An L0-constrained smoke run: its gates are in the checkpoint, its
  records carry the expected density and the multiplier, and a resumed run
  ends where an uninterrupted one does."""
  config = _smoke(data_dirs, method="l0_constrained", density_target=0.5,
                  dual_lr=1.0, gate_learning_rate=0.05)
  summary = train.train_and_evaluate(config, tmp_path / "full", progress=False)
  l0 = summary["l0"]
  assert 0.0 < l0["expected_density"] < 1.0
  assert l0["multipliers"][0] > 0.0  # the density started above the target
  assert set(l0["units"]) == {"Dense_0", "Dense_1", "Dense_2"}
  assert summary["params"] == 266610  # the model's own params, no gates
  records = [json.loads(l) for l in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
  assert all("expected_density" in r for r in records if r["kind"] == "train")

  half = dataclasses.replace(config, steps=10)
  train.train_and_evaluate(half, tmp_path / "resumed", progress=False)
  train.train_and_evaluate(config, tmp_path / "resumed", resume=True, progress=False)
  full = train.load_checkpoint(config, tmp_path / "full")
  resumed = train.load_checkpoint(config, tmp_path / "resumed")
  assert "log_alpha" in full.params["Dense_0"]
  for x, y in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6)


def test_a_before_training_run_keeps_its_masks_and_resumes(data_dirs, tmp_path):
  """SNIP-it prunes before the first step; training keeps exactly its masks,
  the summary reports connectivity, and a resumed run ends where an
  uninterrupted one does (the masks come back from the checkpoint)."""
  config = _smoke(data_dirs, method="snip_it", sparsity=0.95, init_batches=1,
                  init_batch_size=32, rounds=2)
  summary = train.train_and_evaluate(config, tmp_path / "full", progress=False)
  assert summary["global_sparsity"] == pytest.approx(round(0.95 * 266200) / 266200)
  assert summary["connectivity"]["connected"]
  assert summary["connectivity"]["disconnected_layers"] == []
  records = [json.loads(l) for l in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
  assert {r["sparsity"] for r in records} == {summary["global_sparsity"]}

  half = dataclasses.replace(config, steps=10)
  train.train_and_evaluate(half, tmp_path / "resumed", progress=False)
  train.train_and_evaluate(config, tmp_path / "resumed", resume=True, progress=False)
  _assert_trees_equal(train.load_checkpoint(config, tmp_path / "full"),
                      train.load_checkpoint(config, tmp_path / "resumed"))


def test_a_snap_it_run_trains_the_shrunk_network(data_dirs, tmp_path):
  config = _smoke(data_dirs, method="snap_it", sparsity=0.75, init_batches=1,
                  init_batch_size=32, rounds=1, steps=10, eval_every=0)
  summary = train.train_and_evaluate(config, tmp_path, progress=False)
  widths = summary["widths"]
  assert widths["Dense_0"] + widths["Dense_1"] == 400 - 300
  assert widths["Dense_2"] == 10
  assert summary["params"] == (784 * widths["Dense_0"] + widths["Dense_0"]
                               + widths["Dense_0"] * widths["Dense_1"]
                               + widths["Dense_1"] + widths["Dense_1"] * 10 + 10)
  state = train.load_checkpoint(config, tmp_path)
  assert state.params["Dense_1"]["kernel"].shape == (widths["Dense_0"],
                                                     widths["Dense_1"])


def test_snip_it_during_training_scores_fresh_batches_at_each_event(
    data_dirs, tmp_path):
  """SNIP-it during training as its authors run it: at each event the
  sensitivity of the current weights on init_batches fresh batches of a
  stream of their own, in evaluation mode; the masks go into the optimizer
  state, and a resumed run ends where an uninterrupted one does."""
  import jax.numpy as jnp
  import optax

  import jaxprune
  from experiments import batching
  from experiments import methods
  from experiments import state as state_lib

  config = _smoke(data_dirs, method="snip_it_during", sparsity=0.9,
                  begin_step=5, prune_every=5, rounds=1, init_batches=2,
                  init_batch_size=32, eval_every=0)
  train_split, _ = train.load_splits(config)
  state = state_lib.initial_state(config, train_split)
  init_batch = lambda i: batching.train_batch(train_split, 32, config.seed + 1, i)
  between_steps = methods.get("snip_it_during").between_steps
  assert between_steps(config, state, 4, init_batch) is state
  pruned = between_steps(config, state, 10, init_batch)  # event 1

  # By hand: |w * sum_b grad| of the second event's batches (2 and 3), the
  # global top 30% with every tensor's best weight kept.
  def loss(p, batch):
    logits = state.apply_fn({"params": p}, batch["image"], train=False)
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, batch["label"]).mean()
  scores = jaxprune.scores.sensitivity(loss, state.params,
                                [init_batch(2), init_batch(3)])
  names = sorted(state.params)
  flat = np.concatenate([np.asarray(scores[n]["kernel"]).ravel() for n in names])
  kept = 266200 - round(0.7 * 266200)
  threshold = np.sort(flat)[::-1][kept - 1]
  masks = jaxprune.masks_of(pruned.opt_state)
  assert sum(int(masks[n]["kernel"].sum()) for n in names) == kept
  for n in names:
    mask = np.asarray(masks[n]["kernel"])
    assert np.all(np.asarray(scores[n]["kernel"])[mask] >= threshold)
    assert np.all(np.asarray(pruned.params[n]["kernel"])[~mask] == 0)
  assert jnp.all(pruned.params["Dense_0"]["bias"] == state.params["Dense_0"]["bias"])

  summary = train.train_and_evaluate(config, tmp_path / "full", progress=False)
  assert summary["global_sparsity"] == pytest.approx(
      round(0.9 * 266200) / 266200)
  half = dataclasses.replace(config, steps=10)
  train.train_and_evaluate(half, tmp_path / "resumed", progress=False)
  train.train_and_evaluate(config, tmp_path / "resumed", resume=True,
                           progress=False)
  _assert_trees_equal(train.load_checkpoint(config, tmp_path / "full"),
                      train.load_checkpoint(config, tmp_path / "resumed"))
