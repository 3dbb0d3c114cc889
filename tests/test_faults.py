"""Faults: runs killed during training and during checkpoint writes, and
corrupt, truncated or missing checkpoint files."""

import gc
import json
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import fault_trials
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments import config as config_lib
from experiments import resume_check
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


def test_a_fresh_run_with_overwrite_deletes_the_checkpoints_of_an_earlier_one(
    data_dirs, reference, tmp_path, capsys):
  """Left in place, they would hide its own: Orbax writes no step at or
  below the latest one on disk."""
  workdir = _copy(reference, tmp_path)
  config = config_lib.apply_overrides(_config(data_dirs), ["steps=2"])
  train.train_and_evaluate(config, workdir, progress=False, overwrite=True)
  assert ("warning: --overwrite: deleting the checkpoints of steps [22, 24] in "
          f"{workdir / 'checkpoints'}") in capsys.readouterr().err
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2"]
  assert int(train.load_checkpoint(config, workdir).step) == 2


# The runner's own faults: failed writes, signals, resumes and work
# directories that do not fit, logs that do not read.

_REPO = pathlib.Path(__file__).resolve().parent.parent

# Runs experiments.run with checkpoints.save failing from its second call
# on, as on a disk turned read-only or full (chmod does not stop root): the
# checkpoints directory is moved aside and a file put in its place.
_SABOTAGE = """
import pathlib, shutil, sys
from experiments import checkpoints, run
save, calls = checkpoints.save, []
def failing(manager, step, state, *rest):
  calls.append(step)
  if len(calls) == 2:
    manager.wait_until_finished()
    where = pathlib.Path(manager.directory)
    shutil.move(where, where.with_name("moved"))
    where.write_text("")
  save(manager, step, state, *rest)
checkpoints.save = failing
sys.exit(run.main(sys.argv[1:]))
"""


def _sets(overrides):
  return [arg for o in overrides for arg in ("--set", o)]


def _env(tmp_path):
  return {**fault_trials.environment(tmp_path), "PYTHONPATH": str(_REPO)}


def test_a_failed_checkpoint_write_stops_the_run_at_once(data_dirs, tmp_path):
  workdir = tmp_path / "run"
  script = tmp_path / "sabotage.py"
  script.write_text(_SABOTAGE)
  started = time.perf_counter()
  done = subprocess.run(
      [sys.executable, str(script), "smoke",
       *_sets(_overrides(data_dirs)), "--workdir", str(workdir),
       "--no-progress"], env=_env(tmp_path), cwd=_REPO, capture_output=True,
      text=True, timeout=300)
  assert done.returncode == 1, done.stderr
  errors = [l for l in done.stderr.splitlines() if l.strip()]
  assert errors == [
      f"error: the checkpoint of step 4 could not be written to "
      f"{workdir / 'checkpoints' / '4'}: NotADirectoryError: [Errno 20] Not a "
      f"directory: '{workdir / 'checkpoints' / '4.orbax-checkpoint-tmp'}'; the "
      "newest checkpoint written is step 2 (--resume continues from it)"]
  assert fault_trials.logged_step(workdir) <= 5  # not trained on
  assert time.perf_counter() - started < 120
  (workdir / "checkpoints").unlink()
  (workdir / "moved").rename(workdir / "checkpoints")
  assert int(train.load_checkpoint(_config(data_dirs), workdir).step) == 2


def _signalled(data_dirs, tmp_path, signum, overrides=()):
  """A run sent ``signum`` once it has logged a step; its exit status,
  stderr and last logged step."""
  workdir = tmp_path / "run"
  overrides = (*_overrides(data_dirs), *overrides)
  with open(tmp_path / "log.txt", "w") as log:
    process = subprocess.Popen(
        fault_trials.runner(workdir, overrides), env=_env(tmp_path), cwd=_REPO,
        stdout=subprocess.DEVNULL, stderr=log)
    while fault_trials.logged_step(workdir) < 1 and process.poll() is None:
      time.sleep(0.001)
    process.send_signal(signum)
    code = process.wait(timeout=300)
  return code, (tmp_path / "log.txt").read_text(), fault_trials.logged_step(workdir)


@pytest.mark.long_running(20)
def test_sigterm_saves_the_current_step_and_resumes_from_it(
    data_dirs, reference, tmp_path):
  every_ten = ("checkpoint_every=10",)
  code, err, step = _signalled(data_dirs, tmp_path, signal.SIGTERM, every_ten)
  assert code == 143, err
  assert 1 <= step < 24
  assert (f"stopped by SIGTERM after step {step}: saved the checkpoint of step "
          f"{step}; --resume continues from it") in err
  workdir = tmp_path / "run"
  assert max(fault_trials.on_disk(workdir)[0]) == step
  fault_trials.run_to_end(workdir, _env(tmp_path), tmp_path / "log.txt",
                          (*_overrides(data_dirs), *every_ten))
  _assert_same(train.load_checkpoint(_config(data_dirs), workdir),
               train.load_checkpoint(_config(data_dirs), reference))
  assert ((workdir / "metrics.jsonl").read_text()
          == (reference / "metrics.jsonl").read_text())


def test_ctrl_c_stops_with_one_line(data_dirs, tmp_path):
  code, err, step = _signalled(data_dirs, tmp_path, signal.SIGINT)
  assert code == 130, err
  assert "Traceback" not in err
  assert [l for l in err.splitlines() if l.strip()] == [
      f"stopped by SIGINT after step {step}: saved the checkpoint of step "
      f"{step}; --resume continues from it"]


@pytest.mark.parametrize("change, differing", [
    ("sparsity=0.5", "sparsity: 0.9 -> 0.5"),
    ("method=random", "method: 'magnitude' -> 'random'"),
    ("seed=1", "seed: 0 -> 1"),
])
def test_resume_with_another_config_is_refused(data_dirs, reference, tmp_path,
                                               change, differing):
  workdir = _copy(reference, tmp_path)
  config = config_lib.apply_overrides(_config(data_dirs), [change])
  with pytest.raises(resume_check.ConfigMismatch, match=re.escape(
      f"--resume: the checkpoint of step 24 at {workdir / 'checkpoints' / '24'}"
      f" was written with another config; differing: {differing} (a resumed "
      "run may change only steps, log_every")):
    train.train_and_evaluate(config, workdir, resume=True, progress=False)
  assert fault_trials.on_disk(workdir)[0] == [22, 24]


def test_a_resume_may_change_the_length_and_the_bookkeeping():
  old = config_lib.to_dict(config_lib.resolve("smoke"))
  longer = config_lib.resolve("smoke", ["steps=40", "eval_every=5",
                                        "log_every=1", "checkpoint_every=0"])
  assert resume_check.differences(old, longer) == []
  # Unless the length moves what it schedules: end_step 0 follows it.
  old = config_lib.to_dict(config_lib.resolve("smoke", ["end_step=0"]))
  assert resume_check.differences(
      old, config_lib.resolve("smoke", ["end_step=0", "steps=40"])) == [
          "steps: 20 -> 40: the pruning would end at step 30, not 15 "
          "(end_step 0 is three quarters of the run; set end_step)"]


def test_a_fresh_run_refuses_a_workdir_with_checkpoints(data_dirs, reference,
                                                       tmp_path):
  workdir = _copy(reference, tmp_path)
  with pytest.raises(FileExistsError, match=re.escape(
      f"{workdir / 'checkpoints'} holds the checkpoints of steps [22, 24]: "
      "--resume continues from them, --overwrite deletes them")):
    train.train_and_evaluate(_config(data_dirs), workdir, progress=False)
  assert fault_trials.on_disk(workdir)[0] == [22, 24]


def test_cli_refuses_names_that_leave_runs_and_occupied_workdirs(
    data_dirs, reference, tmp_path, capsys):
  from experiments import run
  from experiments import sweep

  assert run.main(["smoke", "--set", "name=../../../x"]) == 2
  assert "cannot name a work directory under runs/" in capsys.readouterr().err
  workdir = _copy(reference, tmp_path)
  sets = _sets(_overrides(data_dirs))
  assert run.main(["smoke", *sets, "--workdir", str(workdir),
                   "--no-progress"]) == 2
  assert "--overwrite deletes them" in capsys.readouterr().err
  with pytest.raises(SystemExit) as exit_:
    sweep.main(["flipout", "--set", "name=x", "--only-collect"])
  assert exit_.value.code == 2
  assert ("--set name=x: every cell of a sweep has its own name (and work "
          "directory)") in capsys.readouterr().err


def test_a_garbled_log_line_is_named(data_dirs, reference, tmp_path):
  workdir = _copy(reference, tmp_path)
  log = workdir / "metrics.jsonl"
  lines = log.read_text().splitlines(keepends=True)
  lines[6] = '{"kind": "train", "st\n'
  log.write_text("".join(lines))
  with pytest.raises(train.LogError, match=re.escape(
      f"{log}, line 7: not a JSON record (Unterminated string")):
    train.train_and_evaluate(_config(data_dirs), workdir, resume=True,
                             progress=False)


def test_a_deleted_log_keeps_the_best_accuracy(data_dirs, tmp_path, capsys):
  """The bests are in the checkpoint: a resumed run without its log reports
  the best of the evaluations before it too."""
  config = config_lib.apply_overrides(_config(data_dirs), [
      "steps=8", "eval_every=1", "learning_rate=0.5"])  # 0.283 at 7, 0.273 at 8
  first = train.train_and_evaluate(config, tmp_path, progress=False)
  assert first["best_test_accuracy"] > first["final_test_accuracy"]
  (tmp_path / "metrics.jsonl").unlink()
  again = train.train_and_evaluate(config, tmp_path, resume=True, progress=False)
  assert again["best_test_accuracy"] == first["best_test_accuracy"]
  assert f"{tmp_path / 'metrics.jsonl'} is missing" in capsys.readouterr().err
