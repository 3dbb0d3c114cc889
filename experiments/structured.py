"""SNAP-it: structured pruning before training, and the shrunk network's speed.

    python -m experiments.structured [--jobs 1] [--seeds 0] [--models lenet300100,conv6]

For each model, trains the dense network and SNAP-it networks at 50%, 75%
and 90% node sparsity (Verdenius et al. 2020: unit gates scored by
``|dL/dc|`` in geometric rounds, then the pruned units removed, so the
network trained is physically smaller), then times the inference of each
trained network against the dense one in this process: the jitted forward
pass on batches of 1000 test images, alternating between the two, median
over many batches (once per run: the timing is kept in the run's
``speedup.json`` and reused by later collects; ``--retime`` times again;
``--keep-earlier`` keeps the runs of an earlier ``results.json`` whose
directories are gone).
Writes ``table.md``, ``results.json`` and ``accuracy_vs_params.png`` into
``experiments/results/structured/``; runs live in ``runs/structured/CELL``
and finished cells are not run again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import sys
import time
from collections.abc import Sequence

import jax
import numpy as np

from experiments import checkpoints
from experiments import config as config_lib
from experiments import data
from experiments import files
from experiments import methods
from experiments import networks
from experiments import reports
from experiments import sweep
from experiments.config import Config

_EPOCH = 60000 // 128

NODE_SPARSITIES = (0.5, 0.75, 0.9)

# Adam at batch 128 (the authors' optimizer); 3 epochs for LeNet-300-100 on
# MNIST, 2 for Conv-6 on Fashion-MNIST (a dense Conv-6 step is about half a
# second on a 2-core CPU).
BASES = {
    "lenet300100": Config(
        dataset="mnist", model="lenet300100", steps=3 * _EPOCH,
        optimizer="adam", learning_rate=1e-3, sparsity=0.0, log_every=100,
        eval_every=0, checkpoint_every=0),
    "conv6": Config(
        dataset="fashion_mnist", model="conv6", steps=2 * _EPOCH,
        optimizer="adam", learning_rate=1e-3, sparsity=0.0, log_every=100,
        eval_every=0, checkpoint_every=0),
}


def cells(model_names, seeds) -> list[Config]:
  configs = []
  for name in model_names:
    base = BASES[name]
    for seed in seeds:
      configs.append(dataclasses.replace(
          base, name=f"{name}-dense-seed{seed}", method="dense", seed=seed))
      for s in NODE_SPARSITIES:
        configs.append(dataclasses.replace(
            base, name=f"{name}-snap_it-{s}-seed{seed}", method="snap_it",
            sparsity=s, seed=seed))
  return configs


def _forward(config: Config, state):
  widths = None
  if methods.get(config.method).shrinks:  # the hidden widths of its params
    widths = tuple(reports.widths(state.params).values())[:-1]
  model = networks.get(config, widths=widths)
  return jax.jit(lambda params, x: model.apply({"params": params}, x))


def inference_speedup(dense: tuple, small: tuple, images: np.ndarray,
                      batches: int = 40) -> dict:
  """Median time of the jitted forward pass of each network on ``images``,
  alternating between the two, and their ratio (dense over small)."""
  dense_s, small_s = alternating_medians(
      [(_forward(config, state), state.params) for config, state in (dense, small)],
      images, batches)
  return {"dense_median_s": dense_s, "small_median_s": small_s,
          "speedup": dense_s / small_s}


def alternating_medians(forwards, images, batches: int = 40) -> list[float]:
  """The median time of each jitted ``forward(params, images)`` of
  ``forwards`` (pairs), after a warm-up call each, calling them in turn
  ``batches`` times."""
  for forward, params in forwards:
    jax.block_until_ready(forward(params, images))  # compile, warm up
  times = [[] for _ in forwards]
  for _ in range(batches):
    for i, (forward, params) in enumerate(forwards):
      start = time.perf_counter()
      jax.block_until_ready(forward(params, images))
      times[i].append(time.perf_counter() - start)
  return [float(np.median(t)) for t in times]


def _timed_speedup(config: Config, root: pathlib.Path, dense_config: Config,
                   images: np.ndarray, retime: bool) -> dict:
  """:func:`inference_speedup` of the run ``config`` over its dense run,
  timed once and kept in the run's directory (``speedup.json``) with the
  sha256 of the two runs' summaries: a later collect reuses it while
  neither run has changed, unless ``retime``."""
  path = root / config.name / "speedup.json"
  runs = {c.name: hashlib.sha256(
      (root / c.name / "summary.json").read_bytes()).hexdigest()
          for c in (dense_config, config)}
  if path.exists() and not retime:
    saved = json.loads(path.read_text())
    if saved["runs"] == runs:
      return saved["timing"]
  dense = (dense_config, checkpoints.load_checkpoint(dense_config, root / dense_config.name))
  small = (config, checkpoints.load_checkpoint(config, root / config.name))
  timing = {**inference_speedup(dense, small, images),
            "timed_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
  path.write_text(json.dumps({"runs": runs, "timing": timing}, indent=2) + "\n")
  return timing


def run_record(config: Config, root: pathlib.Path, dense_config: Config,
               images: np.ndarray, retime: bool = False) -> dict:
  """The record of the finished run ``config`` in ``root``, with its
  speed-up over ``dense_config`` if its network was shrunk."""
  summary = json.loads((root / config.name / "summary.json").read_text())
  record = {
      "model": config.model, "dataset": config.dataset, "method": config.method,
      "node_sparsity": config.sparsity, "seed": config.seed,
      "accuracy": summary["final_test_accuracy"], "params": summary["params"],
      "widths": summary.get("widths"), "wall_time_s": summary["wall_time_s"],
  }
  if methods.get(config.method).shrinks:
    record.update(_timed_speedup(config, root, dense_config, images, retime))
  return record


def _sparsity_label(record: dict) -> str:
  return ("dense" if record["method"] == "dense"
          else f"{record['node_sparsity']:.0%}")


def table(records: list[dict]) -> str:
  """One row per run."""
  lines = ["| model | node sparsity | seed | test accuracy % | params | widths | "
           "inference speed-up (batch 1000) |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
  for r in records:
    widths = ("–" if not r["widths"] else
              "-".join(str(w) for _, w in sorted(r["widths"].items())[:-1]))
    speed = (f"{r['speedup']:.2f}x ({r['dense_median_s'] * 1e3:.1f} ms → "
             f"{r['small_median_s'] * 1e3:.1f} ms)" if "speedup" in r else "1")
    lines.append(f"| {r['model']} | {_sparsity_label(r)} | {r['seed']} | "
                 f"{100 * r['accuracy']:.2f} | {r['params']:,} | {widths} | "
                 f"{speed} |")
  return "\n".join(lines) + "\n"


def seed_table(records: list[dict]) -> str:
  """One row per model and sparsity: accuracy mean ± standard deviation over
  the seeds (population, as the sweeps report it), mean params, and the
  median speed-up with its range."""
  groups: dict[tuple, list[dict]] = {}
  for r in records:
    groups.setdefault((r["model"], r["method"] != "dense", r["node_sparsity"]),
                      []).append(r)
  lines = ["| model | node sparsity | seeds | test accuracy % | params | "
           "inference speed-up, median (range) |",
           "| --- | --- | --- | --- | --- | --- |"]
  for (model, _, _), rs in sorted(groups.items()):
    accuracy = 100 * np.array([r["accuracy"] for r in rs])
    speedups = [r["speedup"] for r in rs if "speedup" in r]
    speed = (f"{np.median(speedups):.2f}x ({min(speedups):.2f}-"
             f"{max(speedups):.2f})" if speedups else "1")
    params = int(round(np.mean([r["params"] for r in rs])))
    lines.append(f"| {model} | {_sparsity_label(rs[0])} | {len(rs)} | "
                 f"{accuracy.mean():.2f} ± {accuracy.std():.2f} | {params:,} | "
                 f"{speed} |")
  return "\n".join(lines) + "\n"


def plot(records: list[dict], path: pathlib.Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 4.5))
  for model in sorted({r["model"] for r in records}):
    sub = sorted((r for r in records if r["model"] == model),
                 key=lambda r: r["params"])
    ax.plot([r["params"] for r in sub], [100 * r["accuracy"] for r in sub],
            "o-", label=model)
  ax.set_xscale("log")
  ax.set_xlabel("parameters of the trained (shrunk) network")
  ax.set_ylabel("test accuracy %")
  ax.set_title("SNAP-it before training")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write_results(records: list[dict], out: pathlib.Path, command: str,
                  earlier_commands: Sequence[str] = ()) -> str:
  """``results.json``, ``table.md`` and ``accuracy_vs_params.png`` in
  ``out``; returns the table."""
  if not records:
    raise SystemExit("no finished runs to collect for 'structured': "
                     "nothing written")
  sweep.write_results_json(out, command, records, earlier_commands)
  text = table(records)
  if len({r["seed"] for r in records}) > 1:
    text = (seed_table(records) + "\nEvery run:\n\n" + text)
  files.write_text_atomically(
      out / "table.md",
      f"# SNAP-it: structured pruning before training\n\nProduced by "
      f"{sweep.produced_by(command, earlier_commands)} on "
      f"{jax.devices()[0].platform}.\n\n" + text)
  plot(records, out / "accuracy_vs_params.png")
  return text


def main(argv=None) -> int:
  parser = sweep.script_parser("structured", jobs=1, seeds="0")
  parser.add_argument("--models", default="lenet300100,conv6")
  parser.add_argument("--retime", action="store_true",
                      help="time every speed-up again (by default a run's "
                      "timing is kept in its speedup.json and reused)")
  parser.add_argument("--keep-earlier", action="store_true",
                      help="keep the runs already in OUT/results.json that "
                           "this call does not collect again (their speed-ups "
                           "as they were timed)")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  seeds = [int(s) for s in args.seeds.split(",")]
  try:
    sweep.cell_overrides(args.set)
  except ValueError as error:
    parser.error(str(error))
  configs = [config_lib.apply_overrides(c, args.set)
             for c in cells(args.models.split(","), seeds)]
  root = pathlib.Path(args.root)
  if not args.only_collect:
    sweep.run_cells(configs, root, args.jobs)
  records = []
  for c in configs:
    if not (root / c.name / "summary.json").exists():
      continue
    dense = next(d for d in configs if d.model == c.model and d.seed == c.seed
                 and not methods.get(d.method).shrinks)  # the full-size run
    test = data.load(c.dataset, "test", source_dir=c.source_dir, tfds_dir=c.tfds_dir)
    images = data.normalise(test.images[:1000], test.name)
    records.append(run_record(c, root, dense, images, args.retime))
  out = pathlib.Path(args.out)
  command = "python -m experiments.structured " + " ".join(
      sys.argv[1:] if argv is None else argv)
  earlier_commands = []
  if args.keep_earlier:
    records, earlier_commands = sweep.with_earlier_runs(records, out)
  print(write_results(records, out, command, earlier_commands))
  return 0


if __name__ == "__main__":
  sys.exit(main())
