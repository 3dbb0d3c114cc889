"""A ``--distributed`` run whose other processes never join fails within
``--join-timeout`` with an error naming the coordinator, the number of
processes, this process and who is missing (it used to wait 300 s and end
in a fatal ``DEADLINE_EXCEEDED`` from C++, naming nobody).

Each process is started alone, as the only one of a run of two, with a
timeout of a few seconds; no data is loaded (the join comes first).
"""

import os
import pathlib
import socket
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
JOIN_TIMEOUT_S = 3
# Python and JAX starting, the timeout, and a loaded CPU: the test fails
# rather than hangs if the runner waits much longer than it should.
BOUND_S = 90


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _alone(tmp_path, port, process_id, *extra):
  env = dict(
      os.environ,
      JAX_PLATFORMS="cpu",
      XLA_FLAGS="--xla_force_host_platform_device_count=1",
      # Never consulted (the join fails first); never a download.
      JAXPRUNE_DATA_DIR=str(tmp_path / "no_data"),
      JAXPRUNE_TFDS_DIR=str(tmp_path / "tfds"),
      PYTHONPATH=os.pathsep.join(
          filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
  )
  command = [sys.executable, "-m", "experiments.run", "smoke", "--no-progress",
             "--workdir", str(tmp_path / f"run{process_id}"), "--distributed",
             "--coordinator", f"localhost:{port}", "--num-processes", "2",
             "--process-id", str(process_id), *extra]
  return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _finish(process) -> str:
  try:
    output, _ = process.communicate(timeout=BOUND_S)
  except subprocess.TimeoutExpired:
    process.kill()
    output, _ = process.communicate()
    raise AssertionError(
        f"still waiting after {BOUND_S} s:\n{output[-3000:]}") from None
  return output


def test_a_process_whose_partner_never_joins_says_who_is_missing(tmp_path):
  # Process 0 alone runs the coordinator and waits for process 1; process 1
  # alone (another run, another port) finds no coordinator.
  port0, port1 = _free_port(), _free_port()
  start = time.monotonic()
  first = _alone(tmp_path, port0, 0, "--join-timeout", str(JOIN_TIMEOUT_S))
  second = _alone(tmp_path, port1, 1, "--join-timeout", str(JOIN_TIMEOUT_S))
  outputs = [_finish(first), _finish(second)]
  elapsed = time.monotonic() - start
  assert first.returncode == 1, outputs[0][-3000:]
  assert second.returncode == 1, outputs[1][-3000:]
  assert elapsed < BOUND_S
  assert (f"error: --distributed: not all 2 processes joined within "
          f"{JOIN_TIMEOUT_S} s at localhost:{port0} (this process (id 0) did): "
          "process 1 did not join") in outputs[0], outputs[0][-3000:]
  assert (f"error: --distributed: not all 2 processes joined within "
          f"{JOIN_TIMEOUT_S} s at localhost:{port1} (this process (id 1) did): "
          f"process 0 (the coordinator) is not listening at localhost:{port1}"
          ) in outputs[1], outputs[1][-3000:]
  for output in outputs:
    assert "--join-timeout SECONDS" in output
    assert "DEADLINE_EXCEEDED" not in output


def test_join_timeout_is_checked():
  from experiments import run

  result = subprocess.run(
      [sys.executable, "-m", "experiments.run", "smoke", "--join-timeout", "5"],
      cwd=REPO, capture_output=True, text=True, timeout=60,
      env=dict(os.environ, PYTHONPATH=str(REPO)))
  assert result.returncode == 2
  assert "--join-timeout: only with --distributed" in result.stderr
  assert run.JOIN_TIMEOUT_S == 300  # jax.distributed.initialize's default
