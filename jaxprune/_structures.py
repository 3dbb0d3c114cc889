"""Structures: what a pruning method keeps or removes as a whole.

By default every weight is ranked on its own.  A :class:`Structure` changes
that inside the same masked step (:func:`jaxprune.prune`,
:func:`jaxprune.flipout`, :func:`jaxprune.prune_once`):

- :class:`Pooled` structures (:func:`block`, :func:`channels`) cut every
  prunable tensor into units of equal size, score each unit by pooling its
  weights' scores (sum, mean or max), and rank the units exactly as single
  weights are ranked (global, layerwise or ERK counts, ties by flat index,
  each tensor's best unit kept under ``"global"``): the counts of a plan
  are then counts of units.
- :class:`NOfM` keeps exactly ``n`` of every ``m`` consecutive weights
  along the reduction dimension, as sparse tensor cores need.

Both see a tensor as the matrix ``[rows, shape[-1]]``: every axis but the
last, flattened in row-major order, is the reduction (the ``in`` of a Flax
``Dense`` kernel ``[in, out]``, the ``kh * kw * in`` of a ``Conv`` kernel
``[kh, kw, in, out]``), and the last axis the outputs.

Example:
  >>> import jax.numpy as jnp
  >>> from jaxprune import _selection, _structures
  >>> w = jnp.array([[1.0, 4.0], [3.0, 2.0], [0.5, 6.0], [5.0, 0.1]])
  >>> keys = [_selection.ranking_keys(jnp.abs(w), jnp.ones(w.shape, bool))]
  >>> kept, _ = _structures.n_of_m(1, 2).select(
  ...     keys, [jnp.ones(w.shape, bool)], (0,), (8,), jnp.array([4]), False)
  >>> kept[0].astype(int).tolist()
  [[0, 1], [1, 0], [0, 1], [1, 0]]
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxprune import _allocation
from jaxprune import _checks
from jaxprune import _selection
from jaxprune import _sharding
from jaxprune import _trees

Shape = tuple[int, ...]
POOLS = ("sum", "mean", "max")


def _rows_and_outputs(shape: Shape) -> tuple[int, int]:
  """The matrix view ``[rows, outputs]`` of a tensor of ``shape``."""
  if not shape:
    return 1, 1
  return math.prod(shape[:-1]), shape[-1]


def _matrix(x: jax.Array) -> jax.Array:
  return x.reshape(_rows_and_outputs(x.shape))


def _replicated(x: jax.Array) -> jax.Array:
  """``x``, gathered if it is sharded explicitly: tiling a tensor into
  blocks or groups reshapes it across its shards, which explicit sharding
  does not do implicitly.  It happens once per mask update, not per step;
  the masks are split again where they are made (:func:`_sharding.placed_like`)."""
  if _sharding.explicit_axes(x):
    return jax.sharding.reshard(x, jax.sharding.PartitionSpec())
  return x


def _computed(keys) -> jax.Array:
  return keys.computed() if isinstance(keys, _selection.LazyKeys) else keys


class Structure(abc.ABC):
  """What is kept or pruned as a whole.  Make one with
  :func:`jaxprune.structures.n_of_m`, :func:`jaxprune.structures.block` or
  :func:`jaxprune.structures.channels`."""

  @abc.abstractmethod
  def unit_count(self, path: _trees.Path, shape: Shape, caller: str) -> int:
    """The number of units of a prunable tensor; raises ``ValueError``
    naming the leaf where its shape does not fit."""

  @abc.abstractmethod
  def group_layout(self, shapes: Sequence[Shape], units: Sequence[int],
                   allocation: str, caller: str
                   ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The group of each tensor and the size of each group, in units."""

  @abc.abstractmethod
  def kept_counts(self, sparsity: float, shapes: Sequence[Shape],
                  units: Sequence[int], allocation: str) -> list[int]:
    """The units each group keeps at ``sparsity``."""

  def check_sparsities(self, sparsities: Sequence[float], caller: str) -> None:
    """Raises ``ValueError`` for target sparsities the structure cannot
    realise."""
    del sparsities, caller

  @abc.abstractmethod
  def alive_units(self, mask: np.ndarray) -> int:
    """The number of units of a host mask with a surviving weight."""

  @abc.abstractmethod
  def select(self, keys: Sequence, alive: Sequence[jax.Array],
             group_ids: Sequence[int], group_sizes: Sequence[int],
             kept: jax.Array, keep_best: bool
             ) -> tuple[list[jax.Array], jax.Array]:
    """The weights kept, one boolean array per tensor (a subset of
    ``alive``), from the weights' ranking keys, and the number of NaN
    scores met."""


@dataclasses.dataclass(frozen=True)
class Pooled(Structure):
  """Units of equal size within a tensor, ranked by a pooled score.

  Attributes:
    block_shape: ``(rows, outputs)`` of a unit in the matrix view of a
      tensor; ``None`` for whole output channels (every row of one output).
    pool: how the unit's score is made from its weights' scores: ``"sum"``,
      ``"mean"`` or ``"max"``, over the unit's surviving weights.
  """

  block_shape: tuple[int, int] | None
  pool: str = "mean"

  def __repr__(self) -> str:
    if self.block_shape is None:
      return f"channels(pool={self.pool!r})"
    return f"block({self.block_shape}, pool={self.pool!r})"

  def _unit_shape(self, shape: Shape) -> tuple[int, int]:
    rows, outputs = _rows_and_outputs(shape)
    if self.block_shape is None:
      return rows, 1
    return self.block_shape

  def unit_count(self, path, shape, caller):
    rows, outputs = _rows_and_outputs(shape)
    block_rows, block_outputs = self._unit_shape(shape)
    if rows % block_rows or outputs % block_outputs:
      raise ValueError(
          f"{caller}: {self!r} cannot tile {_trees.path_string(path)} of "
          f"shape {shape}: its matrix view [{rows}, {outputs}] (every axis "
          f"but the last flattened, by the last) does not divide into "
          f"{block_rows} x {block_outputs} blocks; leave it out with "
          "prunable=..., or choose a block that divides it")
    return (rows // block_rows) * (outputs // block_outputs)

  def group_layout(self, shapes, units, allocation, caller):
    del caller
    return _allocation.group_layout(shapes, allocation, units=units)

  def kept_counts(self, sparsity, shapes, units, allocation):
    return _allocation.kept_counts(sparsity, shapes, allocation, units=units)

  def _blocks(self, x: jax.Array) -> jax.Array:
    """``x`` as ``[block rows, rows in a block, block cols, cols in a
    block]``."""
    rows, outputs = _rows_and_outputs(x.shape)
    block_rows, block_outputs = self._unit_shape(x.shape)
    return x.reshape(rows // block_rows, block_rows,
                     outputs // block_outputs, block_outputs)

  def alive_units(self, mask):
    rows, outputs = _rows_and_outputs(mask.shape)
    block_rows, block_outputs = self._unit_shape(mask.shape)
    blocks = mask.reshape(rows // block_rows, block_rows,
                          outputs // block_outputs, block_outputs)
    return int(np.sum(np.any(blocks, axis=(1, 3))))

  def unit_keys(self, keys: jax.Array, alive: jax.Array) -> jax.Array:
    """The ranking key of every unit (``[outputs]`` for channels, ``[block
    rows, block cols]`` for blocks): the key of its pooled score, or the
    pruned key if none of it survives."""
    if self.block_shape is None:  # reductions only, sharded or not
      return self._pooled(keys, alive, tuple(range(keys.ndim - 1)))
    keys, alive = _replicated(keys), _replicated(alive)
    return self._pooled(self._blocks(keys), self._blocks(alive), (1, 3))

  def _pooled(self, keys: jax.Array, alive: jax.Array,
              axes: tuple[int, ...]) -> jax.Array:
    any_alive = jnp.any(alive, axis=axes)
    if self.pool == "max":  # the keys' order is the scores' order
      return jnp.max(jnp.where(alive, keys, jnp.uint32(_selection.PRUNED_KEY)),
                     axis=axes)
    scores = jnp.where(alive, _selection.scores_of_keys(keys), 0.0)
    pooled = jnp.sum(scores, axis=axes)
    if self.pool == "mean":
      count = jnp.sum(alive, axis=axes, dtype=jnp.int32)
      pooled = pooled / jnp.maximum(count, 1).astype(pooled.dtype)
    return _selection.ranking_keys(pooled, any_alive)

  def expanded(self, unit_kept: jax.Array, alive: jax.Array) -> jax.Array:
    """The weights kept, of ``alive``'s shape and placement, from the units
    kept."""
    if self.block_shape is None:
      return jnp.broadcast_to(unit_kept, alive.shape) & alive
    block_rows, block_outputs = self.block_shape
    full = jnp.broadcast_to(
        unit_kept[:, None, :, None],
        (unit_kept.shape[0], block_rows, unit_kept.shape[1], block_outputs))
    return _sharding.placed_like(full.reshape(alive.shape), alive) & alive

  def select(self, keys, alive, group_ids, group_sizes, kept, keep_best):
    units = [self.unit_keys(_computed(k), a) for k, a in zip(keys, alive)]
    selection = _selection.keep_top_k(units, group_ids, group_sizes, kept,
                                      keep_best=keep_best)
    new = [self.expanded(u, a) for u, a in zip(selection.kept, alive)]
    return new, jnp.sum(selection.nan_counts)


@dataclasses.dataclass(frozen=True)
class NOfM(Structure):
  """``n`` of every ``m`` consecutive weights along the reduction.

  Attributes:
    n: the weights kept per group at the final level.
    m: the group length.
    axis: ``None``: groups run along the flattened reduction (rows of the
      matrix view); an int: along that axis of the tensor.
  """

  n: int
  m: int
  axis: int | None = None

  def __repr__(self) -> str:
    axis = "" if self.axis is None else f", axis={self.axis}"
    return f"n_of_m({self.n}, {self.m}{axis})"

  def _length(self, shape: Shape) -> int:
    """The length of the axis the groups run along."""
    if self.axis is None:
      return _rows_and_outputs(shape)[0]
    return shape[self.axis]

  def unit_count(self, path, shape, caller):
    where = _trees.path_string(path)
    if self.axis is not None and not -len(shape) <= self.axis < len(shape):
      raise ValueError(
          f"{caller}: {self!r} groups along axis {self.axis}, but "
          f"{where} has shape {shape}")
    length = self._length(shape)
    if length % self.m:
      along = ("its reduction (every axis but the last, flattened)"
               if self.axis is None else f"its axis {self.axis}")
      raise ValueError(
          f"{caller}: {self!r} cannot group {where} of shape {shape}: "
          f"{along} has {length} weights, not a multiple of {self.m}; leave "
          "it out with prunable=... (as sparse kernels leave such layers "
          "dense)")
    return math.prod(shape)

  def group_layout(self, shapes, units, allocation, caller):
    if allocation not in ("global", "layerwise"):
      raise ValueError(
          f"{caller}: {self!r} ranks each group of {self.m} on its own; the "
          f"allocation {allocation!r} does not apply (use 'global' or "
          "'layerwise', which are the same here)")
    return tuple(range(len(shapes))), tuple(units)

  def kept_per_group(self, sparsity: float) -> int:
    """Weights kept of each group of ``m`` at ``sparsity``: the count rule
    of :func:`_allocation.kept_in_group` on ``m`` weights."""
    return _allocation.kept_in_group(sparsity, self.m)

  def kept_counts(self, sparsity, shapes, units, allocation):
    del shapes, allocation
    per_group = self.kept_per_group(sparsity)
    return [size // self.m * per_group for size in units]

  def check_sparsities(self, sparsities, caller):
    final = self.n / self.m
    if not sparsities:
      return
    kept = [self.kept_per_group(s) for s in sparsities]
    if kept[-1] != self.n or min(kept) < self.n:
      raise ValueError(
          f"{caller}: {self!r} keeps {self.n} of every {self.m} weights, a "
          f"sparsity of {1 - final:g}; the target sparsities "
          f"{list(sparsities)} would keep {kept} of every {self.m} (a group "
          f"of {self.m} at sparsity s keeps {self.m} - round(s * {self.m})). "
          f"End the schedule at {1 - final:g}; lower levels pass through "
          f"denser patterns")

  def alive_units(self, mask):
    return int(np.sum(mask))

  def _grouped(self, x: jax.Array) -> jax.Array:
    """``x`` as ``[..., groups, m]``, groups along the structure's axis."""
    if self.axis is None:
      x = _matrix(x).T
    else:
      x = jnp.moveaxis(x, self.axis, -1)
    return x.reshape(*x.shape[:-1], x.shape[-1] // self.m, self.m)

  def _ungrouped(self, x: jax.Array, shape: Shape) -> jax.Array:
    x = x.reshape(*x.shape[:-2], -1)
    if self.axis is None:
      return x.T.reshape(shape)
    return jnp.moveaxis(x, -1, self.axis)

  def select(self, keys, alive, group_ids, group_sizes, kept, keep_best):
    del group_ids, keep_best
    new, nans = [], jnp.zeros((), jnp.int32)
    for t, (key, live) in enumerate(zip(keys, alive)):
      key = _computed(key)
      per_group = kept[t] // (group_sizes[t] // self.m)
      grouped = self._grouped(_replicated(key))
      # Rank within each group: the weights above, or equal and before.
      pairs = grouped.shape + (self.m,)  # [..., i, j]: j against i
      other, this = grouped[..., None, :], grouped[..., :, None]
      earlier = (lax.broadcasted_iota(jnp.int32, pairs, len(pairs) - 1)
                 < lax.broadcasted_iota(jnp.int32, pairs, len(pairs) - 2))
      tied = (other == this) & earlier
      rank = jnp.sum((other > this) | tied, axis=-1, dtype=jnp.int32)
      chosen = self._ungrouped(rank < per_group, key.shape)
      new.append(_sharding.placed_like(chosen, live) & live)
      nans = nans + jnp.sum((key == _selection.NAN_KEY) & live, dtype=jnp.int32)
    return new, nans


def check_structure(structure: Any, caller: str) -> None:
  """Raises ``TypeError`` unless ``structure`` is None or a
  :class:`Structure`."""
  if structure is not None and not isinstance(structure, Structure):
    raise TypeError(
        f"{caller}: structure must be made by jaxprune.structures.n_of_m, "
        f"block or channels (or be None), got {structure!r}")


def _check_pool(pool: str) -> None:
  if pool not in POOLS:
    raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")


def n_of_m(n: int, m: int, *, axis: int | None = None) -> NOfM:
  """Keep exactly ``n`` of every ``m`` consecutive weights (N:M sparsity).

  The groups run along the reduction dimension, as sparse tensor cores
  need: every axis but the last, flattened in row-major order (the ``in``
  of a Flax ``Dense`` kernel ``[in, out]``, the ``kh * kw * in`` of a
  ``Conv`` kernel ``[kh, kw, in, out]``), for each output; ``axis`` picks a
  single axis instead.  A tensor whose reduction does not divide by ``m``
  raises a ``ValueError`` naming it: leave it out with ``prunable``.

  Under :func:`jaxprune.prune` the schedule's sparsity ``s`` keeps ``m -
  round(s * m)`` of every group (at least one) at each level, and must end
  at ``1 - n / m``: a gradual schedule passes through denser patterns
  (``polynomial(0.5, ...)`` with ``n_of_m(2, 4)`` keeps 4, then 3, then 2
  of every 4).  Within a group the highest scores are kept, ties by
  position; weights already pruned stay pruned (a group that has fewer
  than its count alive keeps what it has).  The allocation does not apply:
  every group is ranked on its own.

  Args:
    n: weights kept per group, ``1 <= n < m``.
    m: the group length, from 2 to 32.
    axis: ``None`` for the flattened reduction, or one axis.

  Returns:
    A structure for ``prune(..., structure=...)`` and
    ``prune_once(..., structure=...)``.

  Example:
    >>> import jax.numpy as jnp
    >>> import jaxprune
    >>> params = {'w': jnp.arange(1.0, 9.0).reshape(4, 2)}
    >>> masks = jaxprune.prune_once(
    ...     params, sparsity=0.5, structure=jaxprune.structures.n_of_m(2, 4))
    >>> masks['w'].astype(int).tolist()
    [[0, 0], [0, 0], [1, 1], [1, 1]]
  """
  _checks.check_int("n", n, minimum=1)
  _checks.check_int("m", m, minimum=2, maximum=32)
  if n >= m:
    raise ValueError(f"n_of_m needs n < m (n = m prunes nothing), got {n}:{m}")
  if axis is not None:
    _checks.check_int("axis", axis, minimum=-(2**31))
  return NOfM(int(n), int(m), None if axis is None else int(axis))


def block(shape: tuple[int, int], *, pool: str = "mean") -> Pooled:
  """Keep or prune whole ``shape`` blocks of weights.

  Every prunable tensor is seen as the matrix ``[rows, outputs]`` (every
  axis but the last flattened in row-major order, by the last) and cut
  into ``shape[0] x shape[1]`` tiles; a tensor whose matrix does not
  divide raises a ``ValueError`` naming it.  A block's score pools its
  surviving weights' scores (``pool``: ``"sum"``, ``"mean"`` or
  ``"max"``), and blocks are ranked like single weights: the sparsity
  counts blocks (which all hold the same number of weights, so it is the
  weights' sparsity too), grouped by the allocation, ties by the block's
  position in row-major order.

  Args:
    shape: ``(rows, outputs)`` of a block, positive ints.
    pool: how a block's score is made from its weights' scores.

  Returns:
    A structure for ``prune``, ``flipout`` and ``prune_once``.

  Example:
    >>> import jax.numpy as jnp
    >>> import jaxprune
    >>> params = {'w': jnp.array([[1.0, 1.0, 5.0, 5.0],
    ...                           [1.0, 1.0, 5.0, 5.0]])}
    >>> masks = jaxprune.prune_once(
    ...     params, sparsity=0.5, structure=jaxprune.structures.block((2, 2)))
    >>> masks['w'].astype(int).tolist()
    [[0, 0, 1, 1], [0, 0, 1, 1]]
  """
  if (not isinstance(shape, (tuple, list)) or len(shape) != 2
      or any(isinstance(d, bool) or not isinstance(d, int) or d < 1
             for d in shape)):
    raise ValueError(
        f"block shape must be two positive ints (rows, outputs), got {shape!r}")
  _check_pool(pool)
  return Pooled((int(shape[0]), int(shape[1])), pool)


def channels(*, pool: str = "mean") -> Pooled:
  """Keep or prune whole output channels: dense-layer neurons, conv filters.

  A unit is every weight of one output (a column of a Flax ``Dense`` kernel
  ``[in, out]``, a filter ``[kh, kw, in]`` of a ``Conv`` kernel ``[kh, kw,
  in, out]``), scored by pooling its surviving weights' scores (``pool``)
  and ranked like single weights: the sparsity counts channels, grouped by
  the allocation (under ``"global"``, channels of layers of different
  fan-in compete, which ``"mean"`` makes comparable).  The pruned channels'
  biases are left to :func:`jaxprune.shrink`, which removes the channels
  and what reads them.

  Args:
    pool: how a channel's score is made from its weights' scores.

  Returns:
    A structure for ``prune``, ``flipout`` and ``prune_once``.

  Example:
    >>> import jax.numpy as jnp
    >>> import jaxprune
    >>> params = {'w': jnp.array([[1.0, 3.0, 0.5], [1.0, 2.0, 0.5]])}
    >>> masks = jaxprune.prune_once(
    ...     params, sparsity=0.6, structure=jaxprune.structures.channels())
    >>> masks['w'].astype(int).tolist()
    [[0, 1, 0], [0, 1, 0]]
  """
  _check_pool(pool)
  return Pooled(None, pool)
