"""Two processes joined by ``jax.distributed`` end where one process ends,
and resume past a bad checkpoint together.

Two CPU processes of one device each, coordinated over loopback and
exchanging their collectives through gloo, run the experiment runner
data-parallel (``--distributed``); one process with two devices runs the same
config.  Both see the same global batches, so they end with the same masks,
the same params and the same test accuracy.  Measured here (JAX 0.10.2,
gloo): every leaf of the train state bitwise equal (params max abs diff 0),
metrics.jsonl identical, test accuracy 0.8479 in both; the tolerances below
leave room for another order of the cross-device sums elsewhere.  Then the
two processes' newest checkpoint is cut short and both resume: each warns,
only the first moves it aside, and they end where they ended.
"""

import dataclasses
import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from experiments import config as config_lib
from experiments import data
from experiments import train

REPO = pathlib.Path(__file__).resolve().parent.parent

# LeNet-300-100 for 30 steps; magnitude pruning updates the masks every 5
# steps from step 5 to 20 (logged sparsity 0, 0, 0.63, 0.87, 0.9, 0.9); one
# evaluation (the 10,000 test images) at the end.
OVERRIDES = ["steps=30", "begin_step=5", "end_step=20", "frequency=5",
             "log_every=5", "eval_every=0", "checkpoint_every=0",
             "eval_batch_size=2500"]
# For the three runs together, which take about 75 s of CPU time in all.
TIMEOUT_S = 300


def _gloo_missing() -> str | None:
  """Why this jax build cannot run collectives across CPU processes, if so."""
  from jax._src import lib  # the gloo factory has no public name

  if not hasattr(getattr(lib, "_jax", None), "make_gloo_tcp_collectives"):
    return (f"jaxlib {lib.version_str} has no gloo CPU collectives "
            "(make_gloo_tcp_collectives), so CPU processes cannot join")
  return None


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start(log, workdir, devices, data_dirs, *extra):
  """A runner process on ``devices`` CPU devices, its output going to ``log``."""
  source, tfds_dir = data_dirs
  env = dict(
      os.environ,
      XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
      JAX_PLATFORMS="cpu",
      JAXPRUNE_DATA_DIR=source,
      JAXPRUNE_TFDS_DIR=tfds_dir,
      PYTHONPATH=os.pathsep.join(
          filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
  )
  command = [sys.executable, "-m", "experiments.run", "smoke", "--workdir",
             str(workdir), "--no-progress"]
  for override in OVERRIDES:
    command += ["--set", override]
  command += extra  # after OVERRIDES, so that its own --set wins
  with open(log, "w") as out:
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=out,
                            stderr=subprocess.STDOUT)


def _finish(processes: dict, logs: dict) -> dict[str, str]:
  """Waits for every process; kills them all past the timeout, or as soon as
  one fails (its partner would wait for it).  Returns the output of each;
  fails with the output of all if one did not succeed."""
  deadline = time.monotonic() + TIMEOUT_S
  timed_out = False
  try:
    while any(p.poll() is None for p in processes.values()):
      timed_out = time.monotonic() > deadline
      if timed_out or any(p.poll() for p in processes.values()):
        break
      time.sleep(0.2)
  finally:
    for process in processes.values():
      if process.poll() is None:
        process.kill()
        process.wait()
  outputs = {name: logs[name].read_text() for name in processes}
  why = f"no result after {TIMEOUT_S} s" if timed_out else "another run failed"
  failed = [f"{name}: exit status {p.returncode}" if p.returncode > 0
            else f"{name}: killed ({why})"
            for name, p in processes.items() if p.returncode]
  if failed:
    pytest.fail("; ".join(failed) + "\n" + "\n".join(
        f"--- {name}\n{text[-3000:]}" for name, text in outputs.items()))
  return outputs


def _config(data_dirs):
  source, tfds_dir = data_dirs
  return dataclasses.replace(config_lib.resolve("smoke", OVERRIDES),
                             source_dir=source, tfds_dir=tfds_dir)


def _records(workdir):
  return [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.long_running(60)
def test_two_processes_end_where_one_process_ends_and_resume_past_a_bad_checkpoint(
    data_dirs, tmp_path):
  if reason := _gloo_missing():
    pytest.skip(reason)
  source, tfds_dir = data_dirs
  # Prepared here, not by two runs at once.
  data.builder("mnist", source_dir=source, tfds_dir=tfds_dir).download_and_prepare()
  port = _free_port()
  # The two processes also checkpoint at steps 10, 20 and 30 (the last two
  # kept), for the resume below.
  joined = ["--distributed", "--coordinator", f"localhost:{port}",
            "--num-processes", "2", "--set", "checkpoint_every=10"]
  one, two = tmp_path / "one_process", tmp_path / "two_processes"
  logs = {name: tmp_path / f"{name.replace(' ', '_')}.log"
          for name in ("one process", "process 0", "process 1")}
  outputs = _finish({
      "one process": _start(logs["one process"], one, 2, data_dirs),
      "process 0": _start(logs["process 0"], two, 1, data_dirs, *joined,
                          "--process-id", "0"),
      "process 1": _start(logs["process 1"], two, 1, data_dirs, *joined,
                          "--process-id", "1"),
  }, logs)
  assert "2 device(s) [cpu], process 1 of 2" in outputs["process 1"]
  assert "wrote" in outputs["process 0"] and "wrote" not in outputs["process 1"]

  # The masks changed during the run, and the same way in both.
  records = _records(one)
  sparsity = [r["sparsity"] for r in records if r["kind"] == "train"]
  assert sparsity == sorted(sparsity) and len(set(sparsity)) > 2, sparsity
  assert sparsity[-1] == pytest.approx(0.9, abs=1e-5)
  assert len(_records(two)) == len(records)
  for found, expected in zip(_records(two), records):
    assert found.pop("kind") == expected.pop("kind")
    assert found == pytest.approx(expected, rel=1e-6)

  config = _config(data_dirs)
  expected = train.load_checkpoint(config, one)
  found = train.load_checkpoint(config, two)
  assert int(found.step) == 30
  for x, y in zip(jax.tree.leaves(expected.masks), jax.tree.leaves(found.masks),
                  strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  for x, y in zip(jax.tree.leaves(expected.params), jax.tree.leaves(found.params),
                  strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)

  summaries = [json.loads((w / "summary.json").read_text()) for w in (one, two)]
  assert [s["devices"] for s in summaries] == [2, 2]
  assert summaries[1]["global_sparsity"] == summaries[0]["global_sparsity"]
  assert summaries[1]["final_test_accuracy"] == pytest.approx(
      summaries[0]["final_test_accuracy"], abs=1e-4)  # at most one image

  # The newest checkpoint cut short: resumed on both processes, they fall
  # back to step 20, the first process alone moves the bad one aside, and
  # the run ends where it ended.
  bad = two / "checkpoints" / "30"
  largest = max((p for p in bad.rglob("*") if p.is_file()),
                key=lambda p: p.stat().st_size)
  largest.write_bytes(largest.read_bytes()[: largest.stat().st_size // 2])
  port = _free_port()
  joined[2] = f"localhost:{port}"
  logs = {name: tmp_path / f"resumed_{name.replace(' ', '_')}.log"
          for name in ("process 0", "process 1")}
  outputs = _finish({
      f"process {i}": _start(logs[f"process {i}"], two, 1, data_dirs, *joined,
                             "--process-id", str(i), "--resume")
      for i in (0, 1)
  }, logs)
  moved = two / "bad_checkpoints" / "30"
  for text in outputs.values():
    assert f"warning: checkpoint of step 30 at {bad} does not restore" in text
  assert (f"moved the checkpoint of step 30 to {moved}; resuming from step 20"
          in outputs["process 0"])
  assert "moved the checkpoint" not in outputs["process 1"]
  assert moved.is_dir() and sorted(p.name for p in bad.parent.iterdir()) == [
      "20", "30"]
  resumed = train.load_checkpoint(config, two)
  assert int(resumed.step) == 30
  for x, y in zip(jax.tree.leaves(expected.masks), jax.tree.leaves(resumed.masks),
                  strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  for x, y in zip(jax.tree.leaves(expected.params),
                  jax.tree.leaves(resumed.params), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)
