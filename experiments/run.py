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
import os
import sys

from experiments import config as config_lib


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
  args = parser.parse_args(argv)
  given = [f"--{name.replace('_', '-')}"
           for name in ("coordinator", "num_processes", "process_id")
           if getattr(args, name) is not None]
  if given and not args.distributed:
    parser.error(f"{', '.join(given)}: only with --distributed")
  return args


def _join(args) -> None:
  """Joins the processes of a multi-process run (``--distributed``).

  CPU processes exchange the results of their collectives through gloo (over
  TCP, bootstrapped by the coordination service): JAX 0.10 uses it by
  default, older versions only when asked.  The option configures the CPU
  client alone, so it changes nothing on TPU or GPU.
  """
  import jax

  if jax.config.jax_cpu_collectives_implementation is None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
      coordinator_address=args.coordinator,
      num_processes=args.num_processes,
      process_id=args.process_id,
  )


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
  from experiments import checkpoint_writer
  from experiments import resume_check
  from experiments import stopping
  from experiments import train

  workdir = args.workdir or os.path.join("runs", config.name)
  print(f"{config.name}: {config.model} on {config.dataset}, method "
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
