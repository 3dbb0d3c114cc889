"""Entry point: ``python -m experiments.run CONFIG [--set key=value ...] --workdir DIR``.

Exit status: 0 when the run ends; 2 for a bad command line or config, or a
work directory or resume that is refused; 1 when a checkpoint cannot be
written or none restores; 143 after SIGTERM and 130 after SIGINT (Ctrl-C),
once the current step is saved (``experiments.stopping``).

CONFIG is a preset name (see ``experiments/config.py``) or a JSON file of
config fields.  Example, the README's main job:

    python -m experiments.run lenet300_mnist --workdir runs/lenet300_mnist

Several processes (one per host of a TPU pod slice, or several on one
machine) run one data-parallel job with ``--distributed``: every process
runs the same command; the coordinator's address, the number of processes
and each one's id are detected on Cloud TPU, SLURM and Open MPI, or given:

    python -m experiments.run smoke --workdir /tmp/smoke --distributed \
        --coordinator localhost:12345 --num-processes 2 --process-id 0 &
    python -m experiments.run smoke --workdir /tmp/smoke --distributed \
        --coordinator localhost:12345 --num-processes 2 --process-id 1
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import socket
import sys
import threading

from experiments import config as config_lib

# How long --distributed waits for every process to join (--join-timeout):
# jax.distributed.initialize's own default.
JOIN_TIMEOUT_S = 300.0
# Seconds jax.distributed.initialize itself waits past it, so that the
# runner's error (`_join`) comes first.
_JAX_MARGIN_S = 30


def _parse(argv):
  parser = argparse.ArgumentParser(
      prog="python -m experiments.run",
      description="Train and prune a model; write metrics, summary and plots.",
  )
  parser.add_argument("config", help=f"a preset ({', '.join(config_lib.PRESETS)}) "
                      "or a JSON file of config fields")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override a config field; repeatable")
  parser.add_argument("--workdir", help="output directory (default: runs/NAME)")
  parser.add_argument("--resume", action="store_true",
                      help="continue from the latest checkpoint in the workdir")
  parser.add_argument("--overwrite", action="store_true",
                      help="without --resume: delete the checkpoints in the "
                      "workdir and start afresh (refused otherwise)")
  parser.add_argument("--no-progress", action="store_true",
                      help="no progress on stderr (a bar on a terminal, a "
                      "line every 30 s or so in a log)")
  parser.add_argument("--distributed", action="store_true",
                      help="join the other processes of a multi-process run "
                      "(jax.distributed.initialize); the three options below "
                      "are detected on Cloud TPU, SLURM and Open MPI")
  parser.add_argument("--coordinator", metavar="HOST:PORT",
                      help="with --distributed: the address of process 0, "
                      "where the coordination service listens")
  parser.add_argument("--num-processes", type=int, metavar="N",
                      help="with --distributed: how many processes take part")
  parser.add_argument("--process-id", type=int, metavar="I",
                      help="with --distributed: this process, 0 to N - 1")
  parser.add_argument("--join-timeout", type=float, metavar="SECONDS",
                      help="with --distributed: how long to wait for all "
                      "processes to join before failing with an error that "
                      f"names them (default {JOIN_TIMEOUT_S:.0f})")
  args = parser.parse_args(argv)
  given = [f"--{name.replace('_', '-')}"
           for name in ("coordinator", "num_processes", "process_id",
                        "join_timeout")
           if getattr(args, name) is not None]
  if given and not args.distributed:
    parser.error(f"{', '.join(given)}: only with --distributed")
  if args.join_timeout is not None and not args.join_timeout > 0:
    parser.error(f"--join-timeout must be a positive number of seconds, got "
                 f"{args.join_timeout}")
  return args


class JoinTimeoutError(RuntimeError):
  """The processes of a ``--distributed`` run did not all join in time."""


def _join(args) -> None:
  """Joins the processes of a multi-process run (``--distributed``).

  CPU processes exchange the results of their collectives through gloo (over
  TCP, bootstrapped by the coordination service): JAX 0.10 uses it by
  default, older versions only when asked.  The option configures the CPU
  client alone, so it changes nothing on TPU or GPU.

  ``jax.distributed.initialize`` waits for every process to register; when
  one never does, it ends the process from C++ (``DEADLINE_EXCEEDED``, a
  fatal log that no ``except`` catches, and no word of which process is
  missing).  So it runs in a thread, given ``--join-timeout`` plus a margin,
  and past ``--join-timeout`` this raises :class:`JoinTimeoutError` instead,
  naming the coordinator, the number of processes, this process and, where
  it can be known, who is missing.
  """
  import jax

  if jax.config.jax_cpu_collectives_implementation is None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  timeout = JOIN_TIMEOUT_S if args.join_timeout is None else args.join_timeout
  failed = []

  def initialize():
    try:
      jax.distributed.initialize(
          coordinator_address=args.coordinator,
          num_processes=args.num_processes,
          process_id=args.process_id,
          initialization_timeout=math.ceil(timeout) + _JAX_MARGIN_S,
      )
    except BaseException as error:  # pylint: disable=broad-except  # re-raised
      failed.append(error)

  thread = threading.Thread(target=initialize, daemon=True,
                            name="jax.distributed.initialize")
  thread.start()
  thread.join(timeout)
  if thread.is_alive():  # left behind: the process is about to end
    raise JoinTimeoutError(_not_joined(args, timeout))
  if failed:
    raise failed[0]


def _not_joined(args, timeout: float) -> str:
  """Who did not join, as far as this process can tell."""
  where = args.coordinator or "the coordinator detected by JAX"
  count = (f"{args.num_processes} processes" if args.num_processes is not None
           else "the number of processes detected by JAX")
  me = ("this process" if args.process_id is None
        else f"this process (id {args.process_id})")
  if args.process_id == 0 or args.coordinator is None:
    if args.process_id == 0 and args.num_processes is not None:
      others = ("process 1" if args.num_processes == 2 else
                f"at least one of processes 1 to {args.num_processes - 1}")
      missing = (f"{others} did not join (process 0 runs the coordinator and "
                 "cannot tell which of the others are missing)")
    else:
      missing = "at least one of the other processes did not join"
  elif not _answers(args.coordinator):
    missing = (f"process 0 (the coordinator) is not listening at "
               f"{args.coordinator}: it was not started, has stopped, or "
               "listens elsewhere")
  else:
    missing = ("the coordinator (process 0) answers, so at least one of the "
               "other processes did not join")
  return (f"--distributed: not all {count} joined within {timeout:g} s at "
          f"{where} ({me} did): {missing}. Start every process with the same "
          "--coordinator and --num-processes and its own --process-id, or "
          "wait longer with --join-timeout SECONDS")


def _answers(address: str) -> bool:
  """Whether something accepts TCP connections at ``HOST:PORT``."""
  host, _, port = address.rpartition(":")
  try:
    with socket.create_connection((host.strip("[]"), int(port)), timeout=5):
      return True
  except (OSError, ValueError):
    return False


class _NoOrbaxErrors(logging.Filter):
  """Drops Orbax's error reports (with a traceback per thread): the runner
  reports a failed checkpoint write itself, in one line."""

  def filter(self, record):
    return not (record.levelno >= logging.ERROR
                and f"{os.sep}orbax{os.sep}" in record.pathname)


def quiet_orbax_errors() -> None:
  """Orbax's error reports are left to the runner (``_NoOrbaxErrors``)."""
  logger = logging.getLogger("absl")
  if not any(isinstance(f, _NoOrbaxErrors) for f in logger.filters):
    logger.addFilter(_NoOrbaxErrors())


def main(argv=None) -> int:
  args = _parse(sys.argv[1:] if argv is None else argv)
  try:
    config = config_lib.resolve(args.config, args.set)
  except ValueError as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  import jax  # after argument parsing, so that --help is fast

  if args.distributed:
    try:
      _join(args)
    except ValueError as error:  # e.g. nothing detected, no --coordinator
      print(f"error: --distributed: {error} (outside Cloud TPU, SLURM and "
            "Open MPI, give --coordinator HOST:PORT, --num-processes N and "
            "--process-id I)", file=sys.stderr)
      return 2
    except JoinTimeoutError as error:
      print(f"error: {error}", file=sys.stderr)
      return 1
  from experiments import checkpoint_writer
  from experiments import resume_check
  from experiments import stopping
  from experiments import train

  workdir = args.workdir or os.path.join("runs", config.name)
  api = " (Flax NNX)" if config.flax_api == "nnx" else ""
  print(f"{config.name}: {config.model}{api} on {config.dataset}, method "
        f"{config.method}, target sparsity {config.sparsity}, {config.steps} "
        f"steps, {jax.device_count()} device(s) [{jax.default_backend()}]"
        + (f", process {jax.process_index()} of {jax.process_count()}"
           if jax.process_count() > 1 else ""))
  quiet_orbax_errors()
  try:
    with stopping.StopSignals(enabled=jax.process_count() == 1) as stop:
      summary = train.train_and_evaluate(
          config, workdir, resume=args.resume, progress=not args.no_progress,
          overwrite=args.overwrite, stop=stop,
      )
  except stopping.Stopped as stopped:
    print(f"{stopped}", file=sys.stderr, flush=True)
    return stopping.exit_code(stopped.signum)
  except checkpoint_writer.CheckpointWriteError as error:
    print(f"error: {error}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    # Orbax's threads may wait for the failed write for ever: no shutdown.
    os._exit(1)
  except (FileExistsError, resume_check.ConfigMismatch, train.LogError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  except train.CheckpointError as error:
    print(f"error: {error}", file=sys.stderr)
    return 1
  print(f"final test accuracy {summary['final_test_accuracy']:.4f} "
        f"(best {summary['best_test_accuracy']:.4f}), global sparsity "
        f"{summary['global_sparsity']:.4f}, {summary['wall_time_s']:.0f} s")
  if jax.process_index() == 0:  # the others write only checkpoints
    print(f"wrote {workdir}/summary.json, {workdir}/metrics.jsonl, "
          f"{workdir}/training.png, {workdir}/layer_sparsity.png")
  return 0


if __name__ == "__main__":
  sys.exit(main())
