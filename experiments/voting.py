"""Majority-voting neuron removal during training, on LeNet-300-100 and MNIST.

    python -m experiments.voting [--seeds 0] [--targets 0.5,0.7,0.8,0.9] \\
        [--magnitude 0.9] [--set steps=1407]

For each seed, trains LeNet-300-100 (Adam, batch 128, 3 epochs by default):

- ``dense``: no removal, the reference accuracy;
- ``voting-T``: from initialisation, with majority voting
  (``jaxprune.neuron_votes`` on every training batch, ``rule="mean"``)
  and removals of the least-voted units (``jaxprune.prune_by_votes``) at 5
  events in the first 5/8 of the run, cubically to ``T`` of each hidden
  layer's units (``jaxprune.vote_schedule``); the removed units are kept at
  zero by ``jaxprune.prune`` masks and the network is shrunk at the end;
- ``magnitude``: the trained dense network pruned once to ``--magnitude``
  (90%) of its kernel weights by global magnitude, then trained as long
  again under its masks: the sparse reference;
- ``magnitude-voting-T``: the same, with voting removals to ``T`` during
  that training (the paper's "already sparse models pruned further").

Each run's test accuracy is measured on the shrunk network
(``jaxprune.shrink``, rebuilt with the new widths).  Writes ``table.md``,
``results.json`` and ``params_vs_accuracy.png`` into
``experiments/results/voting/``; each run's record lives in
``runs/voting/RUN/record.json`` and finished runs are not run again.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxprune
from experiments import batching
from experiments import config as config_lib
from experiments import data
from experiments import files
from experiments import models
from experiments import networks
from experiments import sweep
from experiments.config import Config

_EPOCH = 60000 // 128

TARGETS = (0.5, 0.7, 0.8, 0.9)
EVENTS = 5

BASE = Config(model="lenet300100", dataset="mnist", steps=3 * _EPOCH,
              optimizer="adam", learning_rate=1e-3, batch_size=128,
              method="dense", sparsity=0.0)


def _kernels(path, leaf) -> bool:
  del leaf
  return path[-1] == "kernel"


def _accuracy(model, params, images, labels, batch=2000) -> float:
  apply = jax.jit(lambda p, x: jnp.argmax(model.apply({"params": p}, x), -1))
  correct = sum(int(jnp.sum(apply(params, images[i:i + batch])
                            == labels[i:i + batch]))
                for i in range(0, len(images), batch))
  return correct / len(images)


def voting_schedule(steps: int, target: float) -> jaxprune.VoteSchedule:
  """``EVENTS`` events every ``steps // 8`` steps, the first after one
  voting period: the last at 5/8 of the run."""
  frequency = max(1, steps // 8)
  return jaxprune.vote_schedule(target, begin_step=frequency - 1,
                                frequency=frequency, events=EVENTS)


def train(config: Config, train_split: data.Split, params, masks,
          target: float | None, layers: Sequence[str]):
  """``config.steps`` Adam steps under ``masks``, with voting removals to
  ``target`` (None: none).  Returns the params, the node masks and the
  per-event reports."""
  model = networks.get(config)

  def loss_fn(p, batch):
    logits = model.apply({"params": p}, batch["image"])
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, batch["label"]).mean()

  tx = jaxprune.prune(optax.adam(config.learning_rate), masks=masks)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, batch):
    updates, opt_state = tx.update(jax.grad(loss_fn)(params, batch), opt_state,
                                   params)
    return optax.apply_updates(params, updates), opt_state

  votes_of = jax.jit(lambda acts, node_masks: jaxprune.neuron_votes(
      acts, node_masks=node_masks))
  schedule = voting_schedule(config.steps, target) if target else None
  node_masks = {name: jnp.ones(params[name]["kernel"].shape[-1], bool)
                for name in layers[:-1]}
  votes, events = None, []
  for i in range(config.steps):
    batch = batching.train_batch(train_split, config.batch_size, config.seed, i)
    if schedule is not None and i <= schedule.steps[-1]:
      acts = jaxprune.unit_activations(model, batch["image"], layers=layers,
                                       variables={"params": params})
      votes = jaxprune.add_votes(votes, votes_of(acts, node_masks))
      if i in schedule.steps:
        found = jaxprune.prune_by_votes(
            votes, node_masks, target=schedule.targets[schedule.steps.index(i)])
        node_masks, votes = found.node_masks, None
        events.append({"step": i, **{n: str(r) for n, r in found.report.items()}})
        opt_state = jaxprune.replace_masks(opt_state, jaxprune.node_weight_masks(
            jaxprune.masks_of(opt_state), node_masks, layers=layers))
    params, opt_state = step(params, opt_state, batch)
  return params, node_masks, events


def _nonzero(tree) -> int:
  return sum(int(np.count_nonzero(np.asarray(leaf))) for leaf in jax.tree.leaves(tree))


def run(config: Config, name: str, train_split, test, dense_params=None,
        magnitude: float | None = None, target: float | None = None
        ) -> tuple[dict, dict]:
  """One run's record and its trained params (full shapes)."""
  model = networks.get(config)
  params = model.init(jax.random.key(config.seed),
                      jnp.zeros((1, *train_split.images.shape[1:])))["params"]
  layers = sorted(params)  # Dense_0, Dense_1, Dense_2: the call order
  masks = jax.tree.map(lambda p: jnp.ones(p.shape, bool) if p.ndim == 2 else None,
                       params)
  if magnitude is not None:
    params = dense_params
    masks = jaxprune.prune_once(params, sparsity=magnitude, prunable=_kernels)
    params = jaxprune.apply_masks(params, masks)
  start = time.perf_counter()
  params, node_masks, events = train(config, train_split, params, masks, target,
                                     layers)
  seconds = time.perf_counter() - start
  small = jaxprune.shrink(params, node_masks, layers=layers)
  widths = tuple(small.widths[n] for n in layers[:-1])
  dense_count = models.count_params(params)
  record = {
      "run": name, "dataset": config.dataset, "model": config.model,
      "seed": config.seed, "steps": config.steps,
      "magnitude": magnitude, "target": target, "widths": list(widths),
      "params_dense": dense_count,
      "params_after": models.count_params(small.params),
      "nonzero_after": _nonzero(small.params),
      "shrunk_accuracy": _accuracy(networks.get(config, widths=widths),
                                   small.params, *test),
      "masked_accuracy": _accuracy(model, params, *test),
      "events": events, "train_s": seconds,
  }
  record["params_removed"] = 1 - record["nonzero_after"] / dense_count
  return record, params


def with_further_removed(records: list[dict]) -> list[dict]:
  """Each magnitude-started run with ``further_removed``: the fraction of the
  magnitude-pruned network's nonzero params (same seed) that voting removed."""
  start = {r["seed"]: r["nonzero_after"] for r in records if r["run"] == "magnitude"}
  return [{**r, "further_removed": 1 - r["nonzero_after"] / start[r["seed"]]}
          if r["magnitude"] is not None and r["seed"] in start else r
          for r in records]


def table(records: list[dict]) -> str:
  lines = ["| seed | run | widths | nonzero params | removed | further removed | "
           "test accuracy % (shrunk) |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
  for r in records:
    further = r.get("further_removed")
    lines.append(
        f"| {r['seed']} | {r['run']} | {'-'.join(str(w) for w in r['widths'])} | "
        f"{r['nonzero_after']:,} | {100 * r['params_removed']:.1f}% | "
        f"{'' if further is None else f'{100 * further:.1f}%'} | "
        f"{100 * r['shrunk_accuracy']:.2f} |")
  return "\n".join(lines) + "\n"


def plot(records: list[dict], path: pathlib.Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 4.5))
  for label, start in (("voting from dense", None), ("voting after magnitude", 1)):
    sub = sorted((r for r in records if (r["magnitude"] is None) == (start is None)),
                 key=lambda r: r["params_removed"])
    ax.plot([100 * r["params_removed"] for r in sub],
            [100 * r["shrunk_accuracy"] for r in sub], "o-", label=label)
    for r in sub:
      ax.annotate(r["run"], (100 * r["params_removed"], 100 * r["shrunk_accuracy"]),
                  fontsize=6)
  ax.set_xlabel("parameters removed % (nonzero, of the dense network's)")
  ax.set_ylabel("test accuracy of the shrunk network %")
  ax.set_title("LeNet-300-100 on MNIST: majority-voting removal")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write_results(records: list[dict], out: pathlib.Path, command: str) -> str:
  """``results.json``, ``table.md`` and ``params_vs_accuracy.png``; returns
  the table."""
  if not records:
    raise SystemExit("no finished runs to collect for 'voting': nothing written")
  sweep.write_results_json(out, command, records)
  text = table(records)
  files.write_text_atomically(
      out / "table.md",
      "# Majority-voting neuron removal on LeNet-300-100 (MNIST)\n\nProduced by "
      f"{sweep.produced_by(command)} on {jax.devices()[0].platform}.\n\n" + text)
  plot(records, out / "params_vs_accuracy.png")
  return text


def _cached(root: pathlib.Path, name: str, make) -> dict:
  path = root / name / "record.json"
  if path.exists():
    return json.loads(path.read_text())
  record = make()
  path.parent.mkdir(parents=True, exist_ok=True)
  files.write_text_atomically(path, json.dumps(record, indent=2) + "\n")
  return record


def _save(params, path: pathlib.Path) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  np.savez(path, **{f"{layer}/{k}": np.asarray(v)
                    for layer, leaves in params.items() for k, v in leaves.items()})


def _load(path: pathlib.Path) -> dict:
  params = {}
  with np.load(path) as stored:
    for key in stored.files:
      layer, leaf = key.split("/")
      params.setdefault(layer, {})[leaf] = jnp.asarray(stored[key])
  return params


def seed_runs(config: Config, root: pathlib.Path, targets: Sequence[float],
              magnitude: float) -> list[dict]:
  """The runs of one seed, those finished before read back."""
  prefix = f"lenet300100-{config.dataset}-seed{config.seed}"
  train_split = data.load(config.dataset, "train", source_dir=config.source_dir,
                          tfds_dir=config.tfds_dir)
  test_split = data.load(config.dataset, "test", source_dir=config.source_dir,
                         tfds_dir=config.tfds_dir)
  test = (data.normalise(test_split.images, test_split.name), test_split.labels)
  dense_file = root / f"{prefix}-dense" / "params.npz"

  def dense():
    record, params = run(config, "dense", train_split, test)
    _save(params, dense_file)
    return record

  def voting(target):
    return run(config, f"voting-{target:g}", train_split, test, target=target)[0]

  def sparse(target):
    name = "magnitude" if target is None else f"magnitude-voting-{target:g}"
    return run(config, name, train_split, test, _load(dense_file),
               magnitude=magnitude, target=target)[0]

  records = [_cached(root, f"{prefix}-dense", dense)]
  records += [_cached(root, f"{prefix}-voting-{t:g}", lambda t=t: voting(t))
              for t in targets]
  records.append(_cached(root, f"{prefix}-magnitude", lambda: sparse(None)))
  records += [_cached(root, f"{prefix}-magnitude-voting-{t:g}", lambda t=t: sparse(t))
              for t in targets]
  return records


def main(argv=None) -> int:
  parser = sweep.script_parser("voting", jobs=1, seeds="0")
  parser.add_argument("--targets", default=",".join(f"{t:g}" for t in TARGETS),
                      help="fractions of each hidden layer's units removed")
  parser.add_argument("--magnitude", type=float, default=0.9,
                      help="the sparsity of the magnitude-pruned start")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  targets = [float(t) for t in args.targets.split(",")]
  try:
    sweep.cell_overrides(args.set)
  except ValueError as error:
    parser.error(str(error))
  base = config_lib.apply_overrides(BASE, args.set)
  if base.model != "lenet300100" or base.flax_api != "linen":
    raise SystemExit("experiments.voting runs the Linen LeNet-300-100")
  root = pathlib.Path(args.root)
  records = []
  for seed in (int(s) for s in args.seeds.split(",")):
    config = dataclasses.replace(base, seed=seed)
    if args.only_collect:
      prefix = f"lenet300100-{config.dataset}-seed{seed}"
      records += [json.loads(p.read_text())
                  for p in sorted(root.glob(f"{prefix}-*/record.json"))]
    else:
      records += seed_runs(config, root, targets, args.magnitude)
  records = with_further_removed(records)
  command = "python -m experiments.voting " + " ".join(
      sys.argv[1:] if argv is None else argv)
  print(write_results(records, pathlib.Path(args.out), command))
  return 0


if __name__ == "__main__":
  sys.exit(main())
