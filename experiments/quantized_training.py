"""Quantization-aware training of a 90%-pruned LeNet: int8 and int4 weights
against the unquantized network.

    python -m experiments.quantized_training [--jobs 2] [--seeds 0] \\
        [--models lenet300100,lenet5] [--steps N] [--qat-steps N] \\
        [--method magnitude] [--sparsity 0.9]

For each model on MNIST, one cell run by ``experiments.run``: global
gradual magnitude pruning to 90% sparsity (Zhu & Gupta's schedule, as in
``experiments.deep_compression``; 20 epochs of LeNet-300-100, 10 of
LeNet-5-Caffe); ``--method`` and ``--sparsity`` prune otherwise.  From
its final checkpoint, in this process:

- **post-training quantization**: the pruned weights quantized to int8 and
  int4, symmetric per output channel, by qwix (``qwix.QtProvider`` rules
  ``weight_qtype="int8"`` / ``"int4"`` on every layer, weights only): the
  test error of the quantized forward pass, no training;
- **quantization-aware training**: ``--qat-steps`` more steps (default one
  epoch) of Adam at 1e-4 with the masks held by
  ``jaxprune.prune(masks=...)``, through the fake-quantized int8 and int4
  model, and, as the unquantized reference, through the float32 model for
  the same steps.

Every row checks that the pruned weights are exactly zero in the params,
and therefore in the symmetric quantization, which maps 0 to 0.  For
LeNet-300-100 the int8 network is also served by qwix's post-training
quantization (``qwix.PtqProvider`` and ``qwix.quantize_params``: int8
kernels) and its error and zeros are checked against the fake-quantized
one; qwix quantizes convolutions only with their activations, so LeNet-5's
int rows are the fake-quantized forward pass, which computes with the
dequantized integer weights.

Bytes: the kernels in ``jaxprune.export``'s CSR form (values, and relative
positions of 8 bits with fillers), with ``b``-bit values packed, plus one
float32 scale per output channel for the quantized rows; biases stay
float32.  Writes ``table.md``, ``results.json`` and ``error_vs_bytes.png``
into ``experiments/results/quantized_training/``; runs live in
``runs/quantized_training/CELL`` and finished cells are not run again.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import sys

import jax
import numpy as np
import optax

import jaxprune
from experiments import checkpoints
from experiments import data
from experiments import deep_compression
from experiments import files
from experiments import loops
from experiments import networks
from experiments import reports
from experiments import sweep
from experiments.config import Config
from jaxprune import export

_EPOCH = 60000 // 128

EPOCHS = {"lenet300100": 20, "lenet5": 10}
SPARSITY = 0.9
BATCH = 128
LEARNING_RATE = 1e-4
VARIANTS = ("float32", "int8", "int4")
BITS = {"float32": 32, "int8": 8, "int4": 4}


def cells(model_names, seeds, steps: int | None = None, method: str = "magnitude",
          sparsity: float = SPARSITY) -> list[Config]:
  """One pruned run per model and seed, by ``method`` (any of the runner's)."""
  configs = []
  for model in model_names:
    model_steps = EPOCHS[model] * _EPOCH if steps is None else steps
    for seed in seeds:
      configs.append(dataclasses.replace(
          deep_compression.base(model, model_steps),
          name=f"{model}-{method}{sparsity:g}-seed{seed}", method=method,
          sparsity=sparsity, allocation="global", seed=seed))
  return configs


def quantized_model(model, variant: str):
  """``model`` with its weights fake-quantized to ``variant`` by qwix (the
  float32 variant is the model itself)."""
  if variant == "float32":
    return model
  import qwix  # an optional extra: only this script needs it
  rules = [qwix.QuantizationRule(module_path=".*", weight_qtype=variant)]
  return qwix.quantize_model(model, qwix.QtProvider(rules))


def kernel_bytes(params, masks, bits: int) -> int:
  """The bytes of the pruned params with ``bits``-bit kernel values: the
  CSR form's positions, the packed values and, below 32 bits, one float32
  scale per output channel; every other leaf stays float32."""
  report = export.size_report(export.compress(params, masks, "csr"))
  total = 0
  for leaf in report.leaves:
    if leaf.encoding != "csr":
      total += leaf.nbytes
      continue
    positions = leaf.nbytes - 4 * leaf.kept
    scales = 0 if bits == 32 else 4 * leaf.shape[-1]
    total += positions + math.ceil(leaf.kept * bits / 8) + scales
  return total


def pruned_weights_zero(params, masks) -> bool:
  masks = jax.tree.leaves(masks, is_leaf=lambda m: m is None)
  return all(bool(np.all(np.asarray(p)[~np.asarray(m)] == 0))
             for p, m in zip(jax.tree.leaves(params), masks, strict=True)
             if m is not None)


def served_int8(model, params, masks, split) -> dict:
  """LeNet-300-100's int8 network served by qwix's post-training
  quantization: its test error, and whether the int8 kernels are 0 where
  the masks prune."""
  import qwix
  rules = [qwix.QuantizationRule(module_path=".*", weight_qtype="int8")]
  ptq = qwix.quantize_model(model, qwix.PtqProvider(rules))
  abstract = jax.eval_shape(ptq.init, jax.random.key(0),
                            np.zeros((1, 28, 28, 1), np.float32))
  quantized = qwix.quantize_params(params, abstract["params"])
  zeros = all(
      bool(np.all(np.asarray(quantized[layer]["kernel"].array.qvalue)[
          ~np.asarray(masks[layer]["kernel"])] == 0))
      for layer in params)
  error = loops.error_percent(
      lambda p, x: ptq.apply({"params": p}, x), quantized, split)
  return {"error": error, "int8_zeros": zeros}


def run_record(config: Config, root: pathlib.Path, train, test,
               qat_steps: int) -> dict:
  """The rows of one pruned run: post-training quantization and
  quantization-aware training of each variant."""
  model = networks.get(config)
  summary = json.loads((root / config.name / "summary.json").read_text())
  state = checkpoints.load_checkpoint(config, root / config.name)
  params = jax.tree.map(np.asarray, state.params)
  masks = reports.final_masks(state)
  kept = sum(int(np.asarray(m).sum()) for m in jax.tree.leaves(masks))
  total = sum(int(np.asarray(m).size) for m in jax.tree.leaves(masks))
  rows = []
  for variant in VARIANTS:
    quantized = quantized_model(model, variant)
    apply = lambda p, x, q=quantized: q.apply({"params": p}, x)  # noqa: E731
    nbytes = kernel_bytes(params, masks, BITS[variant])
    if variant != "float32":
      rows.append({"variant": variant, "training": "post-training",
                   "error": loops.error_percent(apply, params, test),
                   "bytes": nbytes, "pruned_zero": pruned_weights_zero(params, masks)})
    tx = jaxprune.prune(optax.adam(LEARNING_RATE), masks=masks)
    tuned, _ = loops.train_steps(apply, tx, params, train, steps=qat_steps,
                                 seed=config.seed, batch=BATCH)
    row = {"variant": variant,
           "training": "fine-tuned" if variant == "float32" else "quantization-aware",
           "error": loops.error_percent(apply, tuned, test),
           "bytes": kernel_bytes(tuned, masks, BITS[variant]),
           "pruned_zero": pruned_weights_zero(tuned, masks)}
    if variant == "int8" and config.model == "lenet300100":
      row["served"] = served_int8(model, tuned, masks, test)
    rows.append(row)
  dense_bytes = 4 * sum(int(np.asarray(p).size) for p in jax.tree.leaves(params))
  return {
      "model": config.model, "seed": config.seed, "method": config.method,
      "kernel_density": kept / total,
      "steps": config.steps, "qat_steps": qat_steps, "dense_float32_bytes": dense_bytes,
      "pruned_error": 100.0 * (1 - summary["final_test_accuracy"]),
      "pruned_bytes": kernel_bytes(params, masks, 32), "rows": rows,
  }


def table(records: list[dict]) -> str:
  lines = ["| model | seed | weights | training | test error % | bytes | "
           "compression rate | pruned weights zero |",
           "| --- | --- | --- | --- | ---: | ---: | ---: | --- |"]
  for r in records:
    dense = r["dense_float32_bytes"]
    first = [{"variant": "float32",
              "training": f"pruned by {r.get('method', 'magnitude')} ({r['steps']} steps)",
              "error": r["pruned_error"], "bytes": r["pruned_bytes"],
              "pruned_zero": True}]
    for row in first + r["rows"]:
      lines.append(
          f"| {r['model']} | {r['seed']} | {row['variant']} | {row['training']} | "
          f"{row['error']:.2f} | {row['bytes']:,} | {dense / row['bytes']:.1f}x | "
          f"{'yes' if row['pruned_zero'] else 'NO'} |")
      if "served" in row:
        served = row["served"]
        lines.append(
            f"| {r['model']} | {r['seed']} | int8 (qwix PTQ int8 kernels) | served | "
            f"{served['error']:.2f} | {row['bytes']:,} | {dense / row['bytes']:.1f}x | "
            f"{'yes' if served['int8_zeros'] else 'NO'} |")
  return "\n".join(lines) + "\n"


def plot(records: list[dict], path: pathlib.Path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  markers = {"post-training": "x", "quantization-aware": "o", "fine-tuned": "s"}
  for r in records:
    for row in r["rows"]:
      ax.scatter(row["bytes"], row["error"], marker=markers[row["training"]],
                 label=f"{r['model']} {row['variant']} {row['training']}")
  ax.set_xscale("log")
  ax.set_xlabel("bytes")
  ax.set_ylabel("test error %")
  ax.set_title("90%-pruned LeNets on MNIST, quantized")
  ax.legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv=None) -> int:
  parser = sweep.script_parser("quantized_training", jobs=2, seeds="0")
  deep_compression.add_pruning_arguments(
      parser, "training steps per cell (default: 20 epochs of LeNet-300-100, "
      "10 of LeNet-5)", SPARSITY)
  parser.add_argument("--qat-steps", type=int, default=_EPOCH)
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  seeds = [int(s) for s in args.seeds.split(",")]
  configs = sweep.run_script_cells(parser, args, cells(
      args.models.split(","), seeds, args.steps, args.method, args.sparsity))
  root = pathlib.Path(args.root)
  done = [c for c in configs if (root / c.name / "summary.json").exists()]
  if not done:
    raise SystemExit("no finished runs to collect for 'quantized_training': "
                     "nothing written")
  splits = {split: data.load("mnist", split, source_dir=done[0].source_dir,
                             tfds_dir=done[0].tfds_dir)
            for split in ("train", "test")}
  records = [run_record(c, root, splits["train"], splits["test"], args.qat_steps)
             for c in done]
  out = pathlib.Path(args.out)
  command = "python -m experiments.quantized_training " + " ".join(
      sys.argv[1:] if argv is None else argv)
  sweep.write_results_json(out, command, records)
  text = table(records)
  files.write_text_atomically(
      out / "table.md",
      "# Quantization-aware training of 90%-pruned LeNets (MNIST)\n\n"
      f"Produced by {sweep.produced_by(command)} on "
      f"{jax.devices()[0].platform}.\n\n" + text)
  plot(records, out / "error_vs_bytes.png")
  print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
