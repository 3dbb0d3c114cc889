"""PNG plots of a run: accuracy and sparsity over training, per-layer sparsity.

Example:
  >>> import tempfile, pathlib
  >>> from experiments import plots
  >>> records = [
  ...     {"kind": "train", "step": 10, "loss": 1.0, "accuracy": 0.5, "sparsity": 0.1},
  ...     {"kind": "eval", "step": 10, "test_loss": 1.0, "test_accuracy": 0.6, "sparsity": 0.1},
  ... ]
  >>> summary = {"per_layer_sparsity": {"Dense_0/kernel": 0.1}, "config": {"name": "demo"}}
  >>> sorted(p.name for p in plots.write_plots(records, summary, pathlib.Path(tempfile.mkdtemp())))
  ['layer_sparsity.png', 'training.png']
"""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)


def _training_plot(records, title, path):
  train = [r for r in records if r["kind"] == "train"]
  evals = [r for r in records if r["kind"] == "eval"]
  fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
  top.plot([r["step"] for r in train], [r["accuracy"] for r in train],
           label="train (batch)", alpha=0.5)
  top.plot([r["step"] for r in evals], [r["test_accuracy"] for r in evals],
           "o-", label="test")
  top.set_ylabel("accuracy")
  top.legend(loc="lower right")
  top.grid(alpha=0.3)
  top.set_title(title)
  bottom.plot([r["step"] for r in train], [r["sparsity"] for r in train],
              color="tab:red")
  bottom.set_ylabel("global sparsity")
  bottom.set_xlabel("step")
  bottom.set_ylim(-0.02, 1.02)
  bottom.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _layer_plot(per_layer, title, path):
  names = list(per_layer)
  fig, ax = plt.subplots(figsize=(7, 1.5 + 0.4 * len(names)))
  ax.barh(names, [per_layer[n] for n in names], color="tab:red")
  ax.set_xlim(0, 1)
  ax.invert_yaxis()
  ax.set_xlabel("sparsity (fraction of weights pruned)")
  ax.set_title(title)
  for i, n in enumerate(names):
    value = per_layer[n]
    inside = value > 0.85  # no room to the right of the bar: write on it
    ax.text(value - 0.01 if inside else value + 0.01, i, f"{value:.3f}",
            va="center", ha="right" if inside else "left",
            color="white" if inside else "black")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def write_plots(records, summary, workdir: pathlib.Path) -> list[pathlib.Path]:
  """Writes ``training.png`` and ``layer_sparsity.png``; returns their paths."""
  name = summary["config"]["name"]
  training = workdir / "training.png"
  layers = workdir / "layer_sparsity.png"
  _training_plot(records, f"{name}: accuracy and sparsity", training)
  _layer_plot(summary["per_layer_sparsity"], f"{name}: sparsity per layer", layers)
  return [training, layers]
