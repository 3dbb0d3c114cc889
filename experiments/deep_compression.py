"""Deep Compression's LeNet rows: pruning, weight sharing with centroid
fine-tuning, and Huffman coding, stage by stage.

    python -m experiments.deep_compression [--jobs 2] [--seeds 0] \\
        [--models lenet300100,lenet5] [--steps N] [--fine-tune-steps N] \\
        [--method magnitude] [--sparsity 0.92]

For each model on MNIST: the dense network, and global gradual magnitude
pruning to 92% sparsity (Deep Compression keeps 8% of the weights of both
LeNets; Zhu & Gupta's schedule from half an epoch to 60% of the run, a
level every quarter epoch), each a cell run by ``experiments.run``;
``--method`` prunes with any other method of the runner (``snip``,
``flipout``, ...) and ``--sparsity`` to another sparsity, for the same
stages after it.  From
the pruned run's final checkpoint, in this process:

- **sharing**: ``jaxprune.sharing.codebooks`` by linear initialisation, with
  the bits of Han et al.'s tables 2 and 3: 6 bits for every layer of
  LeNet-300-100; 8 bits for LeNet-5's convolutions and 5 for its dense
  layers;
- **fine-tuning** the centroids for ``--fine-tune-steps`` steps (default one
  epoch) of Adam at 1e-4, batch 128, with
  ``jaxprune.sharing.fine_tune_centroids``;
- **Huffman coding** of the indices and the relative positions (8 bits for
  conv layers, 5 for dense ones, as Han et al.).

The table gives, per stage, the test error and the bytes and compression
rate against dense float32, beside Deep Compression's published rows
(LeNet-300-100: 40x, error 1.64% -> 1.58%; LeNet-5: 39x, 0.80% -> 0.74%).
Writes ``table.md``, ``results.json`` and ``error_vs_bytes.png`` into
``experiments/results/deep_compression/``; runs live in ``runs/deep_compression/CELL``
and finished cells are not run again.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys

import jax
import numpy as np
import optax

from experiments import checkpoints
from experiments import data
from experiments import files
from experiments import loops
from experiments import networks
from experiments import reports
from experiments import sweep
from experiments.config import Config
from jaxprune import sharing

_EPOCH = 60000 // 128

EPOCHS = {"lenet300100": 20, "lenet5": 20}
SPARSITY = 0.92
BATCH = 128

# Han et al.'s weight bits (tables 2 and 3) and their published rows.
BITS = {"lenet300100": lambda path, leaf: 6,
        "lenet5": lambda path, leaf: 8 if leaf.ndim == 4 else 5}
BITS_TEXT = {"lenet300100": "6 bits", "lenet5": "conv 8 bits, fc 5 bits"}
PAPER = {"lenet300100": {"dense_error": 1.64, "compressed_error": 1.58, "rate": 40},
         "lenet5": {"dense_error": 0.80, "compressed_error": 0.74, "rate": 39}}


def base(model: str, steps: int | None = None) -> Config:
  steps = EPOCHS[model] * _EPOCH if steps is None else steps
  return Config(
      dataset="mnist", model=model, steps=steps, optimizer="adam",
      learning_rate=1e-3, schedule="polynomial",
      begin_step=min(_EPOCH // 2, steps // 10), end_step=(6 * steps) // 10,
      frequency=max(1, min(_EPOCH // 4, steps // 20)), log_every=100,
      eval_every=0, checkpoint_every=0)


def cells(model_names, seeds, steps: int | None = None, method: str = "magnitude",
          sparsity: float = SPARSITY) -> list[Config]:
  """The dense run and the pruned run (by ``method``, any of the runner's)
  of each model and seed."""
  configs = []
  for model in model_names:
    for seed in seeds:
      for cell_method in ("dense", method):
        tag = (cell_method if cell_method == "dense" or sparsity == SPARSITY
               else f"{cell_method}{sparsity:g}")
        configs.append(dataclasses.replace(
            base(model, steps), name=f"{model}-{tag}-seed{seed}",
            method=cell_method, sparsity=0.0 if cell_method == "dense" else sparsity,
            allocation="global", seed=seed))
  return configs


def error(model, params, split) -> float:
  """The test error, in percent."""
  return loops.error_percent(lambda p, x: model.apply({"params": p}, x),
                             params, split)


def fine_tune(model, shared, train, steps: int, seed: int):
  """``steps`` of Adam on the centroids; the fine-tuned SharedWeights."""
  tx = sharing.fine_tune_centroids(optax.adam(1e-4), shared)
  params, state = loops.train_steps(
      lambda p, x: model.apply({"params": p}, x), tx,
      sharing.shared_params(shared), train, steps=steps, seed=seed, batch=BATCH)
  return sharing.fine_tuned(shared, state, params)


def run_record(config: Config, dense: Config, root: pathlib.Path, train, test,
               fine_tune_steps: int) -> dict:
  """The stages of one pruned run: errors, bytes and rates."""
  model = networks.get(config)
  dense_summary = json.loads((root / dense.name / "summary.json").read_text())
  summary = json.loads((root / config.name / "summary.json").read_text())
  state = checkpoints.load_checkpoint(config, root / config.name)
  params = jax.tree.map(np.asarray, state.params)
  masks = reports.final_masks(state)
  shared = sharing.codebooks(params, masks, bits=BITS[config.model], init="linear")
  shared_error = error(model, sharing.shared_params(shared), test)
  tuned = fine_tune(model, shared, train, fine_tune_steps, config.seed)
  tuned_error = error(model, sharing.shared_params(tuned), test)
  report = sharing.size_report(tuned)
  stages = {s.name: {"bytes": s.nbytes, "rate": s.rate} for s in report.stages}
  kept = sum(int(np.asarray(m).sum()) for m in jax.tree.leaves(masks))
  total = sum(int(np.asarray(m).size) for m in jax.tree.leaves(masks))
  return {
      "model": config.model, "seed": config.seed, "method": config.method,
      "bits": BITS_TEXT[config.model],
      "kernel_density": kept / total,
      "dense_error": 100.0 * (1 - dense_summary["final_test_accuracy"]),
      "pruned_error": 100.0 * (1 - summary["final_test_accuracy"]),
      "shared_error": shared_error, "fine_tuned_error": tuned_error,
      "fine_tune_steps": fine_tune_steps, "stages": stages,
      "leaves": str(report),
  }


def table(records: list[dict]) -> str:
  lines = ["| model | seed | stage | test error % | bytes | compression rate |",
           "| --- | --- | --- | ---: | ---: | ---: |"]
  for r in records:
    s = r["stages"]
    rows = [
        ("dense float32", r["dense_error"], s["dense float32"]),
        (f"pruned by {r.get('method', 'magnitude')} to "
         f"{r['kernel_density']:.1%} of the kernels (CSR)",
         r["pruned_error"], s["pruned"]),
        (f"+ shared, {r['bits']}", r["shared_error"], s["shared"]),
        (f"+ centroids fine-tuned ({r['fine_tune_steps']} steps)",
         r["fine_tuned_error"], s["shared"]),
        ("+ Huffman coded", r["fine_tuned_error"], s["huffman"]),
    ]
    for stage, err, size in rows:
      lines.append(f"| {r['model']} | {r['seed']} | {stage} | {err:.2f} | "
                   f"{size['bytes']:,} | {size['rate']:.1f}x |")
    paper = PAPER[r["model"]]
    lines.append(f"| {r['model']} | Han et al. | dense -> P+Q+H | "
                 f"{paper['dense_error']:.2f} -> {paper['compressed_error']:.2f} | | "
                 f"{paper['rate']}x |")
  return "\n".join(lines) + "\n"


def plot(records: list[dict], path: pathlib.Path) -> None:
  """Test error against bytes, stage by stage, with Han et al.'s rows."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  for r in records:
    s = r["stages"]
    points = [(s["dense float32"]["bytes"], r["dense_error"]),
              (s["pruned"]["bytes"], r["pruned_error"]),
              (s["shared"]["bytes"], r["fine_tuned_error"]),
              (s["huffman"]["bytes"], r["fine_tuned_error"])]
    ax.plot(*zip(*points), marker="o", label=f"{r['model']} seed {r['seed']}")
    paper = PAPER[r["model"]]
    dense = s["dense float32"]["bytes"]
    ax.plot([dense, dense / paper["rate"]],
            [paper["dense_error"], paper["compressed_error"]], ls=":", marker="x",
            label=f"{r['model']}, Han et al.")
  ax.set_xscale("log")
  ax.invert_xaxis()
  ax.set_xlabel("bytes (dense, pruned, shared, Huffman)")
  ax.set_ylabel("test error %")
  ax.set_title("Deep Compression's stages on MNIST")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def add_pruning_arguments(parser, steps_help: str, sparsity: float) -> None:
  """The arguments of the compression scripts' pruned cells: ``--models``,
  ``--steps``, ``--method`` and ``--sparsity``."""
  parser.add_argument("--models", default="lenet300100,lenet5")
  parser.add_argument("--steps", type=int, default=None, help=steps_help)
  parser.add_argument("--method", default="magnitude",
                      help="the pruning method, any of experiments.run's "
                      "(default: gradual magnitude)")
  parser.add_argument("--sparsity", type=float, default=sparsity)


def main(argv=None) -> int:
  parser = sweep.script_parser("deep_compression", jobs=2, seeds="0")
  add_pruning_arguments(parser, "training steps per cell (default: 20 epochs)",
                        SPARSITY)
  parser.add_argument("--fine-tune-steps", type=int, default=_EPOCH)
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  seeds = [int(s) for s in args.seeds.split(",")]
  configs = sweep.run_script_cells(parser, args, cells(
      args.models.split(","), seeds, args.steps, args.method, args.sparsity))
  root = pathlib.Path(args.root)
  records, splits = [], {}
  for dense, pruned in zip(configs[::2], configs[1::2]):
    if not all((root / c.name / "summary.json").exists() for c in (dense, pruned)):
      continue
    if not splits:
      splits = {split: data.load("mnist", split, source_dir=pruned.source_dir,
                                 tfds_dir=pruned.tfds_dir)
                for split in ("train", "test")}
    records.append(run_record(pruned, dense, root, splits["train"], splits["test"],
                              args.fine_tune_steps))
  if not records:
    raise SystemExit("no finished runs to collect for 'compression': nothing written")
  out = pathlib.Path(args.out)
  command = "python -m experiments.deep_compression " + " ".join(
      sys.argv[1:] if argv is None else argv)
  sweep.write_results_json(out, command, records)
  text = table(records)
  files.write_text_atomically(
      out / "table.md",
      "# Deep Compression's LeNet rows: pruning, sharing, Huffman coding\n\n"
      f"Produced by {sweep.produced_by(command)} on "
      f"{jax.devices()[0].platform}.\n\n" + text + "\n## Per leaf\n\n"
      + "\n\n".join(f"{r['model']} seed {r['seed']}:\n\n{r['leaves']}" for r in records)
      + "\n")
  plot(records, out / "error_vs_bytes.png")
  print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
