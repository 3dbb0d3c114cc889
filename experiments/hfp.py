"""HFP: Conv-6 on Fashion-MNIST pruned to latency budgets, against L1 norms at the same FLOPs.

    python -m experiments.hfp [--seeds 0] [--fractions 0.7,0.5,0.3] \\
        [--batch 128] [--tables 3] [--repeats 5] [--grid 5] \\
        [--calibration 16] [--per-round 256] [--recover-steps 30] \\
        [--finetune-steps 100] [--timing-batches 30] [--l1 layerwise]

Trains Conv-6 dense on Fashion-MNIST (Adam 1e-3, batch 128, 2 epochs, as
``experiments.structured``), then:

1. measures a latency lookup table of the trained network on this device
   (``jaxprune.latency_table``) at a batch of ``--batch`` test images: the
   element-wise minimum of ``--tables`` tables, each the median of
   ``--repeats`` calls per entry on a grid of ``--grid`` widths per layer
   (the minimum is the least disturbed by the other jobs of a shared
   machine); the load average is kept beside it.  The table is saved in
   ``OUT/latency_table.json`` and reused while the batch, grid and network
   widths are the same (``--remeasure`` measures it again);
2. for each budget (a fraction of the dense latency, largest first), runs
   Opti-Cut (``jaxprune.opti_cut``) with information gain on
   ``--calibration`` training images, ``--per-round`` removals per round and
   ``--recover-steps`` Adam steps of recovery after each round (the removed
   units held at zero by ``jaxprune.prune`` with ``node_weight_masks``).
   The budgets are one schedule: each smaller budget continues from the
   previous cut (its masks and recovered params), as a longer run of
   Opti-Cut would;
3. the baseline: filters ranked by the L1 norm of their kernels, removed by
   the same loop (same rounds, same recovery) until the network's
   multiply-adds are at most those of the HFP network at the same budget (a
   ``LatencyTable`` of multiply-adds, exact); ``--l1 layerwise`` (default)
   ranks within each layer, so that every layer loses the same fraction of
   its units (Li et al. 2017); ``--l1 global`` ranks the raw norms over the
   whole network;
4. shrinks every network (``jaxprune.shrink``), fine-tunes it for
   ``--finetune-steps`` Adam steps, and reports its test accuracy, params,
   multiply-adds, predicted latency and the latency measured against the
   dense network in this process (the jitted forward pass on the same
   batch, all networks called in turn, ``--timing-batches`` times, median).

Writes ``table.md``, ``results.json``, ``latency_table.json``,
``accuracy_vs_params.png`` and ``accuracy_vs_latency.png`` into
``experiments/results/hfp/``; the dense run lives in ``runs/hfp/CELL``
and is not trained again once finished.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import sys
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxprune
from experiments import checkpoints
from experiments import config as config_lib
from experiments import data
from experiments import files
from experiments import loops
from experiments import models
from experiments import networks
from experiments import structured
from experiments import sweep
from experiments.config import Config

FRACTIONS = (0.7, 0.5, 0.3)
LAYERS = ("Conv_0", "Conv_1", "Conv_2", "Conv_3", "Conv_4", "Conv_5",
          "Dense_0", "Dense_1", "Dense_2")
HIDDEN = LAYERS[:-1]
BASE = structured.BASES["conv6"]
_BATCH = 128  # recovery and fine-tuning, as the dense training
_LEARNING_RATE = 1e-3


def cells(seeds: Sequence[int]) -> list[Config]:
  """The dense training runs: one per seed."""
  return [dataclasses.replace(BASE, name=f"conv6-fashion_mnist-dense-seed{s}",
                              method="dense", seed=s) for s in seeds]


def _load() -> list[float]:
  return [round(x, 2) for x in os.getloadavg()]


# ---------------------------------------------------------------- the tables


def measure_table(model, params, images, *, tables: int, repeats: int,
                  grid: int) -> dict:
  """The element-wise minimum of ``tables`` latency tables (the dense total
  too, the rest recomputed from them), each table and the load average
  around it."""
  measured, loads = [], []
  for _ in range(tables):
    before = _load()
    start = time.perf_counter()
    table = jaxprune.latency_table(model, images, layers=list(LAYERS),
                                   variables={"params": params}, widths=grid,
                                   repeats=repeats)
    loads.append({"before": before, "after": _load(),
                  "seconds": round(time.perf_counter() - start, 1)})
    measured.append(table)
  first = measured[0]
  seconds = {name: np.min([t.seconds[name] for t in measured], axis=0)
             for name in LAYERS}
  total = min(t.total for t in measured)
  best = first._replace(
      seconds=seconds, total=float(total),
      rest=float(total - sum(seconds[name][-1, -1] for name in LAYERS)))
  return {"table": best.to_dict(), "tables": [t.to_dict() for t in measured],
          "loadavg": loads, "repeats": repeats, "grid": grid,
          "platform": jax.devices()[0].platform,
          "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def latency_table(model, params, images, out: pathlib.Path, *, tables: int,
                  repeats: int, grid: int, remeasure: bool) -> dict:
  """``OUT/latency_table.json`` if it was measured on the same batch shape,
  grid and widths, else a new measurement (saved there)."""
  path = out / "latency_table.json"
  widths = {name: int(params[name]["kernel"].shape[-1]) for name in LAYERS}
  if path.exists() and not remeasure:
    saved = json.loads(path.read_text())
    table = jaxprune.LatencyTable.from_dict(saved["table"])
    if (list(table.input_shape) == list(images.shape) and saved["grid"] == grid
        and table.full_widths() == widths
        and saved["platform"] == jax.devices()[0].platform):
      return saved
  saved = measure_table(model, params, images, tables=tables, repeats=repeats,
                        grid=grid)
  out.mkdir(parents=True, exist_ok=True)
  files.write_text_atomically(path, json.dumps(saved, indent=1) + "\n")
  return saved


def positions(model, params, image) -> dict[str, int]:
  """Multiply-adds per input unit and output unit of each layer, per image:
  the output positions of a conv layer times its kernel's window, a dense
  layer's positions of the flattened map before it."""
  _, state = model.apply({"params": params}, image[None],
                         capture_intermediates=True)
  found = {}
  width_in = int(image.shape[-1])
  for name in LAYERS:
    kernel = params[name]["kernel"]
    out_shape = state["intermediates"][name]["__call__"][0].shape
    window = math.prod(kernel.shape[:-1]) // width_in
    found[name] = math.prod(out_shape[1:-1]) * window
    width_in = int(kernel.shape[-1])
  return found


def flop_table(table: jaxprune.LatencyTable, per_unit: dict[str, int]
               ) -> jaxprune.LatencyTable:
  """A table of ``table``'s grid whose entries are multiply-adds per image
  (exact: they are bilinear in the widths), rest 0."""
  seconds = {name: per_unit[name] * np.outer(table.inputs[name],
                                             table.outputs[name]).astype(float)
             for name in LAYERS}
  total = float(sum(s[-1, -1] for s in seconds.values()))
  return table._replace(seconds=seconds, total=total, rest=0.0)


def multiply_adds(per_unit: dict[str, int], widths: dict[str, int],
                  channels: int = 1) -> int:
  """Multiply-adds per image of the network at ``widths`` (every layer's),
  ``channels`` in its input."""
  total, width_in = 0, channels
  for name in LAYERS:
    total += per_unit[name] * width_in * widths[name]
    width_in = widths[name]
  return int(total)


# ---------------------------------------------------------------- the criteria


def l1_norms(params) -> dict[str, np.ndarray]:
  return {name: np.asarray(jnp.sum(jnp.abs(params[name]["kernel"]),
                                   axis=tuple(range(params[name]["kernel"].ndim - 1))))
          for name in HIDDEN}


def l1_layerwise(params, node_masks, batch_stats) -> dict[str, np.ndarray]:
  """Each kept unit's rank by L1 norm within its layer, over the layer's kept
  units: the global order then takes every layer down at the same rate."""
  del batch_stats
  scores = {}
  for name, norms in l1_norms(params).items():
    keep = np.asarray(node_masks[name])
    score = np.full(norms.size, np.inf)
    kept = np.flatnonzero(keep)
    ranks = np.argsort(np.argsort(norms[kept], kind="stable"), kind="stable")
    score[kept] = (ranks + 1) / kept.size
    scores[name] = score
  return scores


def l1_global(params, node_masks, batch_stats) -> dict[str, np.ndarray]:
  del node_masks, batch_stats
  return l1_norms(params)


class InformationGain:
  """``importance`` for Opti-Cut: the information gain of the kept units,
  computed on the shrunk network (the same function as the masked one,
  at the cost of the kept units only), ``+inf`` for the removed."""

  def __init__(self, config: Config, images: np.ndarray):
    self.config, self.images = config, jnp.asarray(images)
    self.models: dict[tuple, object] = {}

  def __call__(self, params, node_masks, batch_stats):
    del batch_stats
    small = jaxprune.shrink(params, node_masks, layers=list(LAYERS))
    widths = tuple(small.widths[name] for name in HIDDEN)
    model = self.models.setdefault(widths, networks.get(self.config, widths=widths))
    gains = jaxprune.information_gain(model, self.images, layers=list(LAYERS),
                                      params=small.params)
    scores = {}
    for name in HIDDEN:
      keep = np.asarray(node_masks[name])
      score = np.full(keep.size, np.inf)
      score[keep] = gains[name]
      scores[name] = score
    return scores


def recovery(apply, train: data.Split, steps: int, seed: int):
  """``recover`` for Opti-Cut: ``steps`` Adam steps with the removed units'
  weights held at zero by ``jaxprune.prune``."""
  calls = [0]

  def recover(params, node_masks, batch_stats):
    if steps == 0:
      return params, batch_stats
    masks = jax.tree.map(lambda p: jnp.ones(p.shape, bool) if p.ndim > 1 else None,
                         params)
    masks = jaxprune.node_weight_masks(masks, node_masks, layers=list(LAYERS))
    tx = jaxprune.prune(optax.adam(_LEARNING_RATE), masks=masks)
    params, _ = loops.train_steps(apply, tx, params, train, steps=steps,
                                  seed=seed + 1000 * calls[0], batch=_BATCH)
    calls[0] += 1
    return params, batch_stats

  return recover


# ---------------------------------------------------------------- the runs


def _widths(node_masks) -> dict[str, int]:
  return {name: int(np.asarray(node_masks[name]).sum()) for name in HIDDEN}


def cut_schedule(params, budgets, *, importance, table, recover, per_round,
                 label: str) -> list[dict]:
  """Opti-Cut to each budget in turn (seconds of ``table``, decreasing),
  each continuing from the previous cut.  A budget that cannot be met is
  recorded with the reason, and ends the schedule."""
  found, masks = [], None
  for budget in budgets:
    start = time.perf_counter()
    try:
      cut = jaxprune.opti_cut(params, layers=list(LAYERS), table=table,
                              importance=importance, budget=budget,
                              recover=recover, per_round=per_round,
                              node_masks=masks)
    except ValueError as error:
      print(f"{label}: budget {budget:.6g} unreachable: {error}", flush=True)
      found.append({"budget": budget, "unreachable": str(error)})
      break
    for r in cut.history:
      print(f"  {label} -> {budget:.6g}: {r}", flush=True)
    params, masks = cut.params, cut.node_masks
    found.append({"budget": budget, "cut": cut,
                  "cut_s": time.perf_counter() - start})
  return found


def finish(config: Config, cut, train, test, finetune_steps: int, seed: int):
  """The shrunk network of ``cut``, fine-tuned: (model, params, widths,
  accuracy before and after the fine-tune)."""
  small = jaxprune.shrink(cut.params, cut.node_masks, layers=list(LAYERS))
  widths = {name: small.widths[name] for name in LAYERS}
  model = networks.get(config, widths=tuple(widths[n] for n in HIDDEN))
  apply = lambda p, x: model.apply({"params": p}, x)
  before = 1 - loops.error_percent(apply, small.params, test) / 100
  tuned = small.params
  if finetune_steps:
    tuned, _ = loops.train_steps(apply, optax.adam(_LEARNING_RATE), small.params,
                                 train, steps=finetune_steps, seed=seed,
                                 batch=_BATCH)
  after = 1 - loops.error_percent(apply, tuned, test) / 100
  return model, tuned, widths, before, after


def experiment(config: Config, state, args, out: pathlib.Path) -> dict:
  """Everything for one trained dense run: the records and the table info."""
  train = data.load(config.dataset, "train", source_dir=config.source_dir,
                    tfds_dir=config.tfds_dir)
  test = data.load(config.dataset, "test", source_dir=config.source_dir,
                   tfds_dir=config.tfds_dir)
  if args.test_images:  # a quick run: the accuracy on the first ones
    test = data.Split(test.images[:args.test_images],
                      test.labels[:args.test_images], test.name)
  model = networks.get(config)
  params = state.params
  apply = lambda p, x: model.apply({"params": p}, x)
  images = jnp.asarray(data.normalise(test.images[:args.batch], test.name))
  saved = latency_table(model, params, images, out, tables=args.tables,
                        repeats=args.repeats, grid=args.grid,
                        remeasure=args.remeasure)
  table = jaxprune.LatencyTable.from_dict(saved["table"])
  per_unit = positions(model, params, images[0])
  flops = flop_table(table, per_unit)
  full = table.full_widths()
  dense_macs = multiply_adds(per_unit, full)
  print(f"latency table: dense {table.total * 1e3:.2f} ms at batch "
        f"{args.batch}, rest {table.rest * 1e3:.2f} ms; load {saved['loadavg']}",
        flush=True)

  fractions = sorted(args.fractions, reverse=True)
  calibration = data.normalise(train.images[:args.calibration], train.name)
  hfp = cut_schedule(
      params, [f * table.total for f in fractions],
      importance=InformationGain(config, calibration), table=table,
      recover=recovery(apply, train, args.recover_steps, config.seed),
      per_round=args.per_round, label="hfp")
  matched = [multiply_adds(per_unit, {**full, **_widths(h["cut"].node_masks)})
             for h in hfp if "cut" in h]
  criterion = {"layerwise": l1_layerwise, "global": l1_global}[args.l1]
  l1 = cut_schedule(
      params, matched, importance=criterion, table=flops,
      recover=recovery(apply, train, args.recover_steps, config.seed + 1),
      per_round=args.per_round, label=f"l1 {args.l1}")
  # What the raw global L1 order would leave at the same multiply-adds, no
  # recovery (the norms of the dense network): to see whether it collapses
  # a layer.
  global_widths = []
  for budget in matched:
    try:
      plain = jaxprune.opti_cut(params, layers=list(LAYERS), table=flops,
                                importance=l1_global, budget=budget,
                                per_round=10**6)
      global_widths.append(_widths(plain.node_masks))
    except ValueError as error:
      global_widths.append(str(error))

  records, forwards = [], [(jax.jit(apply), params)]
  dense_accuracy = 1 - loops.error_percent(apply, params, test) / 100
  records.append({
      "method": "dense", "fraction": 1.0, "widths": full,
      "params": models.count_params(params), "multiply_adds": dense_macs,
      "predicted_s": table.total, "accuracy": dense_accuracy,
      "accuracy_before_finetune": dense_accuracy})
  runs = [("hfp", f, h) for f, h in zip(fractions, hfp)]
  runs += [(f"l1_{args.l1}", f, h) for f, h in zip(fractions, l1)]
  for method, fraction, found in runs:
    record = {"method": method, "fraction": fraction, "budget": found["budget"]}
    if "unreachable" in found:
      records.append({**record, "unreachable": found["unreachable"]})
      continue
    cut = found["cut"]
    small_model, tuned, widths, before, after = finish(
        config, cut, train, test, args.finetune_steps, config.seed)
    record.update({
        "widths": widths, "params": models.count_params(tuned),
        "multiply_adds": multiply_adds(per_unit, widths),
        "predicted_s": table.predict({n: widths[n] for n in HIDDEN}),
        "rounds": len(cut.history), "cut_s": found["cut_s"],
        "history": [str(r) for r in cut.history],
        "accuracy_before_finetune": before, "accuracy": after})
    records.append(record)
    forwards.append((jax.jit(lambda p, x, m=small_model: m.apply({"params": p}, x)),
                     tuned))
  timed = [r for r in records if "unreachable" not in r]
  before = _load()
  medians = structured.alternating_medians(forwards, images, args.timing_batches)
  timing_load = {"before": before, "after": _load()}
  for record, seconds in zip(timed, medians):
    record["measured_s"] = seconds
    record["measured_ratio"] = seconds / medians[0]
    record["predicted_ratio"] = record["predicted_s"] / table.total
  return {"records": records, "table": saved, "timing_loadavg": timing_load,
          "global_l1_widths_without_recovery": global_widths,
          "dense_measured_s": medians[0]}


# ---------------------------------------------------------------- the files


def _label(record: dict) -> str:
  return "dense" if record["method"] == "dense" else f"{record['fraction']:.0%}"


def table_text(records: list[dict]) -> str:
  lines = ["| budget | method | widths | params | multiply-adds | predicted ms "
           "(ratio) | measured ms (ratio) | test accuracy % (before fine-tune) |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
  for r in records:
    if "unreachable" in r:
      lines.append(f"| {_label(r)} | {r['method']} | unreachable: "
                   f"{r['unreachable']} | | | | | |")
      continue
    widths = "-".join(str(r["widths"][n]) for n in HIDDEN)
    lines.append(
        f"| {_label(r)} | {r['method']} | {widths} | {r['params']:,} | "
        f"{r['multiply_adds'] / 1e6:.1f}M | {r['predicted_s'] * 1e3:.1f} "
        f"({r.get('predicted_ratio', 1):.2f}) | {r['measured_s'] * 1e3:.1f} "
        f"({r['measured_ratio']:.2f}) | {100 * r['accuracy']:.2f} "
        f"({100 * r['accuracy_before_finetune']:.2f}) |")
  return "\n".join(lines) + "\n"


def plot(records: list[dict], out: pathlib.Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  done = [r for r in records if "unreachable" not in r]
  dense = [r for r in done if r["method"] == "dense"]
  for key, xlabel, name in (
      ("params", "parameters of the shrunk network", "accuracy_vs_params.png"),
      ("measured_s", "measured latency, ms (batch of the table)",
       "accuracy_vs_latency.png")):
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for method in sorted({r["method"] for r in done} - {"dense"}):
      sub = sorted((r for r in done if r["method"] == method), key=lambda r: r[key])
      scale = 1e3 if key == "measured_s" else 1
      ax.plot([r[key] * scale for r in sub], [100 * r["accuracy"] for r in sub],
              "o-", label=method)
      for r in sub:
        ax.annotate(f"{r['fraction']:.0%}", (r[key] * scale, 100 * r["accuracy"]),
                    fontsize=7)
    for r in dense:
      scale = 1e3 if key == "measured_s" else 1
      ax.plot([r[key] * scale], [100 * r["accuracy"]], "k*", markersize=10,
              label="dense")
    if key == "params":
      ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy %")
    ax.set_title("Conv-6 Fashion-MNIST: HFP vs L1 at equal multiply-adds "
                 "(labels: latency budget)", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / name, dpi=120)
    plt.close(fig)


def write_results(found: dict, out: pathlib.Path, command: str, args) -> str:
  records = found["records"]
  settings = {k: getattr(args, k) for k in (
      "batch", "tables", "repeats", "grid", "calibration", "per_round",
      "recover_steps", "finetune_steps", "timing_batches", "test_images",
      "l1")}
  table_info = found["table"]
  sweep.write_results_json(
      out, command, records, settings=settings,
      latency_table={"loadavg": table_info["loadavg"],
                     "measured_at": table_info["measured_at"],
                     "total_s": table_info["table"]["total"],
                     "rest_s": table_info["table"]["rest"],
                     "file": "latency_table.json"},
      timing_loadavg=found["timing_loadavg"],
      global_l1_widths_without_recovery=found["global_l1_widths_without_recovery"])
  text = table_text(records)
  loads = "; ".join(f"{x['before']} → {x['after']}" for x in table_info["loadavg"])
  files.write_text_atomically(
      out / "table.md",
      "# HFP: Conv-6 on Fashion-MNIST to latency budgets\n\n"
      f"Produced by {sweep.produced_by(command)} on "
      f"{jax.devices()[0].platform}.\n\n"
      f"Latency at a batch of {args.batch} test images: the table is the "
      f"element-wise minimum of {args.tables} tables ({args.grid} widths per "
      f"layer, median of {args.repeats} calls each; load average (1, 5, 15 "
      f"min) {loads}); the measured latency is the median of "
      f"{args.timing_batches} calls of each network in turn (load "
      f"{found['timing_loadavg']['before']} → {found['timing_loadavg']['after']}). "
      "Ratios are to the dense network (the table's total, and the dense "
      "network timed with the others). The L1 baseline is cut to at most the "
      "multiply-adds (per image) of the HFP network of the same budget. "
      "Widths: Conv_0 ... Conv_5, Dense_0, Dense_1.\n\n" + text)
  plot(records, out)
  return text


def main(argv=None) -> int:
  parser = sweep.script_parser("hfp", jobs=1, seeds="0")
  parser.add_argument("--fractions", default=",".join(f"{f:g}" for f in FRACTIONS))
  parser.add_argument("--batch", type=int, default=128,
                      help="test images per timed call (table and measurement)")
  parser.add_argument("--tables", type=int, default=3)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--grid", type=int, default=5, help="widths per layer")
  parser.add_argument("--remeasure", action="store_true",
                      help="measure the latency table again")
  parser.add_argument("--calibration", type=int, default=16,
                      help="training images for information gain")
  parser.add_argument("--per-round", type=int, default=256)
  parser.add_argument("--recover-steps", type=int, default=30)
  parser.add_argument("--finetune-steps", type=int, default=100)
  parser.add_argument("--timing-batches", type=int, default=30)
  parser.add_argument("--test-images", type=int, default=0,
                      help="evaluate on the first N test images (0: all)")
  parser.add_argument("--l1", choices=("layerwise", "global"), default="layerwise")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  args.fractions = [float(f) for f in args.fractions.split(",")]
  seeds = [int(s) for s in args.seeds.split(",")]
  if len(seeds) != 1:
    parser.error("one seed at a time")
  try:
    sweep.cell_overrides(args.set)
  except ValueError as error:
    parser.error(str(error))
  (config,) = [config_lib.apply_overrides(c, args.set) for c in cells(seeds)]
  root = pathlib.Path(args.root)
  if not args.only_collect:
    sweep.run_cells([config], root, args.jobs)
  if not (root / config.name / "summary.json").exists():
    raise SystemExit(f"the dense run {root / config.name} is not finished")
  state = checkpoints.load_checkpoint(config, root / config.name)
  out = pathlib.Path(args.out)
  found = experiment(config, state, args, out)
  command = ("python -m experiments.hfp " + " ".join(
      sys.argv[1:] if argv is None else argv)).rstrip()
  print(write_results(found, out, command, args))
  return 0


if __name__ == "__main__":
  sys.exit(main())
