"""Reproduction: controlled sparsity with L0 gates and a density constraint.

    python -m experiments.constrained [--jobs 2] [--seeds 0,1,2] [--only mlp|lenet5|penalty]

Gallego-Posada et al. (2022) state the density as a constraint ``E[L0
density] <= target`` and solve the Lagrangian by gradient descent-ascent
(``jaxprune.dual_ascent``); the penalty method of Louizos et al. (2018)
needs a search over ``lambda`` to reach a given density.  This script runs

- LeNet-300-100 on MNIST, model-wise targets 0.2 and 0.5;
- LeNet-5-Caffe on MNIST, model-wise targets 0.2 and 0.5 and layer-wise 0.35;
- the penalty baseline on LeNet-300-100 over a grid of ``lambda``;

with structured gates (input neurons of dense layers, filters of convs), and
writes ``table.md``, ``results.json`` and ``density_and_multiplier.png``
into ``experiments/results/constrained/``.  Each run is a
``python -m experiments.run`` process (see :mod:`experiments.sweep`), in
``runs/constrained/CELL``; finished cells are not run again.

Training is much shorter than the paper's 200 epochs (CPU budget): see
``_MLP_EPOCHS`` and ``_LENET5_EPOCHS``.  To reach the target within that
budget the gates get their own Adam step (1e-2, as Gallego-Posada et al.'s
code allows with its separate gate optimizer) and the dual step is 1e-2
rather than 1e-4.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys

import numpy as np

from experiments import methods
from experiments import sweep
from experiments.config import Config

_EPOCH = 60000 // 128
_MLP_EPOCHS = 20
_LENET5_EPOCHS = 10

_BASE = Config(
    dataset="mnist", model="lenet300100", steps=_MLP_EPOCHS * _EPOCH,
    batch_size=128, optimizer="adam", learning_rate=7e-4,
    gate_learning_rate=1e-2, method="l0_constrained", gates="unit",
    rescale_gated_weights=True, dual_lr=1e-2, sparsity=0.0, log_every=50,
    eval_every=5 * _EPOCH, checkpoint_every=0,
)

# Gallego-Posada et al. (2022), Table 2 (MNIST, 200 epochs, 3 seeds): achieved
# L0 density %, params kept %, test error %.
PUBLISHED = {
    ("lenet300100", "model", 0.2): (22.8, 12.8, 2.11),
    ("lenet300100", "model", 0.5): (50.9, 49.7, 1.46),
    ("lenet5", "model", 0.2): (20.3, 16.6, 0.85),
    ("lenet5", "model", 0.5): (50.6, 49.4, 0.64),
    ("lenet5", "layer", 0.35): (35.0, 8.6, 0.84),
}

PENALTY_LAMBDAS = (0.03, 0.1, 0.3, 1.0, 3.0)


def cells(only: str | None, seeds) -> list[Config]:
  """The runs of the reproduction (``only``: one group of them)."""
  configs = []
  for (model, scope, target) in PUBLISHED:
    group = "mlp" if model == "lenet300100" else "lenet5"
    if only not in (None, group):
      continue
    steps = (_MLP_EPOCHS if group == "mlp" else _LENET5_EPOCHS) * _EPOCH
    for seed in seeds if group == "mlp" else seeds[:1]:
      configs.append(dataclasses.replace(
          _BASE, name=f"{model}-{scope}-{target}-seed{seed}", model=model,
          density_scope=scope, density_target=target, steps=steps, seed=seed,
          eval_every=5 * _EPOCH if group == "mlp" else steps))
  if only in (None, "penalty"):
    for lam in PENALTY_LAMBDAS:
      configs.append(dataclasses.replace(
          _BASE, name=f"lenet300100-penalty-{lam}-seed0", method="l0_penalty",
          penalty=lam))
  return configs


def _record(config: Config, summary: dict) -> dict:
  l0 = summary["l0"]
  fields = methods.get(config.method).fields  # a constraint or a penalty
  return {
      "model": config.model, "method": config.method,
      "scope": config.density_scope if "density_scope" in fields else None,
      "target": config.density_target if "density_target" in fields else None,
      "penalty": config.penalty if "penalty" in fields else None,
      "seed": config.seed, "epochs": config.steps / _EPOCH,
      "expected_density": l0["expected_density"],
      "expected_density_per_layer": l0["expected_density_per_layer"],
      "hard_mask_density": 1 - summary["global_sparsity"],
      "kept_fraction": l0["kept_fraction"],
      "test_error": 1 - summary["final_test_accuracy"],
      "multipliers": l0.get("multipliers"),
      "units": l0["units"],
  }


def _mean_std(values) -> str:
  values = 100 * np.asarray(values)
  return f"{values.mean():.2f} ± {values.std():.2f}" if len(values) > 1 else f"{values[0]:.2f}"


def table(records: list[dict]) -> str:
  lines = [
      "| model | constraint | target | epochs | seeds | achieved E[L0] % | max layer E[L0] % "
      "| params kept % | error % | published E[L0] / kept / error % |",
      "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  ]
  for (model, scope, target), published in PUBLISHED.items():
    rs = [r for r in records if (r["model"], r["scope"], r["target"]) == (model, scope, target)]
    if not rs:
      continue
    max_layer = [max(r["expected_density_per_layer"].values()) for r in rs]
    lines.append(
        f"| {model} | {scope} | {target} | {rs[0]['epochs']:.0f} | {len(rs)} "
        f"| {_mean_std([r['expected_density'] for r in rs])} "
        f"| {_mean_std(max_layer)} "
        f"| {_mean_std([r['kept_fraction'] for r in rs])} "
        f"| {_mean_std([r['test_error'] for r in rs])} "
        f"| {published[0]} / {published[1]} / {published[2]} |")
  penalty = sorted((r for r in records if r["method"] == "l0_penalty"),
                   key=lambda r: r["penalty"])
  if penalty:
    lines += [
        "", "Penalty baseline (Louizos et al.): loss + lambda / N_train * E[L0], "
        "LeNet-300-100, same budget:", "",
        "| lambda | achieved E[L0] % | params kept % | error % |",
        "| --- | --- | --- | --- |",
    ]
    for r in penalty:
      lines.append(f"| {r['penalty']} | {100 * r['expected_density']:.2f} "
                   f"| {100 * r['kept_fraction']:.2f} | {100 * r['test_error']:.2f} |")
  return "\n".join(lines) + "\n"


def plot_run(metrics_path: pathlib.Path, target: float, path: pathlib.Path, title: str) -> None:
  """Expected density and multiplier over the training steps of one run."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  records = [json.loads(l) for l in metrics_path.read_text().splitlines()]
  train = [r for r in records if r["kind"] == "train" and "multipliers" in r]
  steps = [r["step"] for r in train]
  fig, left = plt.subplots(figsize=(7, 4))
  left.plot(steps, [r["expected_density"] for r in train], label="expected density")
  left.axhline(target, color="gray", ls="--", label=f"target {target}")
  left.set_xlabel("step")
  left.set_ylabel("expected L0 density")
  right = left.twinx()
  right.plot(steps, [r["multipliers"][0] for r in train], color="tab:red", label="multiplier")
  right.set_ylabel("Lagrange multiplier", color="tab:red")
  left.set_title(title)
  fig.legend(loc="upper right")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv=None) -> int:
  parser = sweep.script_parser("constrained", jobs=2, seeds="0,1,2")
  parser.add_argument("--only", choices=("mlp", "lenet5", "penalty"), default=None)
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  from experiments import config as config_lib

  seeds = [int(s) for s in args.seeds.split(",")]
  try:
    sweep.cell_overrides(args.set)
  except ValueError as error:
    parser.error(str(error))
  configs = [config_lib.apply_overrides(c, args.set) for c in cells(args.only, seeds)]
  root = pathlib.Path(args.root)
  if not args.only_collect:
    sweep.run_cells(configs, root, args.jobs)
  # Collect every finished cell of the whole reproduction, not only this call's.
  everything = [config_lib.apply_overrides(c, args.set) for c in cells(None, seeds)]
  records = []
  for c in everything:
    summary_path = root / c.name / "summary.json"
    if summary_path.exists():
      records.append(_record(c, json.loads(summary_path.read_text())))
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  command = "python -m experiments.constrained " + " ".join(
      sys.argv[1:] if argv is None else argv)
  (out / "results.json").write_text(
      json.dumps({"command": command, "runs": records}, indent=2) + "\n")
  text = table(records)
  (out / "table.md").write_text(
      f"# Controlled sparsity (L0 + dual ascent)\n\nProduced by `{command}` "
      "(finished cells of every group).\n\n" + text)
  example = root / "lenet300100-model-0.2-seed0" / "metrics.jsonl"
  if example.exists():
    plot_run(example, 0.2, out / "density_and_multiplier.png",
             "LeNet-300-100, target density 0.2")
  print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
