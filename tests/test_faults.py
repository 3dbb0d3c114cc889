"""Faults: runs killed during training and during checkpoint writes, and
corrupt, truncated or missing checkpoint files."""

import gc
import json
import re
import shutil

import fault_trials
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments import config as config_lib
from experiments import state as state_lib
from experiments import train

pytestmark = [
    pytest.mark.usefixtures("splits_read_once"),
    # When one array of a checkpoint does not read, Orbax leaves the reads of
    # the others unawaited; they are reported when collected (see below).
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]


@pytest.fixture(autouse=True)
def _collect_unawaited_reads():
  """Collects Orbax's unawaited reads here, where their warnings are
  expected and ignored, rather than in whichever test runs next."""
  yield
  gc.collect()

# fault_trials' run, shorter: 24 steps, checkpoints every 2 (22 and 24 kept).
_OVERRIDES = (*fault_trials.OVERRIDES, "steps=24")


def _overrides(data_dirs) -> tuple[str, ...]:
  source, tfds_dir = data_dirs
  return (*_OVERRIDES, f"source_dir={source}", f"tfds_dir={tfds_dir}")


def _config(data_dirs) -> config_lib.Config:
  return config_lib.resolve("smoke", _overrides(data_dirs))


@pytest.fixture(scope="module")
def reference(data_dirs, tmp_path_factory):
  """An uninterrupted run, in this process."""
  workdir = tmp_path_factory.mktemp("reference")
  train.train_and_evaluate(_config(data_dirs), workdir, progress=False)
  return workdir


def _copy(reference, tmp_path):
  return shutil.copytree(reference, tmp_path / "run")


def _largest_file(checkpoint):
  return max((p for p in checkpoint.rglob("*") if p.is_file()),
             key=lambda p: p.stat().st_size)


def _truncate(checkpoint):
  path = _largest_file(checkpoint)
  path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garble(checkpoint):
  path = _largest_file(checkpoint)
  data = bytearray(path.read_bytes())
  start = len(data) // 10
  data[start:start + 8] = bytes(b ^ 0xFF for b in data[start:start + 8])
  path.write_bytes(bytes(data))


def _delete(checkpoint):
  _largest_file(checkpoint).unlink()


def _change_digest(checkpoint):
  path = checkpoint / "digest" / "metadata"
  digest = json.loads(path.read_text())
  digest[".params['Dense_0']['kernel']"] = "0" * 64
  path.write_text(json.dumps(digest))


def _assert_same(a: train.TrainState, b: train.TrainState) -> None:
  paths = lambda t: [jax.tree_util.keystr(p) for p, _ in jax.tree.leaves_with_path(t)]
  assert paths(a) == paths(b)
  for path, x, y in zip(paths(a), jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=path)


@pytest.mark.long_running(27)
def test_killed_runs_resume_to_the_uninterrupted_result(data_dirs, reference,
                                                        tmp_path):
  """Two kills in a row, one during training and one during a checkpoint
  write (see tests/fault_trials.py), then a resumed run that finishes."""
  lines = []
  trials = fault_trials.run(2, seed=0, root=tmp_path,
                            overrides=_overrides(data_dirs),
                            reference=reference, out=lines.append)
  assert sorted(t.phase for t in trials) == ["checkpoint write", "training"]
  assert not any(t.finished for t in trials)
  assert "final state equals the reference bitwise" in lines[-1], lines


@pytest.mark.parametrize("corrupt, problem", [
    (_truncate, "a file is missing, cut short or garbled"),
    (_garble, "garbled"),
    (_delete, "a file is missing, cut short or garbled"),
    (_change_digest, "do not match the sha256 saved with them (1 differ: "
                     ".params['Dense_0']['kernel'])"),
], ids=["truncated", "garbled", "deleted", "changed digest"])
def test_corrupt_checkpoint_is_refused(data_dirs, reference, tmp_path, corrupt,
                                       problem):
  workdir = _copy(reference, tmp_path)
  checkpoint = workdir / "checkpoints" / "24"
  corrupt(checkpoint)
  with pytest.raises(train.CheckpointError, match=re.escape(
      f"checkpoint of step 24 at {checkpoint} does not restore: ")) as error:
    train.load_checkpoint(_config(data_dirs), workdir)
  assert problem in str(error.value)
  assert (error.value.path, error.value.step) == (checkpoint, 24)
  assert "See full TensorStore details" not in str(error.value)
  # The one before still loads.
  assert int(train.load_checkpoint(_config(data_dirs), workdir, step=22).step) == 22


def test_resume_falls_back_past_a_truncated_checkpoint(data_dirs, reference,
                                                       tmp_path, capsys):
  workdir = _copy(reference, tmp_path)
  bad = workdir / "checkpoints" / "24"
  _truncate(bad)
  files = sorted(p.relative_to(bad) for p in bad.rglob("*"))
  train.train_and_evaluate(_config(data_dirs), workdir, resume=True,
                           progress=False)
  err = capsys.readouterr().err
  assert f"warning: checkpoint of step 24 at {bad} does not restore" in err
  moved = workdir / "bad_checkpoints" / "24"
  assert f"moved the checkpoint of step 24 to {moved}; resuming from step 22" in err
  assert sorted(p.relative_to(moved) for p in moved.rglob("*")) == files
  _assert_same(train.load_checkpoint(_config(data_dirs), workdir),
               train.load_checkpoint(_config(data_dirs), reference))
  assert ((workdir / "metrics.jsonl").read_text()
          == (reference / "metrics.jsonl").read_text())


def test_resume_without_a_checkpoint_that_restores_is_a_clear_error(
    data_dirs, reference, tmp_path):
  workdir = _copy(reference, tmp_path)
  checkpoints = workdir / "checkpoints"
  _truncate(checkpoints / "24")
  _delete(checkpoints / "22")
  with pytest.raises(train.CheckpointError) as error:
    train.train_and_evaluate(_config(data_dirs), workdir, resume=True,
                             progress=False)
  message = str(error.value)
  assert message.startswith(f"{checkpoints} does not restore: none of its "
                            "checkpoints does (checkpoint of step 24 at ")
  assert f"checkpoint of step 22 at {checkpoints / '22'}" in message
  assert sorted(p.name for p in checkpoints.iterdir()) == ["22", "24"]
  assert not (workdir / "bad_checkpoints").exists()


def test_load_checkpoint_names_the_steps_there_are(data_dirs, reference):
  with pytest.raises(FileNotFoundError, match=re.escape(
      f"no checkpoint of step 10 in {reference / 'checkpoints'} (steps: [22, 24])")):
    train.load_checkpoint(_config(data_dirs), reference, step=10)


def test_a_checkpoint_without_digest_restores_unchecked(data_dirs, tmp_path):
  """Checkpoints written before the digests: the state alone, item 'default'."""
  config = _config(data_dirs)
  state = state_lib.initial_state(config)
  with ocp.CheckpointManager(tmp_path / "checkpoints") as manager:
    manager.save(0, args=ocp.args.StandardSave(state))
  _assert_same(train.load_checkpoint(config, tmp_path), state)


def test_a_fresh_run_deletes_the_checkpoints_of_an_earlier_one(
    data_dirs, reference, tmp_path, capsys):
  """Left in place, they would hide its own: Orbax writes no step at or
  below the latest one on disk."""
  workdir = _copy(reference, tmp_path)
  config = config_lib.apply_overrides(_config(data_dirs), ["steps=2"])
  train.train_and_evaluate(config, workdir, progress=False)
  assert ("warning: a fresh run: deleting the checkpoints of steps [22, 24] in "
          f"{workdir / 'checkpoints'}") in capsys.readouterr().err
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2"]
  assert int(train.load_checkpoint(config, workdir).step) == 2
