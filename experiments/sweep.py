"""Grids of runs and the tables and plots that compare them.

    python -m experiments.sweep NAME [--jobs 2] [--seeds 0,1,2] [--set key=value ...]
        [--only field=v1,v2 ...]

runs every cell of the sweep ``NAME`` (see :data:`SWEEPS`) with
``python -m experiments.run`` in its own process, ``--jobs`` at a time, each
in ``runs/sweeps/NAME/CELL`` (a cell whose ``summary.json`` already holds
the same config is not run again, so an interrupted sweep continues), then
writes ``results.json``, ``table.md`` and ``accuracy_vs_sparsity.png`` into
``experiments/results/NAME/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Sequence

import numpy as np

from experiments import config as config_lib
from experiments import files
from experiments.config import Config

_EPOCH = 60000 // 128


@dataclasses.dataclass(frozen=True)
class Sweep:
  """A base config and the values each varied field takes."""

  base: Config
  grid: dict[str, tuple]
  seeds: tuple[int, ...] = (0, 1, 2)
  # Per method, config fields that differ from the base (e.g. a schedule).
  method_overrides: dict[str, dict] = dataclasses.field(default_factory=dict)

  def cells(self, seeds: Sequence[int] | None = None,
            only: dict[str, Sequence[str]] | None = None) -> list[Config]:
    """One config per grid point and seed; ``only`` keeps the grid points
    whose fields take one of the listed values (compared as strings)."""
    only = only or {}
    unknown = sorted(set(only) - set(self.grid))
    if unknown:
      raise ValueError(f"--only names fields {unknown} that the grid does not "
                       f"vary; it varies {sorted(self.grid)}")
    grid = {k: tuple(v for v in values
                     if k not in only or str(v) in only[k])
            for k, values in self.grid.items()}
    empty = sorted(k for k, values in grid.items() if not values)
    if empty:
      raise ValueError(f"--only leaves no value of {empty}; the grid has "
                       f"{ {k: self.grid[k] for k in empty} }")
    keys = list(grid)
    configs = []
    for values in itertools.product(*(grid[k] for k in keys)):
      cell = dict(zip(keys, values))
      cell.update(self.method_overrides.get(cell.get("method"), {}))
      for seed in self.seeds if seeds is None else seeds:
        name = "-".join(f"{v}" for v in values) + f"-seed{seed}"
        configs.append(dataclasses.replace(self.base, name=name, seed=seed, **cell))
    return configs


_FLIPOUT_BASE = Config(
    model="lenet5", steps=12 * _EPOCH, batch_size=128, optimizer="sgd",
    learning_rate=0.01, lr_schedule="step", momentum=0.9, weight_decay=5e-4,
    schedule="geometric", prune_every=_EPOCH, rate=0.5, noise=1.0,
    log_every=_EPOCH // 2, eval_every=4 * _EPOCH, checkpoint_every=0,
)
_FLIPOUT_GRID = {
    "dataset": ("fashion_mnist", "mnist"),
    "method": ("flipout", "magnitude", "random", "snip"),
    # 4, 6, 8 and 10 halvings.
    "sparsity": (0.9375, 0.984375, 0.99609375, 0.9990234375),
}

# SNIP-it's comparison at CPU scale: LeNet-5-Caffe, Adam (the authors'
# optimizer, at batch 128 and learning rate 1e-3), 2 epochs after pruning at
# initialisation; random prunes at step 0, before any update.
_BEFORE_TRAINING_BASE = Config(
    dataset="fashion_mnist", model="lenet5", steps=2 * _EPOCH, batch_size=128,
    optimizer="adam", learning_rate=1e-3, schedule="constant",
    log_every=_EPOCH // 2, eval_every=0, checkpoint_every=0,
)
_BEFORE_TRAINING_GRID = {
    "method": ("snip", "snip_it", "grasp", "synflow", "random"),
    "sparsity": (0.9, 0.95, 0.98, 0.99, 0.995),
}

SWEEPS: dict[str, Sweep] = {
    # FlipOut against global magnitude, random and SNIP on the same geometric
    # schedule (halve the survivors every epoch; SNIP prunes once at the first
    # step), LeNet-5-Caffe, 12 epochs of SGD in the manner of FlipOut's recipe
    # (momentum 0.9, weight decay 5e-4, batch 128, learning rate / 10 at 43%
    # and 71%; 0.01 rather than 0.1, at which LeNet-5 without normalisation
    # diverges).
    "flipout": Sweep(
        base=_FLIPOUT_BASE, grid=_FLIPOUT_GRID,
        method_overrides={"snip": {"schedule": "constant"}},
    ),
    # The same comparison on LeNet-300-100, 50 times cheaper on a CPU.
    "flipout_lenet300": Sweep(
        base=dataclasses.replace(_FLIPOUT_BASE, model="lenet300100",
                                 learning_rate=0.05),
        grid=_FLIPOUT_GRID,
        method_overrides={"snip": {"schedule": "constant"}},
    ),
    # Pruning before training: SNIP, SNIP-it, GraSP, SynFlow and random.
    "before_training": Sweep(
        base=_BEFORE_TRAINING_BASE,
        grid={"dataset": ("fashion_mnist", "mnist"), **_BEFORE_TRAINING_GRID},
    ),
    # The same on Conv-6 (1.8M weights on 28x28 inputs): the comparison of
    # SNIP and SNIP-it on a deeper network.  A dense step at batch 128 takes
    # 1.1 s on this 2-core CPU, so one epoch (9 minutes on both cores), and
    # scoring batches of 128 rather than 512 (SNIP-it's 35 gradients at 512
    # took 17 minutes on one loaded core).
    "before_training_conv6": Sweep(
        base=dataclasses.replace(_BEFORE_TRAINING_BASE, model="conv6",
                                 steps=_EPOCH, log_every=_EPOCH // 4,
                                 init_batch_size=128),
        grid={"dataset": ("fashion_mnist",), **_BEFORE_TRAINING_GRID},
    ),
    # SNIP and SNIP-it as published: plain global top-k, with no weight kept
    # per tensor, so that a layer can be cut off (the claim that SNIP-it
    # avoids the layer collapse SNIP suffers at high sparsity).
    "before_training_topk": Sweep(
        base=dataclasses.replace(_BEFORE_TRAINING_BASE,
                                 allocation="global_topk"),
        grid={"dataset": ("fashion_mnist", "mnist"),
              "method": ("snip", "snip_it"),
              "sparsity": _BEFORE_TRAINING_GRID["sparsity"]},
    ),
    # During training at 98%: SNIP-it's 7 rounds (0.5 ... 0.98) every half
    # epoch from half an epoch on, against gradual magnitude pruning over the
    # same span (updates every quarter epoch); 5 epochs in all.
    "during_training": Sweep(
        base=dataclasses.replace(
            _BEFORE_TRAINING_BASE, steps=5 * _EPOCH, begin_step=_EPOCH // 2,
            end_step=7 * _EPOCH // 2, prune_every=_EPOCH // 2,
            frequency=_EPOCH // 4),
        grid={
            "dataset": ("fashion_mnist",),
            "method": ("snip_it_during", "magnitude"),
            "sparsity": (0.98,),
        },
        method_overrides={"magnitude": {"schedule": "polynomial"}},
    ),
}


def _up_to_date(workdir: pathlib.Path, config: Config) -> bool:
  summary = workdir / "summary.json"
  if not summary.exists():
    return False
  return json.loads(summary.read_text())["config"] == config_lib.to_dict(config)


def cell_overrides(overrides: Sequence[str]) -> list[str]:
  """The ``--set`` overrides of every cell of a sweep; a name is refused: it
  would put every cell in one work directory.

  Raises:
    ValueError: naming the override.
  """
  for item in overrides:
    if item.partition("=")[0].strip() == "name":
      raise ValueError(f"--set {item}: every cell of a sweep has its own name "
                       "(and work directory); --root puts the cells elsewhere")
  return list(overrides)


def run_cells(configs: Sequence[Config], root: pathlib.Path, jobs: int) -> None:
  """Runs the cells not yet done, ``jobs`` processes at a time."""
  pending = [c for c in configs if not _up_to_date(root / c.name, c)]
  print(f"{len(configs) - len(pending)} of {len(configs)} cells done; running "
        f"{len(pending)} with {jobs} job(s)", flush=True)
  env = dict(os.environ)
  if jobs > 1:  # one core per run
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        " --xla_cpu_multi_thread_eigen=false").strip()
  running: list[tuple[subprocess.Popen, Config, float]] = []
  failures = []
  while pending or running:
    while pending and len(running) < jobs:
      c = pending.pop(0)
      workdir = root / c.name
      workdir.mkdir(parents=True, exist_ok=True)
      # An interrupted cell continues; a cell of another config starts afresh.
      again = ("--overwrite" if (workdir / "summary.json").exists()
               else "--resume")
      (workdir / "config.json").write_text(json.dumps(config_lib.to_dict(c)))
      log = open(workdir / "log.txt", "w")
      process = subprocess.Popen(
          [sys.executable, "-m", "experiments.run", str(workdir / "config.json"),
           "--workdir", str(workdir), "--no-progress", again],
          stdout=log, stderr=subprocess.STDOUT, env=env,
      )
      running.append((process, c, time.perf_counter()))
    time.sleep(0.5)
    for item in list(running):
      process, c, started = item
      if process.poll() is not None:
        running.remove(item)
        status = "ok" if process.returncode == 0 else f"FAILED ({process.returncode})"
        if process.returncode:
          failures.append(c.name)
        print(f"  {c.name}: {status} in {time.perf_counter() - started:.0f} s",
              flush=True)
  if failures:
    raise RuntimeError(f"cells failed (see their log.txt): {failures}")


def collect(configs: Sequence[Config], root: pathlib.Path) -> list[dict]:
  """One record per finished cell."""
  records = []
  for c in configs:
    path = root / c.name / "summary.json"
    if not path.exists():
      continue
    summary = json.loads(path.read_text())
    records.append({
        "dataset": c.dataset, "model": c.model, "method": c.method,
        "target_sparsity": c.sparsity, "seed": c.seed,
        "global_sparsity": summary["global_sparsity"],
        "final_test_accuracy": summary["final_test_accuracy"],
        "best_test_accuracy": summary["best_test_accuracy"],
        "per_layer_sparsity": summary["per_layer_sparsity"],
        "wall_time_s": summary["wall_time_s"],
        **_connectivity_fields(summary),
    })
  return records


def _connectivity_fields(summary: dict) -> dict:
  """Disconnected layers and effective weights, for runs that report them."""
  if "connectivity" not in summary:
    return {}
  c = summary["connectivity"]
  return {"disconnected_layers": c["disconnected_layers"],
          "effective_weights": c["effective_weights"],
          "kept_weights": c["kept_weights"]}


def aggregate(records: Sequence[dict]) -> list[dict]:
  """Mean and standard deviation over seeds, per (dataset, method, target)."""
  groups: dict[tuple, list[dict]] = {}
  for r in records:
    groups.setdefault((r["dataset"], r["method"], r["target_sparsity"]), []).append(r)
  rows = []
  for (dataset, method, target), rs in sorted(groups.items()):
    acc = np.array([r["final_test_accuracy"] for r in rs]) * 100
    rows.append({
        "dataset": dataset, "method": method, "target_sparsity": target,
        "achieved_sparsity": float(np.mean([r["global_sparsity"] for r in rs])),
        "accuracy_mean": float(acc.mean()), "accuracy_std": float(acc.std()),
        "seeds": len(rs),
        **({"disconnected_runs": sum(bool(r["disconnected_layers"]) for r in rs),
            "effective_fraction": float(np.mean(
                [r["effective_weights"] / max(r["kept_weights"], 1) for r in rs]))}
           if all("disconnected_layers" in r for r in rs) else {}),
    })
  return rows


def _method_table(sub: Sequence[dict], cell) -> list[str]:
  """A markdown table of ``cell(row)`` per method (rows) and target (columns)."""
  targets = sorted({r["target_sparsity"] for r in sub})
  lines = ["| method | " + " | ".join(f"{t:.2%}" for t in targets) + " |",
           "| --- |" + " --- |" * len(targets)]
  for m in sorted({r["method"] for r in sub}):
    cells = []
    for t in targets:
      hit = [r for r in sub if r["method"] == m and r["target_sparsity"] == t]
      cells.append(cell(hit[0]) if hit else "–")
    lines.append(f"| {m} | " + " | ".join(cells) + " |")
  return lines


def markdown_table(rows: Sequence[dict]) -> str:
  """Accuracy (mean ± std over seeds, %) per method and target sparsity, and
  where the runs report it, their connectivity."""
  lines = []
  for dataset in sorted({r["dataset"] for r in rows}):
    sub = [r for r in rows if r["dataset"] == dataset]
    lines.append(f"\n**{dataset}** (test accuracy %, mean ± std over seeds)\n")
    lines += _method_table(sub, lambda r: (
        f"{r['accuracy_mean']:.2f} ± {r['accuracy_std']:.2f} (n={r['seeds']})"))
    if all("disconnected_runs" in r for r in sub):
      lines.append(
          f"\n**{dataset}**: runs with a layer cut off from every input-output "
          "path / kept weights that lie on such a path\n")
      lines += _method_table(sub, lambda r: (
          f"{r['disconnected_runs']}/{r['seeds']} / {r['effective_fraction']:.1%}"))
  return "\n".join(lines) + "\n"


def plot(rows: Sequence[dict], path: pathlib.Path, title: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  datasets = sorted({r["dataset"] for r in rows})
  fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4.5),
                           squeeze=False)
  for ax, dataset in zip(axes[0], datasets):
    for method in sorted({r["method"] for r in rows}):
      sub = sorted((r for r in rows if r["dataset"] == dataset and r["method"] == method),
                   key=lambda r: r["target_sparsity"])
      if not sub:
        continue
      ax.errorbar([100 * (1 - r["achieved_sparsity"]) for r in sub],
                  [r["accuracy_mean"] for r in sub],
                  yerr=[r["accuracy_std"] for r in sub], marker="o", capsize=3,
                  label=method)
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("weights remaining (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{title}: {dataset}")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _run_key(record: dict) -> tuple:
  # node_sparsity: the structured runs' target (experiments.structured).
  return tuple(record.get(field) for field in (
      "dataset", "model", "method", "target_sparsity", "node_sparsity", "seed"))


def with_earlier_runs(records: Sequence[dict], out: pathlib.Path
                      ) -> tuple[list[dict], list[str]]:
  """``records`` and the runs of ``out/results.json`` that they do not
  redo, with the commands that made those.

  Cells run at another time or on another machine, whose work directories
  are gone, stay in the results when the sweep is extended (another seed,
  another sparsity): a run collected now replaces the earlier run of the
  same dataset, model, method, target (or node) sparsity and seed.
  """
  path = out / "results.json"
  if not path.exists():
    return list(records), []
  earlier = json.loads(path.read_text())
  new_keys = {_run_key(r) for r in records}
  kept = [r for r in earlier["runs"] if _run_key(r) not in new_keys]
  if not kept:
    return list(records), []
  commands = [*earlier.get("earlier_commands", []), earlier["command"]]
  return kept + list(records), commands


def write_results_json(out: pathlib.Path, command: str, runs: Sequence[dict],
                       earlier_commands: Sequence[str] = (), **fields) -> None:
  """``out/results.json``: the command, ``fields``, the runs and the earlier
  commands (those of the runs :func:`with_earlier_runs` kept).

  Written whole or not at all: ``--keep-earlier`` reads it back, and it may
  hold the only copy of runs whose directories are gone.
  """
  results = {"command": command, **fields, "runs": list(runs)}
  if earlier_commands:
    results["earlier_commands"] = list(earlier_commands)
  out.mkdir(parents=True, exist_ok=True)
  files.write_text_atomically(out / "results.json",
                              json.dumps(results, indent=2) + "\n")


def produced_by(command: str, earlier_commands: Sequence[str] = ()) -> str:
  """The commands that made a results file, in order, for its table."""
  return "".join(f"`{c}`, then " for c in earlier_commands) + f"`{command}`"


def write_results(name: str, records: Sequence[dict], out: pathlib.Path,
                  command: str, earlier_commands: Sequence[str] = ()
                  ) -> list[dict]:
  if not records:
    raise SystemExit(f"no finished runs to collect for {name!r}: nothing written")
  rows = aggregate(records)
  write_results_json(out, command, records, earlier_commands, rows=rows)
  files.write_text_atomically(
      out / "table.md",
      f"# Sweep `{name}`\n\nProduced by {produced_by(command, earlier_commands)}.\n"
      + markdown_table(rows))
  plot(rows, out / "accuracy_vs_sparsity.png", name)
  return rows


def script_parser(name: str, jobs: int, seeds: str) -> argparse.ArgumentParser:
  """The arguments that the reproduction scripts (``experiments.NAME``)
  share: ``--jobs``, ``--seeds``, ``--set``, ``--root`` (default
  ``runs/NAME``), ``--out`` (default ``experiments/results/NAME``) and
  ``--only-collect``."""
  parser = argparse.ArgumentParser(prog=f"python -m experiments.{name}")
  parser.add_argument("--jobs", type=int, default=jobs)
  parser.add_argument("--seeds", default=seeds)
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
  parser.add_argument("--root", default=f"runs/{name}")
  parser.add_argument("--out", default=f"experiments/results/{name}")
  parser.add_argument("--only-collect", action="store_true")
  return parser


def run_script_cells(parser: argparse.ArgumentParser, args: argparse.Namespace,
                     configs: Sequence[Config]) -> list[Config]:
  """A script's ``configs`` with its ``--set`` overrides, run (the finished
  ones skipped) unless ``--only-collect``; a bad override is a usage error."""
  try:
    cell_overrides(args.set)
  except ValueError as error:
    parser.error(str(error))
  configs = [config_lib.apply_overrides(c, args.set) for c in configs]
  if not args.only_collect:
    run_cells(configs, pathlib.Path(args.root), args.jobs)
  return configs


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m experiments.sweep")
  parser.add_argument("sweep", choices=sorted(SWEEPS))
  parser.add_argument("--jobs", type=int, default=2)
  parser.add_argument("--seeds", default=None, help="comma-separated, e.g. 0,1,2")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override a field of every cell")
  parser.add_argument("--root", default=None, help="default runs/sweeps/NAME")
  parser.add_argument("--out", default=None, help="default experiments/results/NAME")
  parser.add_argument("--only", action="append", default=[],
                      metavar="FIELD=V1,V2",
                      help="run only the grid points whose FIELD is one of these")
  parser.add_argument("--only-collect", action="store_true")
  parser.add_argument("--keep-earlier", action="store_true",
                      help="keep the runs already in OUT/results.json that "
                           "this call does not collect again")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  sweep = SWEEPS[args.sweep]
  seeds = None if args.seeds is None else [int(s) for s in args.seeds.split(",")]
  only = {}
  for item in args.only:
    field, sep, values = item.partition("=")
    if not sep or not values:
      parser.error(f"--only takes FIELD=V1,V2, got {item!r}")
    only[field] = values.split(",")
  try:
    cells = sweep.cells(seeds, only)
  except ValueError as e:
    parser.error(str(e))
  try:
    configs = [config_lib.apply_overrides(c, cell_overrides(args.set))
               for c in cells]
  except ValueError as e:
    parser.error(str(e))
  root = pathlib.Path(args.root or f"runs/sweeps/{args.sweep}")
  if not args.only_collect:
    run_cells(configs, root, args.jobs)
  command = "python -m experiments.sweep " + " ".join(
      sys.argv[1:] if argv is None else argv)
  out = pathlib.Path(args.out or f"experiments/results/{args.sweep}")
  records, earlier_commands = collect(configs, root), []
  if args.keep_earlier:
    records, earlier_commands = with_earlier_runs(records, out)
  rows = write_results(args.sweep, records, out, command, earlier_commands)
  print(markdown_table(rows))
  return 0


if __name__ == "__main__":
  sys.exit(main())
