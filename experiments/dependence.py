"""Linear-dependence neuron removal on trained LeNet-300-100 and Conv-6.

    python -m experiments.dependence [--jobs 1] [--seeds 0] \\
        [--models lenet300100,conv6] [--datasets mnist,fashion_mnist] \\
        [--tolerances 0.001,0.01,0.05,0.1,0.2] [--calibration 1000] \\
        [--max-rows 10000] [--latency-batch 128] [--latency-rounds 20]

Trains each model dense on each data set: LeNet-300-100 on MNIST and
Fashion-MNIST (Adam, 3 epochs), Conv-6 on Fashion-MNIST only (Adam 1e-3,
batch 128, 2 epochs, as ``experiments.structured`` trains it).  Then, on
each trained network, removes the hidden units (Conv-6: the channels of its
six convs and the units of its two hidden dense layers) whose activations
over a calibration set the other units of their layer predict by least
squares within each tolerance (Shah, Olivier and Raj 2020;
``jaxprune.linear_dependence``), folding them into the next layer.

The calibration set is the first ``--calibration`` training images (1000).
A unit's activations are what the next layer reads
(``jaxprune.unit_activations``): for a conv layer's channel, one row per
image and position after the ReLU and max pooling, so Conv-6's 1000 images
give 784,000 rows for Conv_0 (28 x 28), 196,000 for Conv_1 and Conv_2,
49,000 for Conv_3 and Conv_4 and 9,000 for Conv_5 (3 x 3 after the last
pool).  To keep the greedy least squares affordable, each layer's rows are
subsampled uniformly at random (seed 0) to at most ``--max-rows`` (10,000:
at least 39 rows per unit of a 256-wide layer); the dense layers keep their
1000 rows, so LeNet-300-100 is calibrated on every image as before.  Units
that a conv layer reads are fitted without the constant
(``intercept=False``), which keeps the fold exact at the border of its
'SAME' padding; units that a dense layer reads are fitted with it.

For each tolerance it measures the test accuracy of the folded network at
full size and of the shrunk network (``jaxprune.shrink``, rebuilt with the
new widths), against the dense network's, and for Conv-6 the median time
of the jitted forward pass of every shrunk network and the dense one on a
batch of ``--latency-batch`` test images, calling them in turn
``--latency-rounds`` times after a warm-up call (0 times nothing).  Writes
``table.md``, ``results.json``, ``params_vs_accuracy.png`` and (with timed
networks) ``latency_vs_accuracy.png`` into
``experiments/results/dependence/``; the training runs live in
``runs/dependence/CELL`` and finished cells are not run again (the removals
and timings are recomputed at every collection: 20 minutes for Conv-6's
eight tolerances on the 2-core machine shared with other work).
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
from experiments import structured
from experiments import sweep
from experiments.config import Config

_EPOCH = 60000 // 128

TOLERANCES = (1e-3, 1e-2, 5e-2, 0.1, 0.2)
DATASETS = ("mnist", "fashion_mnist")
MODELS = ("lenet300100", "conv6")
# Conv-6 is trained and pruned on Fashion-MNIST only.
MODEL_DATASETS = {"lenet300100": DATASETS, "conv6": ("fashion_mnist",)}
_NAMES = {"lenet300100": "LeNet-300-100", "conv6": "Conv-6"}
# The models whose shrunk networks are timed against the dense one.
TIMED = ("conv6",)

BASE = Config(
    model="lenet300100", steps=3 * _EPOCH, optimizer="adam",
    learning_rate=1e-3, method="dense", sparsity=0.0, log_every=100,
    eval_every=0, checkpoint_every=0)
# As experiments.structured trains it: Adam 1e-3, batch 128, 2 epochs.
BASES = {"lenet300100": BASE,
         "conv6": dataclasses.replace(BASE, model="conv6", steps=2 * _EPOCH)}


def cells(datasets: Sequence[str], seeds: Sequence[int],
          model_names: Sequence[str] = ("lenet300100",)) -> list[Config]:
  """The dense training runs: one per model, data set and seed (Conv-6 on
  Fashion-MNIST only)."""
  return [dataclasses.replace(BASES[m], dataset=d, seed=s,
                              name=f"{m}-{d}-dense-seed{s}")
          for m in model_names for d in datasets if d in MODEL_DATASETS[m]
          for s in seeds]


def _accuracy(model, params, images, labels, batch=2000) -> float:
  apply = jax.jit(lambda p, x: jnp.argmax(model.apply({"params": p}, x), -1))
  correct = sum(int(jnp.sum(apply(params, images[i:i + batch])
                            == labels[i:i + batch]))
                for i in range(0, len(images), batch))
  return correct / len(images)


def calibration_activations(model, params, images: np.ndarray,
                            layers: Sequence[str], max_rows: int,
                            seed: int = 0) -> dict[str, np.ndarray]:
  """``jaxprune.unit_activations`` of ``images`` (one call), each layer's
  rows (images x positions for a conv layer) subsampled uniformly at random
  without replacement to at most ``max_rows``, in their order."""
  acts = jaxprune.unit_activations(model, images, layers=layers,
                                   variables={"params": params})
  rng = np.random.default_rng(seed)
  for name in layers[:-1]:
    rows = len(acts[name])
    if rows > max_rows:
      acts[name] = acts[name][np.sort(rng.choice(rows, max_rows, replace=False))]
  return acts


def fold_dependent(params, acts, layers: Sequence[str], tolerance: float):
  """``jaxprune.linear_dependence`` at ``tolerance``: the units that a conv
  layer reads are fitted without the constant (``intercept=False``, exact at
  the border of the next layer's 'SAME' padding), the others with it."""
  conv_read = [name for name, following in zip(layers[:-1], layers[1:])
               if np.ndim(params[following]["kernel"]) > 2]
  if not conv_read:  # LeNet-300-100
    return jaxprune.linear_dependence(params, acts, layers=layers,
                                      tolerance=tolerance)
  found = jaxprune.linear_dependence(
      params, {k: v for k, v in acts.items() if k in conv_read},
      layers=layers, tolerance=tolerance, intercept=False)
  rest = jaxprune.linear_dependence(
      found.params, {k: v for k, v in acts.items() if k not in conv_read},
      layers=layers, tolerance=tolerance, node_masks=found.node_masks)
  report = {name: (found if name in conv_read else rest).report[name]
            for name in layers[:-1]}
  return rest._replace(report=report)


def removals(config: Config, params, calibration: np.ndarray,
             test: tuple[np.ndarray, np.ndarray],
             tolerances: Sequence[float], max_rows: int = 10_000,
             latency: tuple[int, int] | None = None) -> list[dict]:
  """One record per tolerance: what ``jaxprune.linear_dependence`` removes
  from the trained ``params`` and the test accuracy of the result; with
  ``latency = (batch, rounds)``, also the median time of the shrunk
  network's jitted forward pass on ``batch`` test images against the dense
  one's (alternating, ``rounds`` calls each)."""
  if config.flax_api != "linen":
    raise SystemExit("experiments.dependence runs the Linen models "
                     "(flax_api=linen)")
  # Conv_0..Conv_5 then Dense_0..Dense_2 (Conv-6), or Dense_0..Dense_2: the
  # call order.
  layers = sorted(params)
  model = networks.get(config, widths=[np.shape(params[name]["kernel"])[-1]
                                       for name in layers[:-1]])
  dense_accuracy = _accuracy(model, params, *test)
  acts = calibration_activations(model, params, calibration, layers, max_rows)
  records, shrunk = [], []
  for tolerance in tolerances:
    start = time.perf_counter()
    found = fold_dependent(params, acts, layers, tolerance)
    seconds = time.perf_counter() - start
    small = jaxprune.shrink(found.params, found.node_masks, layers=layers)
    widths = tuple(small.widths[name] for name in layers[:-1])
    shrunk_model = networks.get(config, widths=widths)
    shrunk.append((shrunk_model, small.params))
    before, after = models.count_params(params), models.count_params(small.params)
    records.append({
        "dataset": config.dataset, "model": config.model, "seed": config.seed,
        "tolerance": tolerance, "calibration": int(len(calibration)),
        "calibration_rows": {name: int(len(acts[name])) for name in layers[:-1]},
        "widths": list(widths), "params_before": before, "params_after": after,
        "params_removed": 1 - after / before,
        "dense_accuracy": dense_accuracy,
        "folded_accuracy": _accuracy(model, found.params, *test),
        "shrunk_accuracy": _accuracy(shrunk_model, small.params, *test),
        "report": {name: str(r) for name, r in found.report.items()},
        "removal_s": seconds,
    })
  if latency:
    batch, rounds = latency
    times = structured.alternating_medians(
        [(_forward(m), p) for m, p in [(model, params)] + shrunk],
        test[0][:batch], rounds)
    for record, small_s in zip(records, times[1:]):
      record.update({"latency_batch": batch, "latency_rounds": rounds,
                     "dense_median_s": times[0], "shrunk_median_s": small_s,
                     "latency_ratio": small_s / times[0]})
  return records


def _forward(model):
  return jax.jit(lambda params, x: model.apply({"params": params}, x))


def _latency(r: dict) -> str:
  if "latency_ratio" not in r:
    return "–"
  return (f"{r['latency_ratio']:.2f} ({r['dense_median_s'] * 1e3:.0f} → "
          f"{r['shrunk_median_s'] * 1e3:.0f} ms)")


def table(records: list[dict]) -> str:
  lines = ["| model | data set | seed | tolerance | widths | params | removed | "
           "test accuracy %: dense | folded | shrunk | inference time: shrunk / "
           "dense |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  for r in records:
    lines.append(
        f"| {r['model']} | {r['dataset']} | {r['seed']} | {r['tolerance']:g} | "
        f"{'-'.join(str(w) for w in r['widths'])} | {r['params_after']:,} | "
        f"{100 * r['params_removed']:.1f}% | {100 * r['dense_accuracy']:.2f} | "
        f"{100 * r['folded_accuracy']:.2f} | {100 * r['shrunk_accuracy']:.2f} | "
        f"{_latency(r)} |")
  return "\n".join(lines) + "\n"


def header(records: list[dict]) -> str:
  """What the table's networks were calibrated and timed on."""
  lines = []
  for model in sorted({r["model"] for r in records}, reverse=True):
    r = next(r for r in records if r["model"] == model)
    rows = ", ".join(f"{name} {n:,}" for name, n in r["calibration_rows"].items())
    lines.append(f"{model}: calibration set of the first {r['calibration']:,} "
                 f"training images; least-squares rows per layer: {rows}.")
  timed = [r for r in records if "latency_ratio" in r]
  if timed:
    lines.append(
        f"Inference time: median of the jitted forward pass on a batch of "
        f"{timed[0]['latency_batch']} test images, {timed[0]['latency_rounds']} "
        "calls of each network in turn after a warm-up call "
        f"({jax.devices()[0].device_kind}, the project's 2-core machine, "
        "shared with other work).")
  return "\n\n".join(lines) + "\n\n"


def plot(records: list[dict], path: pathlib.Path, against: str = "params") -> None:
  """Shrunk accuracy against the parameters removed, or (``against=
  "latency"``, the timed records) against the measured latency ratio."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  if against == "latency":
    records = [r for r in records if "latency_ratio" in r]
    x_of, xlabel = (lambda r: r["latency_ratio"],
                    "measured latency, shrunk / dense (lower is faster)")
  else:
    x_of, xlabel = lambda r: 100 * r["params_removed"], "parameters removed %"
  fig, ax = plt.subplots(figsize=(6.5, 4.8))
  keys = sorted({(r["model"], r["dataset"], r["seed"]) for r in records},
                reverse=True)
  for key in keys:
    sub = sorted((r for r in records if (r["model"], r["dataset"], r["seed"]) == key),
                 key=lambda r: r["tolerance"])
    ax.plot([x_of(r) for r in sub], [100 * r["shrunk_accuracy"] for r in sub], "o-",
            label=f"{key[0]} {key[1]} seed {key[2]}")
    for r in sub:
      ax.annotate(f"{r['tolerance']:g}", (x_of(r), 100 * r["shrunk_accuracy"]),
                  fontsize=7)
  ax.set_xlabel(xlabel)
  ax.set_ylabel("test accuracy of the shrunk network %")
  ax.set_title("Linear-dependence removal (labels: tolerance)")
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
  names = " and ".join(sorted({_NAMES[r["model"]] for r in records}, reverse=True))
  files.write_text_atomically(
      out / "table.md",
      f"# Linear-dependence neuron removal on {names}\n\nProduced by "
      f"{sweep.produced_by(command)} on {jax.devices()[0].platform}.\n\n"
      + header(records) + text)
  plot(records, out / "params_vs_accuracy.png")
  if any("latency_ratio" in r for r in records):
    plot(records, out / "latency_vs_accuracy.png", against="latency")
  return text


def main(argv=None) -> int:
  parser = sweep.script_parser("dependence", jobs=1, seeds="0")
  parser.add_argument("--models", default=",".join(MODELS),
                      help=f"comma-separated, of {','.join(MODELS)} (conv6 "
                      "on fashion_mnist only)")
  parser.add_argument("--datasets", default=",".join(DATASETS))
  parser.add_argument("--tolerances", default=",".join(f"{t:g}" for t in TOLERANCES))
  parser.add_argument("--calibration", type=int, default=1000,
                      help="training images in the calibration set")
  parser.add_argument("--max-rows", type=int, default=10_000,
                      help="least-squares rows per layer at most (a conv "
                      "layer has images x positions; subsampled at random)")
  parser.add_argument("--latency-batch", type=int, default=128,
                      help="test images per timed forward pass (Conv-6)")
  parser.add_argument("--latency-rounds", type=int, default=20,
                      help="timed calls of each network; 0 times nothing")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  seeds = [int(s) for s in args.seeds.split(",")]
  tolerances = [float(t) for t in args.tolerances.split(",")]
  model_names = args.models.split(",")
  unknown = sorted(set(model_names) - set(MODELS))
  if unknown:
    parser.error(f"unknown models {unknown}; expected some of {list(MODELS)}")
  try:
    sweep.cell_overrides(args.set)
  except ValueError as error:
    parser.error(str(error))
  configs = [config_lib.apply_overrides(c, args.set)
             for c in cells(args.datasets.split(","), seeds, model_names)]
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
    latency = ((args.latency_batch, args.latency_rounds)
               if c.model in TIMED and args.latency_rounds > 0 else None)
    records += removals(c, state.params, calibration,
                        (data.normalise(test.images, test.name), test.labels),
                        tolerances, args.max_rows, latency)
  command = "python -m experiments.dependence " + " ".join(
      sys.argv[1:] if argv is None else argv)
  print(write_results(records, pathlib.Path(args.out), command))
  return 0


if __name__ == "__main__":
  sys.exit(main())
