"""Projections of arrays onto l1, l2,1 and l1,1 balls (Barlaud and Guyard 2020).

The pure functions behind :func:`jaxprune.project_l1`,
:func:`jaxprune.project_l21` and :func:`jaxprune.project_l11`, public
themselves:

- :func:`l1_ball`: the Euclidean projection onto
  ``{x : sum |x_i| <= r}`` (unstructured sparsity).
- :func:`l21_ball`: the Euclidean projection onto
  ``{x : sum_g ||x_g||_2 <= r}`` (group lasso: whole groups vanish).
- :func:`l11_ball`: the authors' bilevel l1,1 operator, which
  zeroes whole groups too; it lands in the l1 ball but is *not* the
  Euclidean projection (see its docstring).

All three are exact, with static shapes (jit-friendly), and sort-free:
their soft thresholds are found by the searches of
:mod:`jaxprune._thresholds`, in O(n) for a leaf of n weights (O(n + G) in
G groups).

Example:
  >>> import jax.numpy as jnp
  >>> from jaxprune import _balls
  >>> x = jnp.array([[3.0, 4.0], [0.3, 0.4]])  # l1 norm 7.7, row norms 5, 0.5
  >>> _balls.l1_ball(x, 2.0)
  Array([[0.5, 1.5],
         [0. , 0. ]], dtype=float32)
  >>> _balls.l21_ball(x, 2.5)  # the second row is removed
  Array([[1.5, 2. ],
         [0. , 0. ]], dtype=float32)

References:
  Barlaud and Guyard, "Learning sparse deep neural networks using efficient
  structured projections on convex constraints for green AI", ICPR 2020,
  https://hal.science/hal-02556382

  Duchi, Shalev-Shwartz, Singer and Chandra, "Efficient projections onto the
  l1-ball for learning in high dimensions", ICML 2008.

  Condat, "Fast projection onto the simplex and the l1 ball", Mathematical
  Programming 158, 2016.
"""

from __future__ import annotations

import functools
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune import _checks
from jaxprune import _thresholds

Axis = int | tuple[int, ...]


def _check_floating(name: str, x: Any) -> jax.Array:
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(
        f"{name} needs a real floating-point array, got dtype {x.dtype}"
    )
  return x


def compute_dtype(*dtypes) -> np.dtype:
  """The widest of the floating ``dtypes``, and at least float32."""
  return max(
      (np.dtype(d) for d in dtypes + (jnp.float32,)),
      key=lambda d: jnp.finfo(d).bits,
  )


def normalize_axis(axis: Any, ndim: int, where: str) -> tuple[int, ...]:
  """``axis`` (an int or a tuple of ints) as sorted non-negative axes."""
  axes = axis if isinstance(axis, tuple) else (axis,)
  if not axes:
    raise ValueError("axis must name at least one axis, got ()")
  normalized = []
  for a in axes:
    if isinstance(a, bool) or not isinstance(a, numbers.Integral):
      raise TypeError(f"axis must be an int or a tuple of ints, got {axis!r}")
    if not -ndim <= a < ndim:
      raise ValueError(
          f"axis {a} is out of range for {where} with "
          f"{_checks.counted(ndim, 'dimension')}"
      )
    normalized.append(int(a) % ndim)
  if len(set(normalized)) != len(normalized):
    raise ValueError(f"axis {axis!r} names the same axis twice")
  return tuple(sorted(normalized))


# The implementations, on checked arguments.  Jitted, so that an eager call
# compiles one program per shape rather than one per operation; under an
# outer jit they are inlined.


def _scalar_radius(radius, dtype, ndim: int) -> jax.Array:
  """The radius in ``dtype``, of the per-row shape of one row over all of an
  array of ``ndim`` dimensions."""
  return jnp.asarray(radius).astype(dtype).reshape((1,) * ndim)


@jax.jit
def _l1(x: jax.Array, radius: jax.typing.ArrayLike) -> jax.Array:
  dtype = compute_dtype(x.dtype)
  xc = x.astype(dtype)
  everything = tuple(range(x.ndim))
  tau = _thresholds.rows_threshold(
      jnp.abs(xc), _scalar_radius(radius, dtype, x.ndim), everything)
  return _thresholds.soft_threshold(xc, tau).astype(x.dtype)


@functools.partial(jax.jit, static_argnames="axes")
def _l21(
    x: jax.Array, radius: jax.typing.ArrayLike, axes: tuple[int, ...]
) -> jax.Array:
  dtype = compute_dtype(x.dtype)
  xc = x.astype(dtype)
  norms = jnp.sqrt(_thresholds.row_sum(jnp.square(xc), axes))
  everything = tuple(range(x.ndim))
  tau = _thresholds.rows_threshold(
      norms, _scalar_radius(radius, dtype, x.ndim), everything)
  scale = jnp.maximum(norms - tau, 0) / jnp.where(norms > 0, norms, 1)
  scale = jnp.where(tau == 0, jnp.ones_like(scale), scale)  # exact if inside
  return (xc * scale).astype(x.dtype)


@functools.partial(jax.jit, static_argnames="axes")
def _l11(
    x: jax.Array, radius: jax.typing.ArrayLike, axes: tuple[int, ...]
) -> jax.Array:
  dtype = compute_dtype(x.dtype)
  xc = x.astype(dtype)
  a = jnp.abs(xc)
  norms = _thresholds.row_sum(a, axes)
  everything = tuple(range(x.ndim))
  tau = _thresholds.rows_threshold(
      norms, _scalar_radius(radius, dtype, x.ndim), everything)
  budgets = jnp.maximum(norms - tau, 0)  # NaN stays NaN
  group_tau = _thresholds.rows_threshold(a, budgets, axes)
  # Inside the ball every group keeps its whole norm: leave x exactly as is.
  group_tau = jnp.where(tau == 0, jnp.zeros_like(group_tau), group_tau)
  return _thresholds.soft_threshold(xc, group_tau).astype(x.dtype)


def l1_ball(
    x: jax.typing.ArrayLike, radius: jax.typing.ArrayLike
) -> jax.Array:
  """The Euclidean projection of ``x`` onto the l1 ball of radius ``radius``.

  Solves ``min_y ||y - x||_2`` subject to ``sum |y_i| <= radius`` over all
  the entries of ``x`` (any shape): ``y = sign(x) * max(|x| - tau, 0)``
  with the threshold ``tau`` that brings the l1 norm down to ``radius``
  (``tau = 0`` if ``x`` is already inside: ``x`` comes back unchanged).
  ``radius = 0`` gives zeros.

  Exact and sort-free: a search over the bits of the magnitudes finds
  the threshold's support, and one more pass its value.  The search is
  a radix search for float32 inputs of at least 8192 entries (two passes
  of 16 bits from 2**17 entries, three of at most 11 bits below), a
  bisection over the 31 bits for smaller ones.  O(n) for ``n = x.size``,
  with static shapes, so it works under ``jit`` and ``vmap``.  A NaN
  entry makes the whole result NaN; an infinite one, the threshold (the
  result is 0, and NaN at the infinite entries).  Half-precision inputs
  are computed in float32; the result has the dtype of ``x``.

  Args:
    x: a real floating-point array.
    radius: the radius, a scalar >= 0 (``inf`` leaves ``x`` unchanged).  It
      may be traced; a traced negative radius cannot raise and gives NaN.

  Returns:
    The projection, with the shape and dtype of ``x``.

  Raises:
    TypeError: ``x`` is not a real floating-point array; ``radius`` is not
      a number.
    ValueError: ``radius`` is not a scalar, or is negative or NaN.

  Example:
    >>> import jax.numpy as jnp
    >>> import jaxprune
    >>> jaxprune.projections.l1_ball(jnp.array([3.0, -1.5, 0.5]), 2.0)
    Array([ 1.75, -0.25,  0.  ], dtype=float32)
    >>> jaxprune.projections.l1_ball(jnp.array([1.0, -0.5]), 2.0)  # inside
    Array([ 1. , -0.5], dtype=float32)
  """
  x = _check_floating("jaxprune.projections.l1_ball", x)
  _checks.check_scalar_hyperparameter("radius", radius, positive=False)
  return x if x.size == 0 else _l1(x, radius)


def l21_ball(
    x: jax.typing.ArrayLike, radius: jax.typing.ArrayLike, axis: Axis = -1
) -> jax.Array:
  """The Euclidean projection onto the l2,1 (group lasso) ball.

  A *group* is a slice of ``x`` along ``axis``: the entries that share all
  their indices outside ``axis``.  For a dense kernel ``(in, out)`` and the
  default ``axis=-1``, each input row is a group (feature selection); for
  a conv kernel ``(h, w, in, out)``, ``axis=(0, 1, 3)`` makes each input
  channel a group.  The ball is ``{y : sum_g ||y_g||_2 <= radius}``.

  The projection l1-projects the vector of group norms ``||x_g||_2`` onto
  the radius, then rescales every group to its new norm: groups whose norm
  is at most the threshold vanish, the others shrink towards zero by it.
  This is exact (the l2,1 norm is the l1 norm of the group norms, and a
  group's direction is kept).  Cost: O(n) for the norms and O(G) for
  the threshold of the ``G`` group norms, found as in
  :func:`l1_ball`, without sorting.

  Args:
    x: a real floating-point array.
    radius: the radius, a scalar >= 0 (a traced negative radius gives NaN).
    axis: the axis, or tuple of axes, that a group spans.

  Returns:
    The projection, with the shape and dtype of ``x``.

  Raises:
    TypeError: ``x`` is not a real floating-point array; ``radius`` is not
      a number; ``axis`` is not an int or a tuple of ints.
    ValueError: ``radius`` is not a scalar, or is negative or NaN; ``axis``
      is out of range for ``x``, names an axis twice, or is empty.

  Example:
    >>> import jax.numpy as jnp
    >>> import jaxprune
    >>> kernel = jnp.array([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    >>> jaxprune.projections.l21_ball(kernel, 2.5)  # row norms 5, 0.5, 0
    Array([[1.5, 2. ],
           [0. , 0. ],
           [0. , 0. ]], dtype=float32)
  """
  x = _check_floating("jaxprune.projections.l21_ball", x)
  _checks.check_scalar_hyperparameter("radius", radius, positive=False)
  axes = normalize_axis(axis, x.ndim, f"an array of shape {x.shape}")
  return x if x.size == 0 else _l21(x, radius, axes)


def l11_ball(
    x: jax.typing.ArrayLike, radius: jax.typing.ArrayLike, axis: Axis = -1
) -> jax.Array:
  """Barlaud and Guyard's bilevel l1,1 projection: structured l1 sparsity.

  Groups are the slices of ``x`` along ``axis``, as in
  :func:`l21_ball` (by default, the rows of a dense kernel
  ``(in, out)``: the authors' columns of a PyTorch ``(out, in)`` weight).
  Two levels of l1 projection:

  1. the vector of group l1 norms ``||x_g||_1`` is l1-projected onto
     ``radius``, which gives every group a budget ``b_g <= ||x_g||_1``
     (zero for the groups whose norm is at most the threshold);
  2. every group is l1-projected onto its own budget ``b_g``.

  The result lies in ``{y : sum_g ||y_g||_1 <= radius}`` with equality
  when ``x`` is outside, zeroes whole groups, and is idempotent (points
  inside come back unchanged).  Note that this set is simply the l1 ball
  of all the entries, whose Euclidean projection is
  :func:`l1_ball`: this operator is *not* that projection.  It
  is a structured alternative that lands in the same ball with whole
  groups removed and a larger distance to ``x``.

  Cost, without sorting: O(n) for the ``G`` group norms and their
  threshold, found as in :func:`l1_ball`, then a bisection
  over the bits of the magnitudes for the thresholds of all the groups at
  once: 31 compare-and-sum passes over the ``n`` entries for float32 (63
  for float64).

  Args:
    x: a real floating-point array.
    radius: the radius, a scalar >= 0 (a traced negative radius gives NaN).
    axis: the axis, or tuple of axes, that a group spans.

  Returns:
    The result, with the shape and dtype of ``x``.

  Raises:
    TypeError: ``x`` is not a real floating-point array; ``radius`` is not
      a number; ``axis`` is not an int or a tuple of ints.
    ValueError: ``radius`` is not a scalar, or is negative or NaN; ``axis``
      is out of range for ``x``, names an axis twice, or is empty.

  Example:
    >>> import jax.numpy as jnp
    >>> import jaxprune
    >>> x = jnp.array([[3.0, -2.0], [0.0, 3.0]])  # row l1 norms 5 and 3
    >>> jaxprune.projections.l11_ball(x, 2.0)  # the second row is removed
    Array([[ 1.5, -0.5],
           [ 0. ,  0. ]], dtype=float32)
    >>> jaxprune.projections.l1_ball(x, 2.0)  # the Euclidean projection
    Array([[1., 0.],
           [0., 1.]], dtype=float32)
  """
  x = _check_floating("jaxprune.projections.l11_ball", x)
  _checks.check_scalar_hyperparameter("radius", radius, positive=False)
  axes = normalize_axis(axis, x.ndim, f"an array of shape {x.shape}")
  return x if x.size == 0 else _l11(x, radius, axes)
