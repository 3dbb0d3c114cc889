"""How a target sparsity is shared out among the prunable tensors.

Everything here runs on the host, in float64, once per schedule level: the
number of weights each group keeps is a Python int, exact, and known before
the train step is traced.

- ``"global"``: one group of all prunable weights; ``round(s * N)`` of them
  are pruned (the count rule of :func:`kept_in_group`).  Each tensor keeps at
  least its best weight (see ``prune``).
- ``"global_topk"``: the same group and count, ranked by plain top-k with
  no floor per tensor, as in the papers' SNIP: a tensor can lose every
  weight (layer collapse).
- ``"layerwise"``: every tensor is its own group and loses ``round(s * n)``.
- ``"erk"``: every tensor is its own group, with the Erdos-Renyi-Kernel
  density of Evci et al. (2020): proportional to ``sum(shape) / prod(shape)``,
  capped at 1 with the excess redistributed, so that the densities average to
  ``1 - s`` over all weights.

In the per-tensor allocations a tensor is never emptied unless its sparsity
is 1: at most ``n - 1`` of its ``n`` weights are pruned.  Likewise a global
group keeps at least one weight while the sparsity is below 1, even where
``round`` (half to even) would prune all ``N``, as at ``s = 1 - 0.5 / N``.

Example:
  >>> from jaxprune import _allocation
  >>> _allocation.kept_counts(0.5, [(4, 4), (4, 2)], "layerwise")
  [8, 4]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

ALLOCATIONS = ("global", "global_topk", "layerwise", "erk")
GLOBAL_ALLOCATIONS = ("global", "global_topk")

Shape = tuple[int, ...]


def check_allocation(allocation: str) -> None:
  if allocation not in ALLOCATIONS:
    raise ValueError(
        f"unknown allocation {allocation!r}; expected one of {ALLOCATIONS}"
    )


def group_layout(
    shapes: Sequence[Shape], allocation: str,
    units: Sequence[int] | None = None,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """The group of each tensor and the size of each group, counted in
  ``units`` (the number of units each tensor holds when whole blocks or
  channels are ranked; by default every weight is a unit)."""
  check_allocation(allocation)
  sizes = _unit_counts(shapes, units)
  if allocation in GLOBAL_ALLOCATIONS:
    return (0,) * len(shapes), (sum(sizes),)
  return tuple(range(len(shapes))), tuple(sizes)


def erk_densities(shapes: Sequence[Shape], density: float) -> list[float]:
  """Erdos-Renyi-Kernel densities whose weighted mean is ``density``.

  Tensor ``l`` gets ``eps * sum(shape_l) / prod(shape_l)``, with ``eps``
  solving ``sum_l d_l n_l = density * sum_l n_l``; tensors whose density
  would exceed 1 are made dense and ``eps`` is solved again for the rest.

  Args:
    shapes: the prunable tensors' shapes.
    density: the overall fraction of weights kept, in ``[0, 1]``.

  Returns:
    One density per tensor, each in ``[0, 1]``.
  """
  sizes = [math.prod(shape) for shape in shapes]
  raw = [sum(shape) / n for shape, n in zip(shapes, sizes)]
  dense: set[int] = set()
  while True:
    budget = density * sum(sizes) - sum(sizes[i] for i in dense)
    weight = sum(raw[i] * sizes[i] for i in range(len(sizes)) if i not in dense)
    if weight == 0:  # everything dense
      return [1.0] * len(sizes)
    eps = budget / weight
    free = [i for i in range(len(sizes)) if i not in dense]
    largest = max(raw[i] for i in free)
    if eps * largest <= 1.0:
      return [1.0 if i in dense else eps * raw[i] for i in range(len(sizes))]
    dense.update(i for i in free if raw[i] == largest)


def kept_in_group(sparsity: float, size: int) -> int:
  """The count rule: how many of a group's ``size`` weights are kept.

  ``size - round(sparsity * size)`` (Python's round, half to even), and at
  least one weight while ``sparsity < 1``: at ``sparsity = 1 - 0.5 / size``
  the product is exactly ``size - 0.5``, which rounds to ``size`` when
  ``size`` is even.  Every count in jaxprune (:func:`kept_counts`, and so
  ``prune``, ``snip``, ``snip_it``, ``grasp``, ``synflow``; ``flipout``'s
  target; ``snap_it``'s units) comes from here.

  Example:
    >>> from jaxprune import _allocation
    >>> _allocation.kept_in_group(0.9, 1000), _allocation.kept_in_group(0.9995, 1000)
    (100, 1)
    >>> _allocation.kept_in_group(1.0, 1000)
    0
  """
  kept = size - round(sparsity * size)
  if sparsity < 1.0 and size > 0:
    kept = max(kept, 1)
  return kept


def _pruned_in_tensor(sparsity: float, size: int, empty: bool) -> int:
  """``size - kept_in_group(sparsity, size)``, at most ``size - 1`` unless
  ``empty``."""
  pruned = size - kept_in_group(sparsity, size)
  return pruned if empty else min(pruned, size - 1)


def _unit_counts(shapes: Sequence[Shape],
                 units: Sequence[int] | None) -> list[int]:
  if units is None:
    return [math.prod(shape) for shape in shapes]
  if len(units) != len(shapes):
    raise ValueError(f"{len(units)} unit counts for {len(shapes)} tensors")
  return list(units)


def kept_counts(
    sparsity: float, shapes: Sequence[Shape], allocation: str,
    units: Sequence[int] | None = None,
) -> list[int]:
  """The number of weights (or units) each group keeps at ``sparsity``.

  Args:
    sparsity: the target fraction of prunable weights removed, in ``[0, 1]``.
    shapes: the prunable tensors' shapes, in tree order.
    allocation: one of :data:`ALLOCATIONS`.
    units: how many units each tensor holds, when whole units (blocks,
      channels) are kept or pruned: the counts are then in units, with the
      same rules; ``"erk"`` takes its densities from ``shapes`` still.  By
      default every weight is a unit.

  Returns:
    One int per group of :func:`group_layout`.

  Raises:
    ValueError: for an unknown allocation, or a ``"global"`` sparsity below
      1 that keeps fewer weights than there are tensors (a tensor would be
      emptied).  A group whose sparsity is below 1 keeps at least one
      weight (:func:`kept_in_group`).
  """
  check_allocation(allocation)
  sizes = _unit_counts(shapes, units)
  if allocation in GLOBAL_ALLOCATIONS:
    total = sum(sizes)
    kept = kept_in_group(sparsity, total)
    if allocation == "global" and sparsity < 1.0 and kept < len(sizes):
      noun = "weights" if units is None else "units"
      raise ValueError(
          f"global sparsity {sparsity} keeps {kept} of {total} {noun}, fewer "
          f"than the {len(sizes)} prunable tensors: some tensor would be "
          "emptied. Lower the sparsity, or ask for 1.0 to prune everything."
      )
    return [kept]
  # Only a target of 1 empties a tensor; an ERK density below 2**-53 would
  # round 1 - d to 1.0.
  empty = sparsity >= 1.0
  if allocation == "layerwise":
    return [n - _pruned_in_tensor(sparsity, n, empty) for n in sizes]
  densities = erk_densities(shapes, 1.0 - sparsity)
  return [n - _pruned_in_tensor(1.0 - d, n, empty)
          for n, d in zip(sizes, densities)]
