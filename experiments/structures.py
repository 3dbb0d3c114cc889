"""N:M, blocks and channels against unstructured pruning: accuracy, exported
size and inference latency.

    python -m experiments.structures [--jobs 2] [--seeds 0] \\
        [--models lenet300100,lenet5] [--datasets mnist,fashion_mnist]

For each model and data set: the dense network, unstructured global
magnitude pruning at 50% and 75%, 2:4 and 1:4 N:M, 4x4 blocks at 50% and
75%, and whole channels at 50% and 75% (layerwise, so that every hidden
layer loses that fraction of its units), all by gradual magnitude pruning
(Zhu & Gupta's schedule from half an epoch to 60% of the run, a level every
quarter epoch; the N:M runs pass through the denser patterns on the way).
Kernels a structure cannot tile stay dense (LeNet-5's first convolution
under N:M and blocks, every kernel with 10 or 50 outputs under 4x4 blocks),
and so does the output layer under channels: the table's sparsity is over
all kernels.

For each finished run, from its final checkpoint:

- **exported bytes**: the whole model in ``jaxprune.export``'s N:M form
  for N:M, in the smaller of its bitmask and CSR forms otherwise; for channels, the
  float32 bytes of the network cut down by ``jaxprune.shrink``, whose test
  accuracy is measured too (the pruned units' biases go with them);
- **latency**: the jitted forward pass on 128 test images, the dense
  network against the pruned one in this process, median over alternating
  calls: BCOO kernels for the dense layers (``export.sparse_apply``; conv
  kernels stay dense) or the shrunk network for channels.

Writes ``table.md``, ``results.json`` and ``accuracy_vs_bytes.png`` into
``experiments/results/structures/``; runs live in ``runs/structures/CELL``
and finished cells are not run again.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

import jaxprune
from experiments import checkpoints
from experiments import config as config_lib
from experiments import data
from experiments import files
from experiments import methods
from experiments import models
from experiments import networks
from experiments import reports
from experiments import structured
from experiments import sweep
from experiments.config import Config
from jaxprune import export

_EPOCH = 60000 // 128

EPOCHS = {"lenet300100": 5, "lenet5": 3}

# (label, structure, sparsity, allocation); None: the dense network.
VARIANTS = (
    ("dense", None, 0.0, "global"),
    ("unstructured 50%", "", 0.5, "global"),
    ("unstructured 75%", "", 0.75, "global"),
    ("2:4", "n_of_m:2:4", 0.5, "global"),
    ("1:4", "n_of_m:1:4", 0.75, "global"),
    ("block 4x4 50%", "block:4x4", 0.5, "global"),
    ("block 4x4 75%", "block:4x4", 0.75, "global"),
    ("channels 50%", "channels", 0.5, "layerwise"),
    ("channels 75%", "channels", 0.75, "layerwise"),
)
_LATENCY_BATCH = 128


def base(model: str, dataset: str) -> Config:
  steps = EPOCHS[model] * _EPOCH
  return Config(
      dataset=dataset, model=model, steps=steps, optimizer="adam",
      learning_rate=1e-3, schedule="polynomial", begin_step=_EPOCH // 2,
      end_step=(6 * steps) // 10, frequency=_EPOCH // 4, log_every=100,
      eval_every=0, checkpoint_every=0)


def cells(model_names, dataset_names, seeds, variants=None) -> list[Config]:
  """The runs: every variant (or those labelled in ``variants``) of every
  model, data set and seed."""
  known = [label for label, *_ in VARIANTS]
  unknown = sorted(set(variants or ()) - set(known))
  if unknown:
    raise ValueError(f"unknown variants {unknown}; known: {known}")
  configs = []
  for model in model_names:
    for dataset in dataset_names:
      for seed in seeds:
        for label, structure, sparsity, allocation in VARIANTS:
          if variants and label not in variants:
            continue
          slug = label.replace(" ", "").replace(":", "of").replace("%", "")
          configs.append(dataclasses.replace(
              base(model, dataset),
              name=f"{model}-{dataset}-{slug}-seed{seed}",
              method="dense" if structure is None else "magnitude",
              structure=structure or "", sparsity=sparsity,
              allocation=allocation, seed=seed))
  return configs


def _label(config: Config) -> str:
  for label, structure, sparsity, _ in VARIANTS:
    if ((structure is None) == (config.method == "dense")
        and (structure or "") == config.structure
        and sparsity == config.sparsity):
      return label
  return f"{config.structure or 'unstructured'} {config.sparsity:.0%}"


def _layers(params) -> list[str]:
  """The layers of LeNet-300-100 and LeNet-5 in call order: the
  convolutions, then the dense layers."""
  def order(name):
    kind, index = name.rsplit("_", 1)
    return (kind != "Conv", int(index))
  return sorted(params, key=order)


def _kernel_sparsity(params) -> float:
  kernels = [np.asarray(layer["kernel"]) for layer in params.values()]
  return float(sum(int((k == 0).sum()) for k in kernels)
               / sum(k.size for k in kernels))


def _float32_bytes(params) -> int:
  return 4 * sum(int(np.size(x)) for x in jax.tree.leaves(params))


def _accuracy(model, params, split) -> float:
  apply = jax.jit(lambda p, x: jnp.argmax(model.apply({"params": p}, x), -1))
  images = data.normalise(np.asarray(split.images), split.name)
  correct = sum(int(jnp.sum(apply(params, images[i:i + 1000])
                            == jnp.asarray(split.labels[i:i + 1000])))
                for i in range(0, len(images), 1000))
  return correct / len(images)


def _smallest_export(config: Config, params, masks) -> tuple[str, int]:
  """The N:M form for N:M masks (the layout sparse tensor cores read);
  otherwise the smaller of the bitmask and CSR forms; and its bytes."""
  structure = methods.structure_of(config)
  formats = [("bitmask", {}), ("csr", {})]
  if isinstance(structure, jaxprune.structures.NOfM):
    formats = [("n_of_m", {"n": structure.n, "m": structure.m})]
  sizes = [(name, export.size_report(export.compress(params, masks, name, **kw)).nbytes)
           for name, kw in formats]
  return min(sizes, key=lambda pair: pair[1])


def _shrunk(params, masks):
  """The network without the pruned channels (their biases included)."""
  layers = _layers(params)
  nodes = {}
  for name in layers:
    mask = masks[name]["kernel"]
    if mask is not None:
      nodes[name] = np.asarray(mask).any(axis=tuple(range(mask.ndim - 1)))
  small = jaxprune.shrink(params, nodes, layers=layers)
  widths = tuple(small.widths[name] for name in layers[:-1])
  return small.params, widths


def run_record(config: Config, root: pathlib.Path, test, images) -> dict:
  """The record of the finished run ``config``: accuracy, sparsity, exported
  bytes and latency against its own network dense."""
  summary = json.loads((root / config.name / "summary.json").read_text())
  state = checkpoints.load_checkpoint(config, root / config.name)
  params = jax.tree.map(np.asarray, state.params)
  model = networks.get(config)
  record = {
      "model": config.model, "dataset": config.dataset, "seed": config.seed,
      "variant": _label(config), "structure": config.structure,
      "target_sparsity": config.sparsity,
      "accuracy": summary["final_test_accuracy"],
      "kernel_sparsity": _kernel_sparsity(params),
      "dense_bytes": _float32_bytes(params),
      "wall_time_s": summary["wall_time_s"],
  }
  dense_forward = jax.jit(lambda p, x: model.apply({"params": p}, x))
  if config.method == "dense":
    record.update(export_format="dense float32",
                  exported_bytes=record["dense_bytes"])
    return record
  masks = reports.final_masks(state)
  if config.structure == "channels":
    small_params, widths = _shrunk(params, masks)
    small_model = models.get_model(config.model, num_classes=networks.CLASSES,
                                   widths=widths)
    record.update(
        export_format="shrunk dense float32", widths=list(widths),
        exported_bytes=_float32_bytes(small_params),
        shrunk_accuracy=_accuracy(small_model, small_params, test))
    fast = (jax.jit(lambda p, x: small_model.apply({"params": p}, x)), small_params)
  else:
    name, size = _smallest_export(config, params, masks)
    record.update(export_format=name, exported_bytes=size)
    sparse_params = export.to_bcoo(params, masks,
                                   select=lambda path, leaf: leaf.ndim == 2)
    sparse_apply = export.sparse_apply(model.apply)
    fast = (jax.jit(lambda p, x: sparse_apply({"params": p}, x)), sparse_params)
  slow = (dense_forward, params)
  dense_s, pruned_s = structured.alternating_medians([slow, fast], images)
  record.update(dense_latency_s=dense_s, pruned_latency_s=pruned_s,
                latency_ratio=pruned_s / dense_s)
  return record


def table(records: list[dict]) -> str:
  lines = ["| model | data | variant | seed | kernel sparsity | test accuracy % "
           "| exported | bytes | vs dense float32 | latency, batch 128 (pruned / dense) |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  for r in records:
    accuracy = f"{100 * r['accuracy']:.2f}"
    if "shrunk_accuracy" in r:
      accuracy += f" (shrunk {100 * r['shrunk_accuracy']:.2f})"
    latency = (f"{r['latency_ratio']:.2f} ({1e3 * r['pruned_latency_s']:.2f} / "
               f"{1e3 * r['dense_latency_s']:.2f} ms)"
               if "latency_ratio" in r else "1")
    lines.append(
        f"| {r['model']} | {r['dataset']} | {r['variant']} | {r['seed']} | "
        f"{r['kernel_sparsity']:.1%} | {accuracy} | {r['export_format']} | "
        f"{r['exported_bytes']:,} | {r['exported_bytes'] / r['dense_bytes']:.3f} | "
        f"{latency} |")
  return "\n".join(lines) + "\n"


def plot(records: list[dict], path: pathlib.Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  panels = sorted({(r["model"], r["dataset"]) for r in records})
  fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4),
                           squeeze=False)
  kinds = {"dense": "k*", "unstructured": "o", "2:4": "s", "1:4": "s",
           "block": "^", "channels": "D"}
  for ax, (model, dataset) in zip(axes[0], panels):
    for r in records:
      if (r["model"], r["dataset"]) != (model, dataset):
        continue
      kind = r["variant"].split(" ")[0]
      accuracy = r.get("shrunk_accuracy", r["accuracy"])
      ax.plot(r["exported_bytes"] / 1e3, 100 * accuracy, kinds.get(kind, "x"),
              label=r["variant"])
      ax.annotate(r["variant"], (r["exported_bytes"] / 1e3, 100 * accuracy),
                  fontsize=6)
    ax.set_xscale("log")
    ax.set_xlabel("exported kB")
    ax.set_ylabel("test accuracy %")
    ax.set_title(f"{model} / {dataset}")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv=None) -> int:
  parser = sweep.script_parser("structures", jobs=2, seeds="0")
  parser.add_argument("--models", default="lenet300100,lenet5")
  parser.add_argument("--datasets", default="mnist,fashion_mnist")
  parser.add_argument("--variants", default="",
                      help="comma-separated labels of VARIANTS; default all")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  seeds = [int(s) for s in args.seeds.split(",")]
  try:
    sweep.cell_overrides(args.set)
    configs = [config_lib.apply_overrides(c, args.set) for c in cells(
        args.models.split(","), args.datasets.split(","), seeds,
        [v for v in args.variants.split(",") if v])]
  except ValueError as error:
    parser.error(str(error))
  root = pathlib.Path(args.root)
  if not args.only_collect:
    sweep.run_cells(configs, root, args.jobs)
  records, tests = [], {}
  for c in configs:
    if not (root / c.name / "summary.json").exists():
      continue
    if c.dataset not in tests:
      test = data.load(c.dataset, "test", source_dir=c.source_dir,
                       tfds_dir=c.tfds_dir)
      tests[c.dataset] = (test, data.normalise(
          np.asarray(test.images[:_LATENCY_BATCH]), test.name))
    records.append(run_record(c, root, *tests[c.dataset]))
  if not records:
    raise SystemExit("no finished runs to collect for 'structures': nothing written")
  out = pathlib.Path(args.out)
  command = "python -m experiments.structures " + " ".join(
      sys.argv[1:] if argv is None else argv)
  sweep.write_results_json(out, command, records)
  text = table(records)
  files.write_text_atomically(
      out / "table.md",
      "# N:M, blocks and channels: accuracy, exported size, latency\n\n"
      f"Produced by {sweep.produced_by(command)} on "
      f"{jax.devices()[0].platform}.\n\n" + text)
  plot(records, out / "accuracy_vs_bytes.png")
  print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
