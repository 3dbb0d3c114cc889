"""Pruning now, outside any training loop: ``prune_once``.

The pruning step of iterative magnitude pruning, and what "prune this model
to 80% now" means: rank the surviving weights by a criterion and keep the
best, with the exact counts and tie rule of :func:`jaxprune.prune`.

Example:
  >>> import jax.numpy as jnp
  >>> import jaxprune
  >>> params = {'w': jnp.array([[0.1, -3.0], [2.0, 0.5]]), 'b': jnp.ones(2)}
  >>> masks = jaxprune.prune_once(params, sparsity=0.5)
  >>> masks['w'].tolist(), masks['b']
  ([[False, True], [True, False]], None)
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
from collections.abc import Callable
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune import _allocation
from jaxprune import _checks
from jaxprune import _masked
from jaxprune import _masks
from jaxprune import _nnx
from jaxprune import _plans
from jaxprune import _structures
from jaxprune import _trees
from jaxprune import criteria as criteria_lib

_CALLER = "jaxprune.prune_once"

Sparsity = float | Mapping[str, float] | Callable[[_trees.Path, Any], float]


def _leaf_sparsities(sparsity: Sparsity, plan: _plans.Plan,
                     leaves: list[Any]) -> list[float]:
  """One checked sparsity per prunable leaf, from a mapping or a function."""
  if isinstance(sparsity, Mapping):
    names = [_trees.path_string(p) for p in plan.paths]
    unknown = sorted(set(sparsity) - set(names))
    missing = [n for n in names if n not in sparsity]
    if unknown or missing:
      raise ValueError(
          f"{_CALLER}: the sparsity mapping must name every prunable leaf and "
          f"no other; missing {missing}, unknown {unknown}")
    return [_checks.check_sparsity(sparsity[n], f"sparsity[{n!r}]") for n in names]
  return [_checks.check_sparsity(sparsity(path, leaf),
                                 f"sparsity of {_trees.path_string(path)}")
          for path, leaf in zip(plan.paths, leaves)]


def prune_once(
    params: Any,
    *,
    sparsity: Sparsity,
    criterion: criteria_lib.Criterion = criteria_lib.magnitude,
    masks: Any = None,
    allocation: str = "global",
    prunable: _trees.PrunablePredicate | None = None,
    grads: Any = None,
    key: jax.Array | None = None,
    structure: _structures.Structure | None = None,
) -> Any:
  """Masks that prune ``params`` now to ``sparsity``, among the survivors.

  The criterion scores the weights (``criterion(params, grads, key)``, as in
  :func:`jaxprune.prune`); each group (all prunable weights under
  ``"global"``, each tensor under ``"layerwise"``...) keeps its
  ``n - round(s * n)`` best-scoring survivors of ``masks``, ties broken by
  flat index.  Weights that ``masks`` prune stay pruned: ``sparsity`` is the
  overall fraction of the prunable weights removed, those already removed
  included.

  Per-leaf rates, as the lottery-ticket paper prunes 20% of the hidden
  layers' remaining weights and 10% of the output layer's each round, are a
  function ``(path, leaf) -> sparsity`` or a mapping ``{'out/kernel': s}``
  with ``allocation="layerwise"``: after ``r`` rounds a hidden layer is at
  ``1 - 0.8 ** r``.

  Example:
    >>> import jax.numpy as jnp
    >>> import jaxprune
    >>> params = {'hidden': {'kernel': jnp.arange(1.0, 11.0).reshape(2, 5)},
    ...           'out': {'kernel': jnp.arange(1.0, 11.0).reshape(5, 2)}}
    >>> rates = lambda path, leaf: 1 - (0.9 if path[0] == 'out' else 0.8) ** 2
    >>> masks = jaxprune.prune_once(params, sparsity=rates, allocation='layerwise')
    >>> int(masks['hidden']['kernel'].sum()), int(masks['out']['kernel'].sum())
    (6, 8)
    >>> again = jaxprune.prune_once(params, sparsity=0.8, masks=masks)
    >>> bool((again['out']['kernel'] <= masks['out']['kernel']).all())
    True

  Args:
    params: the parameter tree (Linen params, an ``nnx.State`` or its plain
      form, or an ``nnx.Module``).
    sparsity: the fraction of the prunable weights to remove, in ``[0, 1]``;
      with ``allocation="layerwise"`` also a mapping from each prunable
      leaf's path (``'Dense_0/kernel'``) to its own sparsity, or a function
      ``(path, leaf) -> sparsity``.
    criterion: ``(params, grads, key) -> scores``; magnitude by default.
    masks: the current masks (survivors True), as :func:`jaxprune.masks_of`
      returns them; by default every weight survives.
    allocation: ``"global"``, ``"global_topk"``, ``"layerwise"`` or
      ``"erk"``, as in :func:`jaxprune.prune`.
    prunable: which leaves are pruned, ``(path, leaf) -> bool``.
    grads: gradients for a criterion that reads them (``saliency``).
    key: a PRNG key for a criterion that draws (``random``); by default
      ``jax.random.key(0)``.
    structure: N:M groups, blocks or channels to keep or prune whole
      (:mod:`jaxprune.structures`), as in :func:`jaxprune.prune`; the counts
      are then in its units.

  Returns:
    Masks with the structure of the params (for Flax NNX, the plain form):
    a boolean array for every prunable leaf, ``None`` for the others.

  Raises:
    ValueError: a sparsity outside ``[0, 1]``; per-leaf sparsities without
      ``"layerwise"``; a sparsity below what ``masks`` already prune (a
      pruned weight would come back), naming the leaf or group; masks that
      do not fit the params.
    TypeError: masks that are not boolean.
  """
  params = _nnx.plain(params)
  if grads is not None:
    grads = _nnx.plain(grads)
  _allocation.check_allocation(allocation)
  _structures.check_structure(structure, _CALLER)
  per_leaf = not isinstance(sparsity, numbers.Real) or isinstance(sparsity, bool)
  if per_leaf and not (isinstance(sparsity, Mapping) or callable(sparsity)):
    raise TypeError(
        f"{_CALLER}: sparsity must be a number, a mapping from leaf paths to "
        f"numbers or a function (path, leaf) -> number, got {sparsity!r}")
  if per_leaf and allocation != "layerwise":
    raise ValueError(
        f"{_CALLER}: per-leaf sparsities need allocation='layerwise', got "
        f"{allocation!r}")
  if per_leaf:
    plan = _plans.make_plan(params, prunable, allocation,
                            lambda shapes, units: [[0] * len(shapes)],
                            caller=_CALLER, structure=structure)
    leaves = _plans.prunable_leaves(params, plan)
    rates = _leaf_sparsities(sparsity, plan, leaves)
    if structure is None:
      kept = [_allocation.kept_in_group(s, int(np.size(leaf)))
              for s, leaf in zip(rates, leaves)]
    else:
      for s in rates:
        structure.check_sparsities([s], _CALLER)
      kept = [structure.kept_counts(s, [np.shape(leaf)], [units], "layerwise")[0]
              for s, leaf, units in zip(rates, leaves, plan.group_sizes)]
    plan = dataclasses.replace(plan, kept=np.asarray([kept], np.int32))
  else:
    plan = _plans.leveled_plan(
        params, prunable, allocation,
        [_checks.check_sparsity(sparsity, "sparsity")], caller=_CALLER,
        structure=structure)
  _plans.check_finite(params, plan, _CALLER)
  masks = (_masks.all_kept(plan, params) if masks is None else
           _masks.checked_initial_masks(masks, params, plan, _CALLER))
  _check_no_revival(masks, plan)
  if key is None:
    key = jax.random.key(0)
  scores = criterion(params, grads, key)
  select = jax.jit(functools.partial(
      _masked.selected_masks, plan=plan, allocation=allocation))
  new, _ = select(scores, masks, kept=jnp.asarray(plan.kept[0]))
  return _nnx.plain(new)


def _check_no_revival(masks: Any, plan: _plans.Plan) -> None:
  """Raises unless every group keeps at most as many weights as survive."""
  survivors = np.zeros(len(plan.group_sizes), np.int64)
  for group, mask in zip(plan.group_ids, _masks.mask_leaves(masks)):
    mask = np.asarray(mask)
    survivors[group] += (int(np.sum(mask)) if plan.structure is None
                         else plan.structure.alive_units(mask))
  noun = "weights" if plan.structure is None else "units"
  for group, (kept, alive) in enumerate(zip(plan.kept[0], survivors)):
    if kept > alive:
      leaves = [_trees.path_string(p)
                for p, g in zip(plan.paths, plan.group_ids) if g == group]
      raise ValueError(
          f"{_CALLER}: the sparsity keeps {int(kept)} {noun} of "
          f"{', '.join(leaves)}, but the masks leave only {int(alive)}: "
          "pruned weights would come back; ask for at least the masks' "
          "sparsity")
