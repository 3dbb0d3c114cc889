"""Projected gradient onto l1 and l2,1 balls: accuracy against sparsity.

    python -m experiments.projections [--jobs 2] [--seeds 0]

Barlaud & Guyard (2020) train with a projection after every optimizer step
(``optax.chain(adam, jaxprune.project_l1(radius))``): the l1 ball zeroes
single weights, the l2,1 ball (rows of a dense kernel = input neurons)
zeroes whole rows.  This script trains LeNet-300-100 on MNIST for each
radius of :data:`RADII` (every kernel on its own ball of that radius) and
writes ``table.md``, ``results.json`` and ``accuracy_vs_zeros.png`` into
``experiments/results/projections/``: test accuracy against the fraction of
zero weights and of zero rows.  Runs live in ``runs/projections/CELL``;
finished cells are not run again.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys

import jax
import numpy as np

from experiments import checkpoints
from experiments import config as config_lib
from experiments import sweep
from experiments.config import Config

_EPOCH = 60000 // 128

# 3 epochs: the exact l1 projection sorts every kernel at every step, which
# on this 2-core CPU makes a step several times a plain Adam step.
_BASE = Config(
    dataset="mnist", model="lenet300100", steps=3 * _EPOCH, batch_size=128,
    optimizer="adam", learning_rate=1e-3, sparsity=0.0, log_every=100,
    eval_every=0, checkpoint_every=0,
)

RADII = {
    "project_l1": (100.0, 200.0, 400.0),
    "project_l21": (10.0, 20.0, 40.0),
}


def cells(seeds) -> list[Config]:
  return [
      dataclasses.replace(_BASE, name=f"{method}-{radius}-seed{seed}",
                          method=method, radius=radius, seed=seed)
      for method, radii in RADII.items() for radius in radii for seed in seeds
  ]


def zero_fractions(params) -> dict:
  """Zero weights and all-zero input rows over the kernels, and rows per layer."""
  kernels = {name: np.asarray(layer["kernel"]) for name, layer in params.items()}
  weights = sum(k.size for k in kernels.values())
  zeros = sum(int((k == 0).sum()) for k in kernels.values())
  rows = {name: float((k == 0).all(axis=1).mean()) for name, k in kernels.items()}
  row_count = sum(k.shape[0] for k in kernels.values())
  zero_rows = sum(int((k == 0).all(axis=1).sum()) for k in kernels.values())
  return {"zero_weights": zeros / weights, "zero_rows": zero_rows / row_count,
          "zero_rows_per_layer": rows}


def _record(config: Config, workdir: pathlib.Path) -> dict:
  summary = json.loads((workdir / "summary.json").read_text())
  state = checkpoints.load_checkpoint(config, workdir)
  return {
      "method": config.method, "radius": config.radius, "seed": config.seed,
      "test_accuracy": summary["final_test_accuracy"],
      **zero_fractions(jax.device_get(state.params)),
  }


def table(records: list[dict]) -> str:
  lines = ["| method | radius | seeds | test accuracy % | zero weights % | zero rows % "
           "| zero rows per layer % |", "| --- | --- | --- | --- | --- | --- | --- |"]
  for method, radii in RADII.items():
    for radius in radii:
      rs = [r for r in records if (r["method"], r["radius"]) == (method, radius)]
      if not rs:
        continue
      per_layer = ", ".join(
          f"{name} {100 * np.mean([r['zero_rows_per_layer'][name] for r in rs]):.1f}"
          for name in rs[0]["zero_rows_per_layer"])
      lines.append(
          f"| {method} | {radius:g} | {len(rs)} "
          f"| {100 * np.mean([r['test_accuracy'] for r in rs]):.2f} "
          f"| {100 * np.mean([r['zero_weights'] for r in rs]):.2f} "
          f"| {100 * np.mean([r['zero_rows'] for r in rs]):.2f} | {per_layer} |")
  return "\n".join(lines) + "\n"


def plot(records: list[dict], path: pathlib.Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  for ax, key, label in ((axes[0], "zero_weights", "zero weights (%)"),
                         (axes[1], "zero_rows", "zero input rows (%)")):
    for method in RADII:
      rs = sorted((r for r in records if r["method"] == method), key=lambda r: r[key])
      ax.plot([100 * r[key] for r in rs], [100 * r["test_accuracy"] for r in rs],
              marker="o", label=method)
    ax.set_xlabel(label)
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend()
  fig.suptitle("LeNet-300-100 on MNIST, projected Adam")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv=None) -> int:
  parser = sweep.script_parser("projections", jobs=2, seeds="0")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  seeds = [int(s) for s in args.seeds.split(",")]
  try:
    sweep.cell_overrides(args.set)
  except ValueError as error:
    parser.error(str(error))
  configs = [config_lib.apply_overrides(c, args.set) for c in cells(seeds)]
  root = pathlib.Path(args.root)
  if not args.only_collect:
    sweep.run_cells(configs, root, args.jobs)
  records = [_record(c, root / c.name) for c in configs
             if (root / c.name / "summary.json").exists()]
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  command = "python -m experiments.projections " + " ".join(
      sys.argv[1:] if argv is None else argv)
  (out / "results.json").write_text(
      json.dumps({"command": command, "runs": records}, indent=2) + "\n")
  text = table(records)
  (out / "table.md").write_text(
      f"# Projected gradient (l1, l2,1)\n\nProduced by `{command}`.\n\n" + text)
  plot(records, out / "accuracy_vs_zeros.png")
  print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
