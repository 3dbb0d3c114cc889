"""Entry point: ``python -m experiments.run CONFIG [--set key=value ...] --workdir DIR``.

CONFIG is a preset name (see ``experiments/config.py``) or a JSON file of
config fields.  Example, the README's main job:

    python -m experiments.run lenet300_mnist --workdir runs/lenet300_mnist
"""

from __future__ import annotations

import argparse
import json
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
  parser.add_argument("--no-progress", action="store_true",
                      help="no progress bar")
  parser.add_argument("--distributed", action="store_true",
                      help="call jax.distributed.initialize() first (multi-host)")
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = _parse(sys.argv[1:] if argv is None else argv)
  try:
    config = config_lib.resolve(args.config, args.set)
  except ValueError as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  import jax  # after argument parsing, so that --help is fast

  if args.distributed:
    jax.distributed.initialize()
  from experiments import train

  workdir = args.workdir or os.path.join("runs", config.name)
  print(f"{config.name}: {config.model} on {config.dataset}, method "
        f"{config.method}, target sparsity {config.sparsity}, {config.steps} "
        f"steps, {jax.device_count()} device(s) [{jax.default_backend()}]")
  summary = train.train_and_evaluate(
      config, workdir, resume=args.resume, progress=not args.no_progress
  )
  print(f"final test accuracy {summary['final_test_accuracy']:.4f} "
        f"(best {summary['best_test_accuracy']:.4f}), global sparsity "
        f"{summary['global_sparsity']:.4f}, {summary['wall_time_s']:.0f} s")
  print(f"wrote {workdir}/summary.json, {workdir}/metrics.jsonl, "
        f"{workdir}/training.png, {workdir}/layer_sparsity.png")
  return 0


if __name__ == "__main__":
  sys.exit(main())
