"""Lottery tickets on LeNet-300-100 / MNIST: IMP, its random-reinit control,
and Accelerated IMP.

Frankle & Carbin's setup: Adam 1.2e-3, batch 60, ``--steps`` iterations a
round (50,000 in the paper), 20% of the hidden layers' and 10% of the output
layer's surviving weights pruned per round, layer by layer, rewound to
initialisation.  5,000 training images are held out for validation; the
early-stopping iteration is the one of least validation loss, evaluated every
``--eval-every`` iterations, and the test accuracy is read there.

  JAXPRUNE_DATA_DIR=../shared/data python -m experiments.lottery \\
      --seed 0 --rounds 15 --steps 50000 --variant imp
  ... --variant control --rounds-of experiments/results/lottery/imp_seed0.json
  ... --variant aimp --short-steps 20000
  python -m experiments.lottery --collect experiments/results/lottery

Each variant writes ``VARIANT_seedS.json`` (its rounds, resumable, and every
round's masks go under ``runs/lottery/``); ``--collect`` writes ``table.md``, ``results.json`` and
``accuracy_vs_remaining.png`` from the JSON files of a folder.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxprune
from experiments import data
from experiments import models

_VALIDATION = 5000
_LEARNING_RATE = 1.2e-3
_BATCH = 60
_OUTPUT_LAYER = "Dense_2"


def lottery_rate(path, leaf) -> float:
  """20% of a hidden layer's survivors per round, 10% of the output layer's."""
  del leaf
  return 0.1 if path[0] == _OUTPUT_LAYER else 0.2


def _arrays(source_dir=None, tfds_dir=None):
  train = data.load("mnist", "train", source_dir=source_dir, tfds_dir=tfds_dir)
  test = data.load("mnist", "test", source_dir=source_dir, tfds_dir=tfds_dir)

  def flat(split):
    images = data.normalise(np.asarray(split.images), "mnist")
    return (jnp.asarray(images.reshape(len(images), -1)),
            jnp.asarray(split.labels, jnp.int32))

  x, y = flat(train)
  return ((x[:-_VALIDATION], y[:-_VALIDATION]),
          (x[-_VALIDATION:], y[-_VALIDATION:]), flat(test))


class Trainer:
  """The training function ``jaxprune.imp`` calls, and the evaluations."""

  def __init__(self, splits, seed: int, eval_every: int):
    (self.x, self.y), self.validation, self.test = splits
    self.model = models.LeNet300100()
    self.seed, self.eval_every = seed, eval_every
    self.per_epoch = len(self.x) // _BATCH
    self._orders = {}
    self._tx = None  # prune(adam) holding masks, made from the first params
    self._run = jax.jit(self._steps)

  def init(self, seed: int):
    return self.model.init(jax.random.key(seed), self.x[:1])["params"]

  def _loss(self, params, x, y):
    logits = self.model.apply({"params": params}, x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, (logits.argmax(-1) == y).mean()

  def _indices(self, start: int, count: int) -> np.ndarray:
    """The examples of steps ``start .. start + count - 1``: a fresh
    permutation each epoch, the same in every round."""
    rows = []
    for step in range(start, start + count):
      epoch, position = divmod(step, self.per_epoch)
      rows.append(self._order(epoch)[position * _BATCH:(position + 1) * _BATCH])
    return np.stack(rows)

  def _order(self, epoch: int) -> np.ndarray:
    if epoch not in self._orders:
      self._orders = {epoch: np.random.default_rng((self.seed, epoch)).permutation(
          len(self.x))}
    return self._orders[epoch]

  def _steps(self, params, opt_state, indices, x, y):
    """``self._tx``'s steps over the rows ``indices`` of ``x`` and ``y``,
    jitted once (``self._run``). The data are arguments: closed over, they
    would be constants of the compiled program (172 MB of images in every
    compile and cache entry)."""

    def body(carry, idx):
      params, opt_state = carry
      grads = jax.grad(lambda p: self._loss(p, x[idx], y[idx])[0])(params)
      updates, opt_state = self._tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), None

    return jax.lax.scan(body, (params, opt_state), indices)[0]

  def evaluate(self, params) -> dict:
    validation_loss, validation_accuracy = self._loss(params, *self.validation)
    _, test_accuracy = self._loss(params, *self.test)
    return {"validation_loss": float(validation_loss),
            "validation_accuracy": float(validation_accuracy),
            "test_accuracy": float(test_accuracy)}

  def __call__(self, params, round: jaxprune.Round) -> jaxprune.Trained:
    if self._tx is None:  # masks enter at init only: one tx for every round
      self._tx = jaxprune.prune(optax.adam(_LEARNING_RATE), masks=round.masks)
    opt_state = jaxprune.replace_masks(self._tx.init(params), round.masks)
    step, stop = round.start_step, round.start_step + round.steps
    evaluations, saved = [], None
    while step < stop:
      if step == round.save_step:
        saved = params
      boundary = min(stop, (step // self.eval_every + 1) * self.eval_every)
      if round.save_step is not None and step < round.save_step < boundary:
        boundary = round.save_step
      params, opt_state = self._run(
          params, opt_state, jnp.asarray(self._indices(step, boundary - step)),
          self.x, self.y)
      step = boundary
      if step % self.eval_every == 0 or step == stop:
        evaluations.append({"step": step, **self.evaluate(params)})
    best = min(evaluations, key=lambda e: e["validation_loss"])
    return jaxprune.Trained(params, {
        "early_stop_step": best["step"],
        "test_accuracy_at_early_stop": best["test_accuracy"],
        "final_test_accuracy": evaluations[-1]["test_accuracy"],
        "evaluations": evaluations,
    }, saved)


def _record(record: jaxprune.RoundRecord) -> dict:
  return {"round": record.index, "remaining": record.remaining,
          "steps": record.steps, "seconds": record.seconds,
          **{k: v for k, v in record.metrics.items() if k != "evaluations"}}


def run(args) -> dict:
  splits = _arrays(args.source_dir, args.tfds_dir)
  trainer = Trainer(splits, args.seed, args.eval_every)
  name = f"{args.variant}_seed{args.seed}"
  workdir = pathlib.Path(args.workdir) / name
  log = lambda r: print(f"{name} round {r.index}: {r.remaining:.2%} remaining, "
                        f"early stop {r.metrics['early_stop_step']}, test "
                        f"{r.metrics['test_accuracy_at_early_stop']:.4f}, "
                        f"{r.seconds:.0f} s", flush=True)
  if args.variant == "control":
    # The masks of the IMP rounds, trained from a fresh initialisation.
    imp_rounds = json.loads(pathlib.Path(args.rounds_of).read_text())["masks_file"]
    stored = np.load(imp_rounds)
    fresh = trainer.init(args.seed + 1000)
    rounds = []
    chosen = (range(1, args.rounds + 1) if args.control_rounds is None
              else [int(r) for r in args.control_rounds.split(",")])
    for index in chosen:
      masks = jax.tree_util.tree_map_with_path(
          lambda path, leaf, index=index: (
              jnp.asarray(stored[f"{index}:{jaxprune_path(path)}"])
              if f"{index}:{jaxprune_path(path)}" in stored else None), fresh)
      began = time.perf_counter()
      outcome = trainer(jaxprune.apply_masks(fresh, masks), jaxprune.Round(
          index, masks, 0.0, 0, args.steps, None, index == args.rounds))
      record = jaxprune.RoundRecord(
          index, 0.0, _remaining(masks), args.steps, outcome.metrics,
          time.perf_counter() - began, masks)
      log(record)
      rounds.append(record)
  else:
    result = jaxprune.imp(
        trainer, trainer.init(args.seed), rounds=args.rounds, rate=lottery_rate,
        steps=args.steps, short_steps=args.short_steps if args.variant == "aimp" else None,
        workdir=workdir, log=log)
    rounds = result.rounds
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  masks_file = pathlib.Path(args.workdir) / f"{name}_masks.npz"  # not committed
  if args.variant != "control":
    np.savez_compressed(masks_file, **{
        f"{r.index}:{key}": np.asarray(m) for r in rounds
        for key, m in _flat_masks(r.masks)})
  summary = {"variant": args.variant, "seed": args.seed, "steps": args.steps,
             "short_steps": args.short_steps, "eval_every": args.eval_every,
             "rounds": [_record(r) for r in rounds],
             "masks_file": str(masks_file) if args.variant != "control" else None}
  (out / f"{name}.json").write_text(json.dumps(summary, indent=1))
  return summary


def jaxprune_path(path) -> str:
  return "/".join(str(getattr(k, "key", k)) for k in path)


def _flat_masks(masks):
  flat = jax.tree_util.tree_flatten_with_path(masks)[0]
  return [(jaxprune_path(path), leaf) for path, leaf in flat]


def _remaining(masks) -> float:
  leaves = jax.tree.leaves(masks)
  return sum(int(np.sum(np.asarray(m))) for m in leaves) / sum(m.size for m in leaves)


def _mean_std(values, digits: int = 2) -> str:
  values = np.asarray(values, float)
  if len(values) == 1:
    return f"{values[0]:.{digits}f}"
  return f"{values.mean():.{digits}f} ± {values.std():.{digits}f}"


def _headline(runs: list[dict]) -> list[str]:
  """Mean ± std over seeds at the rounds present in every run of a variant,
  and the wall time of a non-final round."""
  lines = ["| variant | round | remaining % | seeds | test acc. at early stop % | "
           "early-stop step | final test acc. % |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
  for variant in ("imp", "control", "aimp"):
    chosen = [r for r in runs if r["variant"] == variant]
    if not chosen:
      continue
    common = sorted(set.intersection(*(
        {x["round"] for x in r["rounds"]} for r in chosen)))
    for index in common:
      at = [next(x for x in r["rounds"] if x["round"] == index) for r in chosen]
      lines.append(
          f"| {variant} | {index} | {100 * at[0]['remaining']:.1f} | {len(at)} | "
          f"{_mean_std([100 * x['test_accuracy_at_early_stop'] for x in at])} | "
          f"{_mean_std([x['early_stop_step'] for x in at], 0)} | "
          f"{_mean_std([100 * x['final_test_accuracy'] for x in at])} |")
  lines += ["", "| variant | seeds | seconds per non-final round | seconds, final round |",
            "| --- | --- | --- | --- |"]
  for variant in ("imp", "aimp"):
    chosen = [r for r in runs if r["variant"] == variant]
    if chosen:
      lines.append(
          f"| {variant} | {len(chosen)} | "
          f"{_mean_std([np.mean([x['seconds'] for x in r['rounds'][:-1]]) for r in chosen], 0)} | "
          f"{_mean_std([r['rounds'][-1]['seconds'] for r in chosen], 0)} |")
  return lines


def collect(folder: pathlib.Path) -> None:
  """``table.md``, ``results.json`` and the plot from a folder's runs."""
  runs = [json.loads(p.read_text()) for p in sorted(folder.glob("*_seed*.json"))]
  rows = ["| variant | seed | round | remaining % | steps | early-stop step | "
          "test acc. at early stop % | final test acc. % | seconds |",
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  for run_ in runs:
    for r in run_["rounds"]:
      rows.append(
          f"| {run_['variant']} | {run_['seed']} | {r['round']} | "
          f"{100 * r['remaining']:.1f} | {r['steps']} | {r['early_stop_step']} | "
          f"{100 * r['test_accuracy_at_early_stop']:.2f} | "
          f"{100 * r['final_test_accuracy']:.2f} | {r['seconds']:.0f} |")
  (folder / "table.md").write_text(
      "\n".join(_headline(runs)) + "\n\nEvery round of every run:\n\n"
      + "\n".join(rows) + "\n")
  (folder / "results.json").write_text(json.dumps(runs, indent=1))
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
  for run_ in runs:
    remaining = [100 * r["remaining"] for r in run_["rounds"]]
    label = f"{run_['variant']} seed {run_['seed']}"
    left.plot(remaining, [100 * r["test_accuracy_at_early_stop"] for r in run_["rounds"]],
              "o-", label=label)
    right.plot(remaining, [r["early_stop_step"] for r in run_["rounds"]], "o-", label=label)
  for axis, title in ((left, "test accuracy at early stop (%)"),
                      (right, "early-stopping iteration")):
    axis.set_xscale("log")
    axis.invert_xaxis()
    axis.set_xlabel("weights remaining (%)")
    axis.set_title(title)
    axis.grid(True, alpha=0.3)
  left.legend()
  fig.tight_layout()
  fig.savefig(folder / "accuracy_vs_remaining.png", dpi=120)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--variant", choices=("imp", "aimp", "control"), default="imp")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--rounds", type=int, default=15)
  parser.add_argument("--steps", type=int, default=50_000)
  parser.add_argument("--short-steps", type=int, default=None)
  parser.add_argument("--eval-every", type=int, default=500)
  parser.add_argument("--rounds-of", default=None,
                      help="the IMP run's JSON whose masks the control trains")
  parser.add_argument("--control-rounds", default=None, metavar="R1,R2,...",
                      help="the IMP rounds whose masks the control trains (all by default)")
  parser.add_argument("--out", default="experiments/results/lottery")
  parser.add_argument("--workdir", default="runs/lottery")
  parser.add_argument("--collect", default=None, metavar="FOLDER")
  parser.add_argument("--source-dir", default=None)
  parser.add_argument("--tfds-dir", default=None)
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  if args.collect:
    collect(pathlib.Path(args.collect))
    return 0
  if args.variant == "control" and not args.rounds_of:
    parser.error("--variant control needs --rounds-of IMP_JSON")
  if args.variant == "aimp" and not args.short_steps:
    parser.error("--variant aimp needs --short-steps")
  run(args)
  return 0


if __name__ == "__main__":
  sys.exit(main())
