"""What a run reports of its train state: sparsity, gates, structure, paths.

Each function reads a train state (``experiments.state.TrainState``) and
returns plain numbers, lists and dicts, ready for ``metrics.jsonl`` and
``summary.json``; the ones that do not apply to a run return ``{}`` (or
None).  Which reports a method adds to its summary is part of its record
(``experiments.methods.Method.report``).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

import jaxprune
from experiments import structure

__all__ = [
    "connectivity_report",
    "expected_density",
    "final_masks",
    "gate_metrics",
    "per_layer_sparsity",
    "sparsity_report",
    "structure_report",
    "widths",
]


def final_masks(state: jaxprune.TrainState):
  """The masks of the pruning state, or the hard masks of L0 gates, or None."""
  try:
    return state.masks
  except ValueError:  # no pruning state
    pass
  try:
    return jaxprune.hard_masks(state.params)
  except ValueError:  # no gates either: a dense run
    return None


def sparsity_report(state: jaxprune.TrainState) -> jaxprune.Sparsity:
  """Sparsity of the masks if the run prunes or gates, else of the params."""
  masks = final_masks(state)
  return jaxprune.sparsity(state.params if masks is None else masks)


def expected_density(state: jaxprune.TrainState) -> jaxprune.Density | None:
  """The expected density of the L0 gates in the params; None without gates."""
  try:
    return jaxprune.expected_density(state.params)
  except ValueError:  # no gates
    return None


def gate_metrics(state: jaxprune.TrainState,
                 density: jaxprune.Density | None = None) -> dict:
  """Expected density and multipliers of an L0-gated run ({} otherwise)."""
  density = density or expected_density(state)
  if density is None:
    return {}
  metrics = {"expected_density": float(density.model)}
  duals = [s for s in jax.tree.leaves(
      state.opt_state, is_leaf=lambda x: isinstance(x, jaxprune.DualAscentState))
      if isinstance(s, jaxprune.DualAscentState)]
  if duals:
    metrics["multipliers"] = np.concatenate(
        [np.ravel(m) for m in duals[0].multipliers]).tolist()
  return metrics


def structure_report(state: jaxprune.TrainState, model_params: Any) -> dict:
  """Expected density per layer, and the params left once the units that the
  gates cut off are removed (sequential models); {} for an ungated run.

  ``model_params`` are the params the model is applied with at test time
  (the gates applied).
  """
  density = expected_density(state)
  if density is None:
    return {}
  metrics = gate_metrics(state, density)
  kept = structure.kept_params(
      jax.device_get(model_params), jax.device_get(final_masks(state)))
  return {
      **metrics,
      "expected_density_per_layer": {k: float(v) for k, v in density.layers.items()},
      "kept_params": kept.kept,
      "kept_fraction": kept.fraction,
      "units": kept.units,
  }


def connectivity_report(state: jaxprune.TrainState,
                        image_shape: tuple[int, ...]) -> dict:
  """Layers cut off from every input-to-output path, and the kept weights on
  a path (``jaxprune.connectivity``) for inputs of ``image_shape``, for a
  run with masks and without batch norm; {} otherwise."""
  try:
    masks = state.masks
  except ValueError:  # no pruning state
    return {}
  if state.batch_stats:
    return {}

  def apply_fn(p, x):
    return state.apply_fn({"params": p}, x, train=False)

  report = jaxprune.connectivity(apply_fn, jax.device_get(state.params),
                                 jax.device_get(masks), image_shape)
  kept, effective = sum(report.kept.values()), sum(report.effective.values())
  return {
      "connected": report.connected,
      "disconnected_layers": list(report.disconnected),
      "kept_weights": kept,
      "effective_weights": effective,
      "effective_per_layer": report.effective,
  }


def per_layer_sparsity(report: jaxprune.Sparsity) -> dict[str, float]:
  """The sparsity of each leaf, by its path (``Dense_0/kernel``)."""
  return {name: float(v) for name, v in report.per_leaf.items()}


def widths(params: Any) -> dict[str, int]:
  """The output width of every layer of a sequential network's params (its
  top-level entries, each with a ``kernel``), by name."""
  return {name: int(np.shape(layer["kernel"])[-1])
          for name, layer in sorted(params.items())}
