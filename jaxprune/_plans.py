"""Plans: which leaves are pruned, how they are grouped, how many each keeps.

A :class:`Plan` is computed on the host from the params' shapes when a
pruning function or transformation meets the params; every method that
ranks weights (``prune``, ``flipout``, ``snip``, ``synflow``, ``snap_it``)
makes one with :func:`make_plan` and reads the prunable leaves through it.

Example:
  >>> import jax.numpy as jnp
  >>> from jaxprune import _allocation, _plans
  >>> params = {'a': jnp.ones((4, 5)), 'b': jnp.ones(5), 'c': jnp.ones((5, 2))}
  >>> plan = _plans.make_plan(
  ...     params, None, "layerwise",
  ...     lambda shapes, units: [_allocation.kept_counts(0.5, shapes, "layerwise")])
  >>> plan.paths, plan.group_sizes, plan.kept.tolist()
  ((('a',), ('c',)), (20, 10), [[10, 5]])
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune import _allocation
from jaxprune import _trees

Shape = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Plan:
  """What is pruned and how many weights each group keeps, per level.

  Attributes:
    prunable: a tree of Python bools with the structure of the params.
    paths: the readable paths of the prunable leaves, in tree order.
    group_ids: the ranked group of each prunable leaf.
    group_sizes: the number of units of each group: weights, or the whole
      blocks or channels of a ``structure``.
    kept: int32 ``[levels, groups]``, the units each group keeps at each
      level.
    structure: what is kept or pruned whole (a
      :class:`jaxprune.structures.Structure`); None: single weights.
  """

  prunable: Any
  paths: tuple[_trees.Path, ...]
  group_ids: tuple[int, ...]
  group_sizes: tuple[int, ...]
  kept: np.ndarray
  structure: Any = None


KeptCounts = Callable[[Sequence[Shape], Sequence[int]], Sequence[Sequence[int]]]


def make_plan(params: Any, prunable: _trees.PrunablePredicate | None,
              allocation: str, kept_counts: KeptCounts,
              caller: str = "jaxprune.prune", structure: Any = None) -> Plan:
  """The plan for ``params``, checking the prunable leaves.

  Args:
    params: the parameter tree.
    prunable: the user's predicate, or ``None`` for the default.
    allocation: how the prunable tensors are grouped for ranking.
    kept_counts: ``(shapes, units) -> rows``, the prunable tensors' shapes
      and the number of units each holds to one row of per-group kept
      counts (in units) for every level.
    caller: the public function, for error messages.
    structure: a :class:`jaxprune.structures.Structure`, or None to rank
      single weights.  It checks every prunable leaf's shape.
  """
  flags, selected = _trees.selected_leaves(params, prunable, caller, "pruned")
  paths = tuple(p for p, _ in selected)
  shapes = [tuple(np.shape(leaf)) for _, leaf in selected]
  if structure is None:
    units = [math.prod(shape) for shape in shapes]
    group_ids, group_sizes = _allocation.group_layout(shapes, allocation)
  else:
    units = [structure.unit_count(path, shape, caller)
             for path, shape in zip(paths, shapes)]
    group_ids, group_sizes = structure.group_layout(shapes, units, allocation,
                                                    caller)
  too_big = [n for n in group_sizes if n >= 2**31]
  if too_big:
    raise ValueError(
        f"a ranked group holds {too_big[0]} weights; at most 2**31 - 1 are "
        "supported"
    )
  kept = kept_counts(shapes, units)
  kept = np.asarray(kept, np.int32).reshape(len(kept), len(group_sizes))
  return Plan(flags, paths, group_ids, group_sizes, kept, structure)


def leveled_plan(params: Any, prunable: _trees.PrunablePredicate | None,
                 allocation: str, sparsities: Sequence[float],
                 caller: str, structure: Any = None) -> Plan:
  """The plan whose levels keep ``n - round(s * n)`` per group for each
  sparsity ``s`` of ``sparsities`` (see :func:`_allocation.kept_counts`),
  counted in the units of ``structure`` (its own rule for N:M)."""
  if structure is None:
    def kept_counts(shapes, units):
      del units
      return [_allocation.kept_counts(s, shapes, allocation) for s in sparsities]
  else:
    structure.check_sparsities(sparsities, caller)

    def kept_counts(shapes, units):
      return [structure.kept_counts(s, shapes, units, allocation)
              for s in sparsities]
  return make_plan(params, prunable, allocation, kept_counts, caller=caller,
                   structure=structure)


def prunable_leaves(tree: Any, plan: Plan) -> list[Any]:
  """The leaves of ``tree`` (with the structure of the params) that the
  plan prunes, in tree order."""
  return [
      leaf
      for leaf, flag in zip(jax.tree.leaves(tree), jax.tree.leaves(plan.prunable))
      if flag
  ]


def check_finite(params: Any, plan: Plan, caller: str) -> None:
  """Raises ``ValueError`` naming the first prunable leaf with NaN or inf.

  Traced leaves (under jit) cannot be checked and are skipped.
  """
  for (path, leaf), flag in zip(
      _trees.leaves_with_paths(params), jax.tree.leaves(plan.prunable)
  ):
    if flag and not isinstance(leaf, jax.core.Tracer):
      if not bool(jnp.all(jnp.isfinite(leaf))):
        raise ValueError(
            f"{caller}: prunable leaf {_trees.path_string(path)} holds NaN or "
            "inf values; pruning scores computed from it would be meaningless"
        )
