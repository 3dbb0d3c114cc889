"""Linear-dependence neuron removal on trained LeNet-300-100 networks.

    python -m experiments.dependence [--jobs 1] [--seeds 0] \\
        [--datasets mnist,fashion_mnist] [--tolerances 0.001,0.01,0.05,0.1,0.2] \\
        [--calibration 1000]

Trains LeNet-300-100 dense on each data set (Adam, 3 epochs), then, on each
trained network, removes the hidden units whose activations over a
calibration set (the first ``--calibration`` training images) the other
units of their layer predict by least squares within each tolerance
(Shah, Olivier and Raj 2020; ``jaxprune.linear_dependence``), folding them
into the next layer.  For each tolerance it measures the test accuracy of
the folded network at full size and of the shrunk network
(``jaxprune.shrink``, rebuilt with the new widths), against the dense
network's.  Writes ``table.md``, ``results.json`` and
``params_vs_accuracy.png`` into ``experiments/results/dependence/``; the
training runs live in ``runs/dependence/CELL`` and finished cells are not
run again (the removals are recomputed at every collection: seconds).
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

import jaxprune
from experiments import checkpoints
from experiments import config as config_lib
from experiments import data
from experiments import files
from experiments import models
from experiments import networks
from experiments import sweep
from experiments.config import Config

_EPOCH = 60000 // 128

TOLERANCES = (1e-3, 1e-2, 5e-2, 0.1, 0.2)
DATASETS = ("mnist", "fashion_mnist")

BASE = Config(
    model="lenet300100", steps=3 * _EPOCH, optimizer="adam",
    learning_rate=1e-3, method="dense", sparsity=0.0, log_every=100,
    eval_every=0, checkpoint_every=0)


def cells(datasets: Sequence[str], seeds: Sequence[int]) -> list[Config]:
  """The dense training runs: one per data set and seed."""
  return [dataclasses.replace(BASE, dataset=d, seed=s,
                              name=f"lenet300100-{d}-dense-seed{s}")
          for d in datasets for s in seeds]


def _accuracy(model, params, images, labels, batch=2000) -> float:
  apply = jax.jit(lambda p, x: jnp.argmax(model.apply({"params": p}, x), -1))
  correct = sum(int(jnp.sum(apply(params, images[i:i + batch])
                            == labels[i:i + batch]))
                for i in range(0, len(images), batch))
  return correct / len(images)


def removals(config: Config, params, calibration: np.ndarray,
             test: tuple[np.ndarray, np.ndarray],
             tolerances: Sequence[float]) -> list[dict]:
  """One record per tolerance: what ``jaxprune.linear_dependence`` removes
  from the trained ``params`` and the test accuracy of the result."""
  if config.flax_api != "linen":
    raise SystemExit("experiments.dependence runs the Linen LeNet-300-100 "
                     "(flax_api=linen)")
  model = networks.get(config)
  layers = sorted(params)  # Dense_0, Dense_1, Dense_2: the call order
  dense_accuracy = _accuracy(model, params, *test)
  acts = jaxprune.unit_activations(model, calibration, layers=layers,
                                   variables={"params": params})
  records = []
  for tolerance in tolerances:
    start = time.perf_counter()
    found = jaxprune.linear_dependence(params, acts, layers=layers,
                                       tolerance=tolerance)
    seconds = time.perf_counter() - start
    small = jaxprune.shrink(found.params, found.node_masks, layers=layers)
    widths = tuple(small.widths[name] for name in layers[:-1])
    shrunk_model = networks.get(config, widths=widths)
    before, after = models.count_params(params), models.count_params(small.params)
    records.append({
        "dataset": config.dataset, "model": config.model, "seed": config.seed,
        "tolerance": tolerance, "calibration": int(len(calibration)),
        "widths": list(widths), "params_before": before, "params_after": after,
        "params_removed": 1 - after / before,
        "dense_accuracy": dense_accuracy,
        "folded_accuracy": _accuracy(model, found.params, *test),
        "shrunk_accuracy": _accuracy(shrunk_model, small.params, *test),
        "report": {name: str(r) for name, r in found.report.items()},
        "removal_s": seconds,
    })
  return records


def table(records: list[dict]) -> str:
  lines = ["| data set | seed | tolerance | widths | params | removed | test "
           "accuracy %: dense | folded | shrunk |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  for r in records:
    lines.append(
        f"| {r['dataset']} | {r['seed']} | {r['tolerance']:g} | "
        f"{'-'.join(str(w) for w in r['widths'])} | {r['params_after']:,} | "
        f"{100 * r['params_removed']:.1f}% | {100 * r['dense_accuracy']:.2f} | "
        f"{100 * r['folded_accuracy']:.2f} | {100 * r['shrunk_accuracy']:.2f} |")
  return "\n".join(lines) + "\n"


def plot(records: list[dict], path: pathlib.Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 4.5))
  for (dataset, seed) in sorted({(r["dataset"], r["seed"]) for r in records}):
    sub = sorted((r for r in records if (r["dataset"], r["seed"]) == (dataset, seed)),
                 key=lambda r: r["tolerance"])
    ax.plot([100 * r["params_removed"] for r in sub],
            [100 * r["shrunk_accuracy"] for r in sub], "o-",
            label=f"{dataset} seed {seed}")
    for r in sub:
      ax.annotate(f"{r['tolerance']:g}", (100 * r["params_removed"],
                                          100 * r["shrunk_accuracy"]), fontsize=7)
  ax.set_xlabel("parameters removed %")
  ax.set_ylabel("test accuracy of the shrunk network %")
  ax.set_title("LeNet-300-100: linear-dependence removal (labels: tolerance)")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write_results(records: list[dict], out: pathlib.Path, command: str) -> str:
  """``results.json``, ``table.md`` and ``params_vs_accuracy.png``; returns
  the table."""
  if not records:
    raise SystemExit("no finished runs to collect for 'dependence': nothing written")
  sweep.write_results_json(out, command, records)
  text = table(records)
  files.write_text_atomically(
      out / "table.md",
      "# Linear-dependence neuron removal on LeNet-300-100\n\nProduced by "
      f"{sweep.produced_by(command)} on {jax.devices()[0].platform}.\n\n" + text)
  plot(records, out / "params_vs_accuracy.png")
  return text


def main(argv=None) -> int:
  parser = sweep.script_parser("dependence", jobs=1, seeds="0")
  parser.add_argument("--datasets", default=",".join(DATASETS))
  parser.add_argument("--tolerances", default=",".join(f"{t:g}" for t in TOLERANCES))
  parser.add_argument("--calibration", type=int, default=1000,
                      help="training images in the calibration set")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  seeds = [int(s) for s in args.seeds.split(",")]
  tolerances = [float(t) for t in args.tolerances.split(",")]
  try:
    sweep.cell_overrides(args.set)
  except ValueError as error:
    parser.error(str(error))
  configs = [config_lib.apply_overrides(c, args.set)
             for c in cells(args.datasets.split(","), seeds)]
  root = pathlib.Path(args.root)
  if not args.only_collect:
    sweep.run_cells(configs, root, args.jobs)
  records = []
  for c in configs:
    if not (root / c.name / "summary.json").exists():
      continue
    state = checkpoints.load_checkpoint(c, root / c.name)
    train = data.load(c.dataset, "train", source_dir=c.source_dir, tfds_dir=c.tfds_dir)
    test = data.load(c.dataset, "test", source_dir=c.source_dir, tfds_dir=c.tfds_dir)
    calibration = data.normalise(train.images[:args.calibration], train.name)
    records += removals(c, state.params, calibration,
                        (data.normalise(test.images, test.name), test.labels),
                        tolerances)
  command = "python -m experiments.dependence " + " ".join(
      sys.argv[1:] if argv is None else argv)
  print(write_results(records, pathlib.Path(args.out), command))
  return 0


if __name__ == "__main__":
  sys.exit(main())
