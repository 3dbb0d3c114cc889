"""Projected gradient onto l1, l2,1 and l1,1 balls (Barlaud and Guyard 2020).

Projected gradient descent trains under a convex constraint: after every
optimizer step the weights are projected back onto a ball, and the
projection's soft threshold makes them sparse.  :func:`project_l1`,
:func:`project_l21` and :func:`project_l11` are optax transformations for the
last place of a chain, ``optax.chain(inner, jaxprune.project_l1(radius))``:
where the inner optimizer's updates ``u`` would move the params ``p`` to
``p + u``, they return ``P(p + u) - p``, so that after
``optax.apply_updates`` the params are ``P(p + u)``.  Each selected leaf is
projected onto its own ball of the given radius (a per-layer constraint, as
in the paper).

The projections are also public as pure functions:

- :func:`l1_ball_projection`: the Euclidean projection onto
  ``{x : sum |x_i| <= r}`` (unstructured sparsity).
- :func:`l21_ball_projection`: the Euclidean projection onto
  ``{x : sum_g ||x_g||_2 <= r}`` (group lasso: whole groups vanish).
- :func:`l11_ball_projection`: the authors' bilevel l1,1 operator, which
  zeroes whole groups too; it lands in the l1 ball but is *not* the
  Euclidean projection (see its docstring).

All three are exact, with static shapes (jit-friendly), and sort-free:
the bits of a non-negative float, read as an integer, keep its order, so
the soft threshold is found by a search over those bits, then refined by
one exact pass.  A long vector (an l1 leaf of at least 8192 weights, or
as many group norms) is searched by a radix search, two or three passes
of scatter-add histograms over it; shorter ones, and the G thresholds
inside the groups of the l1,1 operator, all at once, by a bisection over
the 31 bits of the float32 keys, 31 compare-and-sum passes.  Both run in
place, without reshaping a leaf, so a sharded leaf is projected where it
lies: only sums and histograms are all-reduced between the devices.  For
a leaf of n weights in G groups: O(n) for l1, O(n + G) for l2,1 and
l1,1.  (A sort costs O(n log n), and XLA's sort is slow on CPU: with it,
an Adam step projected onto the l1 ball took 27 times a plain step on
LeNet-300-100.)

Example:
  >>> import jax, jax.numpy as jnp, optax
  >>> import jaxprune
  >>> params = {'w': jnp.array([[1.0, -2.0], [0.5, 3.0]]), 'b': jnp.ones(2)}
  >>> tx = optax.chain(optax.sgd(0.1), jaxprune.project_l1(2.0))
  >>> state = tx.init(params)
  >>> grads = {'w': jnp.zeros((2, 2)), 'b': jnp.ones(2)}
  >>> updates, state = jax.jit(tx.update)(grads, state, params)
  >>> params = optax.apply_updates(params, updates)
  >>> params['w']  # the nearest point with sum |w| <= 2: a soft threshold
  Array([[ 0. , -0.5],
         [ 0. ,  1.5]], dtype=float32)
  >>> params['b']  # not selected (ndim < 2): a plain SGD step
  Array([0.9, 0.9], dtype=float32)
  >>> jaxprune.masks_of(state)['w'].tolist()  # the support, for reporting
  [[False, True], [False, True]]

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
import math
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprune import _checks
from jaxprune import _inspect
from jaxprune import _sharding
from jaxprune import _trees

Axis = int | tuple[int, ...]


@_inspect.register_mask_state
class ProjectionState(NamedTuple):
  """State of :func:`project_l1`, :func:`project_l21` and :func:`project_l11`.

  Attributes:
    masks: a tree with the structure of the params: for every projected
      leaf, a boolean array, True where the weight is nonzero after the
      last update (at ``init``, where the initial param is nonzero);
      ``None`` for the other leaves.  It is a report of the support, read
      by :func:`jaxprune.masks_of`; it does not constrain anything: the
      projection alone sets weights to zero, and a zeroed weight may come
      back at a later step.
  """

  masks: Any


# ------------------------------------------------------------ pure functions


def _check_floating(name: str, x: Any) -> jax.Array:
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(
        f"{name} needs a real floating-point array, got dtype {x.dtype}"
    )
  return x


def _compute_dtype(*dtypes) -> np.dtype:
  """The widest of the floating ``dtypes``, and at least float32."""
  return max(
      (np.dtype(d) for d in dtypes + (jnp.float32,)),
      key=lambda d: jnp.finfo(d).bits,
  )


def _sum_dtype(a, b) -> np.dtype:
  """The dtype of ``a + b`` under standard promotion, for floating dtypes."""
  return np.dtype(a) if np.dtype(a) == np.dtype(b) else _compute_dtype(a, b)


def _normalize_axis(axis: Any, ndim: int, where: str) -> tuple[int, ...]:
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
          f"axis {a} is out of range for {where} with {ndim} dimension(s)"
      )
    normalized.append(int(a) % ndim)
  if len(set(normalized)) != len(normalized):
    raise ValueError(f"axis {axis!r} names the same axis twice")
  return tuple(sorted(normalized))


def _check_axis_type(axis: Any) -> None:
  """Checks ``axis`` before the shapes it applies to are known."""
  axes = axis if isinstance(axis, tuple) else (axis,)
  if any(
      isinstance(a, bool) or not isinstance(a, numbers.Integral) for a in axes
  ):
    raise TypeError(f"axis must be an int or a tuple of ints, got {axis!r}")
  if not axes:
    raise ValueError("axis must name at least one axis, got ()")


# The thresholds are found without sorting, by one of two searches over
# the keys of the magnitudes (see _rows_threshold).  Measured with XLA on
# a loaded 2-core CPU (to about 30%), the radix search wins on one row of
# about 8000 magnitudes or more: 0.9 ms against 2.7 ms for 784 x 300,
# 16 ms against 140 ms for 4M; the bisection on shorter rows and on many
# rows: 3.3 ms against 17 ms for 784 rows of 300, 3.5 ms against 7 ms for
# 59 rows of 4000 (and either is within 1.5x of the other for 4M
# magnitudes in rows of 1000 to 4000).  The bisection also compiles
# faster (0.1 s against 0.8 s).
_RADIX_MIN_ROW = 8192
# The radix search reads the keys in digits of at most 16 bits in rows of
# at least _LONG_ROW magnitudes, where each pass over them costs more than
# the 65536 bins of a histogram, else in digits of at most 11 bits.
_LONG_ROW = 1 << 17
# Histograms of more bins than this are searched in two steps, groups of
# bins then the bins of one group: a cumulative sum over 65536 bins costs
# more on CPU than a pass over a 784 x 300 kernel.
_SCAN_BINS_BITS = 11


def _digit_widths(key_bits: int, n: int) -> tuple[int, ...]:
  """The digits, from the top, of a radix search over rows of ``n`` keys.

  >>> _digit_widths(31, 10**6), _digit_widths(31, 1000)
  ((15, 16), (10, 10, 11))
  """
  most = 16 if n >= _LONG_ROW else 11
  passes = -(-key_bits // most)
  return tuple(key_bits // passes + (i >= passes - key_bits % passes)
               for i in range(passes))


class _Search(NamedTuple):
  """Where a search for the support stands, per row.

  Attributes:
    base: every key ``>= base`` is in the support.
    total: the sum of the magnitudes above the bin being searched (the
      radix search) or of the support (the bisection, and the result of
      either search).
    count: their number, as ``total``.
  """

  base: jax.Array
  total: jax.Array
  count: jax.Array


def _below(keys: jax.Array, dtype) -> jax.Array:
  """The float just below every non-negative key (0 below the key 0)."""
  return jax.lax.bitcast_convert_type(jnp.maximum(keys - 1, 0), dtype)


def _take(x: jax.Array, i: jax.Array) -> jax.Array:
  """``x[r, i[r]]`` for every row ``r`` (and every trailing index)."""
  i = i.reshape(i.shape + (1,) * (x.ndim - 1))
  return jnp.take_along_axis(x, i, axis=1)[:, 0]


def _last_positive_bin(
    search: _Search, hist: jax.Array, shift: int, radius: jax.Array
) -> tuple[_Search, jax.Array]:
  """Narrows ``search`` to the last bin of each row where ``f`` is positive.

  Bin ``d`` of row ``r`` of ``hist``, ``[rows, bins, 2]`` sums and counts,
  holds the keys ``base[r] + [d, d + 1) << shift``.  ``f`` just below the
  bin's lowest key is the sum over the bins from it (and the keys above
  them), less their count times that float, less the radius.  Returns the
  search narrowed, in every row, to the last bin where ``f`` is positive
  (bin 0 if none is), and those bins.
  """
  rows, bins, _ = hist.shape
  width = bins.bit_length() - 1
  if width > _SCAN_BINS_BITS:  # groups of bins first, then bins
    low_width = width // 2
    size = 1 << low_width
    grouped = jnp.sum(hist.reshape(rows, -1, size, 2), axis=2)
    search, group = _last_positive_bin(
        search, grouped, shift + low_width, radius)
    index = group[:, None] * size + jnp.arange(size)[None, :]
    search, d = _last_positive_bin(
        search, jnp.take_along_axis(hist, index[:, :, None], axis=1), shift,
        radius)
    return search, group * size + d
  key_dtype = search.base.dtype
  above = jax.lax.cumsum(hist, axis=1, reverse=True)
  above = jnp.concatenate([above, jnp.zeros_like(above[:, :1])], axis=1)
  total = above[:, :, 0] + search.total[:, None]
  count = above[:, :, 1] + search.count[:, None]
  offsets = jnp.arange(bins, dtype=key_dtype)[None, :] << shift
  below = _below(search.base[:, None] + offsets, hist.dtype)
  f = total[:, :-1] - count[:, :-1] * below - radius[:, None]
  d = jnp.max(jnp.where(f > 0, jnp.arange(bins)[None, :], 0), axis=1)
  search = _Search(
      search.base + (d.astype(key_dtype) << shift),
      _take(total, d + 1),
      _take(count, d + 1),
  )
  return search, d


def _row_shape(
    shape: tuple[int, ...], axes: tuple[int, ...]
) -> tuple[int, ...]:
  """The shape of a per-row quantity: ``shape`` with the row's axes at 1."""
  return tuple(1 if d in axes else n for d, n in enumerate(shape))


def _row_sum(x: jax.Array, axes: tuple[int, ...], dtype=None) -> jax.Array:
  """Sums of ``x`` over each row, with the row's axes kept at size 1."""
  return jnp.sum(x, axis=axes, keepdims=True, dtype=dtype)


def _radix_search(
    a: jax.Array,
    keys: jax.Array,
    radius: jax.Array,
    axes: tuple[int, ...],
    count_dtype,
) -> _Search:
  """The support's lowest key, sum and count, a digit of the keys at a time.

  For each digit from the top, one pass: scatter-add histograms, over the
  keys that share the digits found so far, of their counts and of their
  excess over their bin's lowest value (exact; the bins of the last digit
  hold one value each) give ``f`` just below every bin, from the sums over
  the bins above it, and so the last bin where ``f`` is positive.  The
  counts are exact per bin (in ``count_dtype``), then searched in the
  float dtype of ``a``, like the sums.  A sharded ``a`` is counted where
  it lies: the only collective is an all-reduce of each histogram.
  """
  row_shape = _row_shape(a.shape, axes)
  rows = math.prod(row_shape)
  key_dtype = keys.dtype
  # Each row's position among the rows: its first histogram bin.
  first_bin = _sharding.flat_index(row_shape)
  search = _Search(
      jnp.zeros((rows,), key_dtype),
      jnp.zeros((rows,), a.dtype),
      jnp.zeros((rows,), a.dtype),
  )
  key_bits = jnp.finfo(a.dtype).bits - 1  # a magnitude's sign bit is 0
  shift = key_bits
  for level, width in enumerate(_digit_widths(key_bits, a.size // rows)):
    shift -= width
    num_bins = 1 << width
    digits = ((keys >> shift) & (num_bins - 1)).astype(jnp.int32)
    bins = first_bin * num_bins + digits
    if level:  # only the keys in the row's current bin; the others dropped
      base = search.base.reshape(row_shape)
      in_bin = keys >> (shift + width) == base >> (shift + width)
      bins = jnp.where(in_bin, bins, rows * num_bins)

    def histogram(values, dtype, bins=bins, num_bins=num_bins):
      sums = _sharding.bin_sums(bins, values, rows * num_bins, dtype)
      return sums.reshape(rows, num_bins)

    counts = histogram(None, count_dtype).astype(a.dtype)
    offsets = jnp.arange(num_bins, dtype=key_dtype)[None, :] << shift
    lows = jax.lax.bitcast_convert_type(
        search.base[:, None] + offsets, a.dtype)
    # Empty bins may start at inf or NaN: skip them.
    sums = jnp.where(counts > 0, counts * lows, 0)
    if shift:  # plus the excess over the bin's lowest value
      low = jax.lax.bitcast_convert_type(keys >> shift << shift, a.dtype)
      excess = jnp.where(a == low, jnp.zeros_like(a), a - low)  # inf - inf
      sums += histogram(excess, a.dtype)
    hist = jnp.stack([sums, counts], axis=-1)
    search, d = _last_positive_bin(
        search, hist, shift, radius.reshape(rows))
  in_d = _take(hist, d)
  return _Search(
      search.base.reshape(row_shape),
      (search.total + in_d[:, 0]).reshape(row_shape),
      (search.count + in_d[:, 1]).reshape(row_shape),
  )


def _bisection(
    a: jax.Array,
    keys: jax.Array,
    radius: jax.Array,
    axes: tuple[int, ...],
    count_dtype,
) -> _Search:
  """The support's lowest key, sum and count, a bit of the keys at a time.

  Each step sets the next bit of the key if ``f`` is still positive just
  below the key with that bit set: one fused compare-and-sum pass per
  step, in place (a sharded row's sums are all-reduced scalars).
  """
  key_dtype = keys.dtype
  key_bits = jnp.finfo(a.dtype).bits - 1

  def step(i, search):
    bit = jnp.left_shift(
        jnp.ones((), key_dtype), jnp.asarray(key_bits - 1 - i, key_dtype))
    candidate = search.base | bit
    above = keys >= candidate
    total = _row_sum(jnp.where(above, a, jnp.zeros_like(a)), axes)
    count = _row_sum(above, axes, count_dtype)
    below = _below(candidate, a.dtype)
    positive = (count > 0) & (
        total - count.astype(a.dtype) * below - radius > 0)
    return jax.tree.map(
        lambda new, old: jnp.where(positive, new, old),
        _Search(candidate, total, count), search)

  total = _row_sum(a, axes)
  n = a.size // total.size
  # zeros_like and full_like keep the sharding of the row sums, as the
  # loop's carry must.
  everything = _Search(
      jnp.zeros_like(total, dtype=key_dtype),
      total,
      jnp.full_like(total, n, dtype=count_dtype),
  )
  return jax.lax.fori_loop(0, key_bits, step, everything)


def _rows_threshold(
    a: jax.Array, radius: jax.Array, axes: tuple[int, ...]
) -> jax.Array:
  """The soft threshold that puts every row of ``a`` in its own l1 ball.

  Args:
    a: non-negative magnitudes, float32 or float64, of any shape; a row
      is the entries that share their indices outside ``axes``, ``n >= 1``
      of them.
    radius: the radii, of the per-row shape (``a``'s with ``axes`` at
      size 1; NaN where a radius is negative).
    axes: the axes a row spans, sorted; every axis for one row.

  Returns:
    The thresholds ``tau >= 0``, of the per-row shape, with
    ``sum(max(a - tau, 0)) == radius`` for every row whose l1 norm exceeds
    its radius, and ``tau == 0`` for the others (NaN for a row with a NaN,
    or a NaN or negative radius).

  Sort-free, O(n) per row, and in place: no reshape or transpose, so a
  sharded ``a`` is searched where it lies, with all-reduces of per-row
  sums and histograms.  ``f(t) = sum(max(a - t, 0)) - radius`` decreases
  in ``t``, linearly between consecutive magnitudes.  The bits of a
  non-negative float read as an integer (its key) keep its order, so
  a search over the keys finds the largest key ``k`` such that ``f`` is
  positive just below ``k``: the support ``A`` is the magnitudes whose
  keys are ``>= k``.  For one row of at least ``_RADIX_MIN_ROW``
  magnitudes (a large l1 leaf, or as many group norms) the search is a
  radix search, 11 or 16 bits of the keys a pass (``_radix_search``): 2
  or 3 passes for float32; otherwise (short rows, and the groups of the
  l1,1 projection, all at once), a bisection, a bit a pass
  (``_bisection``): 31 passes for float32.
  """
  one_long_row = len(axes) == a.ndim and a.size >= _RADIX_MIN_ROW
  return _refined_threshold(
      _radix_search if one_long_row else _bisection, a, radius, axes)


def _refined_threshold(
    search: Callable[..., _Search],
    a: jax.Array,
    radius: jax.Array,
    axes: tuple[int, ...],
) -> jax.Array:
  """:func:`_rows_threshold` with the support found by ``search``.

  The threshold of the support, ``(sum_A a - r) / |A|``, is recomputed
  once over the support it selects, ``(sum_{a > tau} a - r) / #{a >
  tau}``, with plain sums: as accurate as the sorted running sums (Condat
  2016) that the searches replace.
  """
  n = a.size // math.prod(_row_shape(a.shape, axes))
  bits = jnp.finfo(a.dtype).bits
  keys = jax.lax.bitcast_convert_type(
      a, jnp.int32 if bits == 32 else jnp.int64)
  # Counts in floats are exact up to 2**24 (float32) and faster on CPU.
  exact = n <= 2 ** (jnp.finfo(a.dtype).nmant + 1)
  count_dtype = a.dtype if exact else jnp.int32
  support = search(a, keys, radius, axes, count_dtype)
  first = (support.total - radius) / jnp.maximum(
      support.count.astype(a.dtype), 1)
  above = a > first
  total = _row_sum(jnp.where(above, a, jnp.zeros_like(a)), axes)
  count = _row_sum(above, axes, count_dtype)
  refined = (total - radius) / jnp.maximum(count, 1).astype(a.dtype)
  tau = jnp.maximum(jnp.where(count > 0, refined, first), 0)
  outside = _row_sum(a, axes) - radius
  tau = jnp.where(outside > 0, tau, jnp.zeros_like(tau))
  invalid = jnp.isnan(outside) | (radius < 0)
  return jnp.where(invalid, jnp.asarray(jnp.nan, a.dtype), tau)


def _soft_threshold(x: jax.Array, tau: jax.Array) -> jax.Array:
  """``sign(x) * max(|x| - tau, 0)``; exactly ``x`` where ``tau == 0``."""
  return x - jnp.clip(x, -tau, tau)


# The implementations, on checked arguments.  Jitted, so that an eager call
# compiles one program per shape rather than one per operation; under an
# outer jit they are inlined.


def _scalar_radius(radius, dtype, ndim: int) -> jax.Array:
  """The radius in ``dtype``, of the per-row shape of one row over all of an
  array of ``ndim`` dimensions."""
  return jnp.asarray(radius).astype(dtype).reshape((1,) * ndim)


@jax.jit
def _l1(x: jax.Array, radius: jax.typing.ArrayLike) -> jax.Array:
  dtype = _compute_dtype(x.dtype)
  xc = x.astype(dtype)
  everything = tuple(range(x.ndim))
  tau = _rows_threshold(
      jnp.abs(xc), _scalar_radius(radius, dtype, x.ndim), everything)
  return _soft_threshold(xc, tau).astype(x.dtype)


@functools.partial(jax.jit, static_argnames="axes")
def _l21(
    x: jax.Array, radius: jax.typing.ArrayLike, axes: tuple[int, ...]
) -> jax.Array:
  dtype = _compute_dtype(x.dtype)
  xc = x.astype(dtype)
  norms = jnp.sqrt(_row_sum(jnp.square(xc), axes))
  everything = tuple(range(x.ndim))
  tau = _rows_threshold(
      norms, _scalar_radius(radius, dtype, x.ndim), everything)
  scale = jnp.maximum(norms - tau, 0) / jnp.where(norms > 0, norms, 1)
  scale = jnp.where(tau == 0, jnp.ones_like(scale), scale)  # exact if inside
  return (xc * scale).astype(x.dtype)


@functools.partial(jax.jit, static_argnames="axes")
def _l11(
    x: jax.Array, radius: jax.typing.ArrayLike, axes: tuple[int, ...]
) -> jax.Array:
  dtype = _compute_dtype(x.dtype)
  xc = x.astype(dtype)
  a = jnp.abs(xc)
  norms = _row_sum(a, axes)
  everything = tuple(range(x.ndim))
  tau = _rows_threshold(
      norms, _scalar_radius(radius, dtype, x.ndim), everything)
  budgets = jnp.maximum(norms - tau, 0)  # NaN stays NaN
  group_tau = _rows_threshold(a, budgets, axes)
  # Inside the ball every group keeps its whole norm: leave x exactly as is.
  group_tau = jnp.where(tau == 0, jnp.zeros_like(group_tau), group_tau)
  return _soft_threshold(xc, group_tau).astype(x.dtype)


def l1_ball_projection(
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
    >>> jaxprune.l1_ball_projection(jnp.array([3.0, -1.5, 0.5]), 2.0)
    Array([ 1.75, -0.25,  0.  ], dtype=float32)
    >>> jaxprune.l1_ball_projection(jnp.array([1.0, -0.5]), 2.0)  # inside
    Array([ 1. , -0.5], dtype=float32)
  """
  x = _check_floating("l1_ball_projection", x)
  _checks.check_scalar_hyperparameter("radius", radius, positive=False)
  return x if x.size == 0 else _l1(x, radius)


def l21_ball_projection(
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
  :func:`l1_ball_projection`, without sorting.

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
    >>> jaxprune.l21_ball_projection(kernel, 2.5)  # row norms 5, 0.5, 0
    Array([[1.5, 2. ],
           [0. , 0. ],
           [0. , 0. ]], dtype=float32)
  """
  x = _check_floating("l21_ball_projection", x)
  _checks.check_scalar_hyperparameter("radius", radius, positive=False)
  axes = _normalize_axis(axis, x.ndim, f"an array of shape {x.shape}")
  return x if x.size == 0 else _l21(x, radius, axes)


def l11_ball_projection(
    x: jax.typing.ArrayLike, radius: jax.typing.ArrayLike, axis: Axis = -1
) -> jax.Array:
  """Barlaud and Guyard's bilevel l1,1 projection: structured l1 sparsity.

  Groups are the slices of ``x`` along ``axis``, as in
  :func:`l21_ball_projection` (by default, the rows of a dense kernel
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
  :func:`l1_ball_projection`: this operator is *not* that projection.  It
  is a structured alternative that lands in the same ball with whole
  groups removed and a larger distance to ``x``.

  Cost, without sorting: O(n) for the ``G`` group norms and their
  threshold, found as in :func:`l1_ball_projection`, then a bisection
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
    >>> jaxprune.l11_ball_projection(x, 2.0)  # the second row is removed
    Array([[ 1.5, -0.5],
           [ 0. ,  0. ]], dtype=float32)
    >>> jaxprune.l1_ball_projection(x, 2.0)  # the Euclidean projection
    Array([[1., 0.],
           [0., 1.]], dtype=float32)
  """
  x = _check_floating("l11_ball_projection", x)
  _checks.check_scalar_hyperparameter("radius", radius, positive=False)
  axes = _normalize_axis(axis, x.ndim, f"an array of shape {x.shape}")
  return x if x.size == 0 else _l11(x, radius, axes)


# ------------------------------------------------------------ transformations


def _check_prunable(prunable: Any) -> None:
  if prunable is not None and not callable(prunable):
    raise TypeError(
        f"prunable must be a (path, leaf) -> bool function, got {prunable!r}"
    )


def _selected(params: Any, prunable, name: str, axis: Axis | None) -> Any:
  """The tree of flags of the leaves to project, checked.

  Raises:
    ValueError: nothing selected; ``axis`` out of range for a leaf.
    TypeError: a selected leaf is not real floating-point.
  """
  flags, selected = _trees.selected_leaves(
      params, prunable, f"jaxprune.{name}", "projected")
  for path, leaf in selected:
    if axis is not None:
      _normalize_axis(
          axis,
          np.ndim(leaf),
          f"leaf {_trees.path_string(path)} of shape {np.shape(leaf)}",
      )
  return flags


def _projection(
    name: str,
    project: Callable[[jax.Array, jax.Array], jax.Array],
    radius: jax.typing.ArrayLike,
    prunable: _trees.PrunablePredicate | None,
    axis: Axis | None,
) -> optax.GradientTransformationExtraArgs:
  """The transformation that projects ``params + updates`` with ``project``."""
  _checks.check_scalar_hyperparameter("radius", radius, positive=False)
  _check_prunable(prunable)
  if axis is not None:
    _check_axis_type(axis)

  def support(flags, params):
    return jax.tree.map(
        lambda flag, p: (jnp.asarray(p) != 0) if flag else None, flags, params
    )

  def init_fn(params):
    flags = _selected(params, prunable, name, axis)
    return ProjectionState(masks=support(flags, params))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    _checks.require_params(params, f"jaxprune.{name}")
    _trees.check_state_type(state, ProjectionState, f"jaxprune.{name}")
    _trees.check_same_shapes(params, updates, "the updates tree")
    flags = _selected(params, prunable, name, axis)
    _trees.check_same_structure(
        jax.tree.map(lambda flag, p: p if flag else None, flags, params),
        state.masks,
        "the masks in the optimizer state",
    )

    def step(flag, u, p):
      if not flag:
        return u
      dtype = _compute_dtype(p.dtype, u.dtype)
      p_c = p.astype(dtype)
      return (project(p_c + u.astype(dtype), radius) - p_c).astype(u.dtype)

    def applied(flag, u, p):  # what optax.apply_updates will make of p
      if not flag:
        return p
      dtype = _sum_dtype(p.dtype, u.dtype)
      return (p.astype(dtype) + u.astype(dtype)).astype(p.dtype)

    new_updates = jax.tree.map(step, flags, updates, params)
    after = jax.tree.map(applied, flags, new_updates, params)
    return new_updates, ProjectionState(masks=support(flags, after))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def project_l1(
    radius: jax.typing.ArrayLike,
    *,
    prunable: _trees.PrunablePredicate | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Projected gradient onto an l1 ball per leaf: unstructured sparsity.

  Each selected leaf ``w`` is kept in ``{w : sum |w_i| <= radius}`` by
  :func:`l1_ball_projection`, O(n) per leaf of n weights, without sorting.

  Use it last in a chain, ``optax.chain(inner, ...)``: it turns the inner
  updates ``u`` into ``P(p + u) - p`` for every selected leaf ``p``, so the
  params after ``optax.apply_updates`` are the projection ``P(p + u)``
  (exactly zero where the projection is zero; elsewhere up to one
  rounding of the subtraction and addition).  The other leaves keep the
  inner updates.  The projection is computed in float32 or wider and the
  updates keep their dtype.

  Every selected leaf is projected onto its own ball of radius ``radius``.
  For different radii per layer, chain one projection per set of leaves,
  e.g. ``optax.chain(inner, project(1.0, prunable=is_first),
  project(5.0, prunable=is_rest))`` (then call :func:`jaxprune.masks_of`
  on the part of the state you want).  ``radius`` may be injected with
  ``optax.inject_hyperparams``, including as a schedule of the step.

  NaN or inf in ``p + u`` (nothing can raise inside jit): the projection
  is not defined, and the leaf comes back with NaN in it, never
  finite-looking: all NaN for a NaN, NaN where the infinite weight (or,
  for the group projections, its group) was and 0 elsewhere for an inf.

  Zeros come from the projection alone, and a zeroed weight may come back
  at the next step.  Optimizers that move every weight by about the
  learning rate at every step (Adam and its relatives) refill the zeros,
  which the projection removes again only where its threshold exceeds that
  step: expect far fewer exact zeros after a few Adam steps than after SGD
  steps at the same radius.

  Args:
    radius: the radius of every leaf's ball, a scalar >= 0.
    prunable: ``(path, leaf) -> bool`` selecting the leaves to project; by
      default floating leaves with ``ndim >= 2`` (dense and conv kernels),
      as for :func:`jaxprune.prune`.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`ProjectionState` and whose ``update`` needs ``params``.

  Raises:
    ValueError: a radius that is not a scalar, negative or NaN; at ``init``
      or ``update``: a predicate that selects nothing; at ``update``: no
      params, updates or state that do not match the params.
    TypeError: a radius that is not a number, a ``prunable`` that is not
      callable; at ``init`` or ``update``: a selected leaf that is not real
      floating-point.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> import jaxprune
    >>> params = {'kernel': jnp.array([[2.0, -1.0], [0.5, 0.0]])}
    >>> tx = optax.chain(optax.sgd(1.0), jaxprune.project_l1(1.0))
    >>> grads = {'kernel': jnp.zeros((2, 2))}
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> optax.apply_updates(params, updates)['kernel']
    Array([[1., 0.],
           [0., 0.]], dtype=float32)
  """
  return _projection("project_l1", l1_ball_projection, radius, prunable, None)


def project_l21(
    radius: jax.typing.ArrayLike,
    *,
    axis: Axis = -1,
    prunable: _trees.PrunablePredicate | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Projected gradient onto an l2,1 (group lasso) ball per leaf.

  Each selected leaf ``w`` is kept in ``{w : sum_g ||w_g||_2 <= radius}``
  by :func:`l21_ball_projection`, where a group is a slice along ``axis``:
  with the default ``axis=-1`` the rows of a dense kernel ``(in, out)``,
  so whole input features vanish.  O(n + G) per leaf of n weights in G
  groups.

  It is used like :func:`project_l1`: last in a chain, one ball of radius
  ``radius`` per selected leaf, ``radius`` injectable; see there how
  optimizers like Adam refill the zeros between projections.

  Args:
    radius: the radius of every leaf's ball, a scalar >= 0.
    axis: the axis, or tuple of axes, that a group spans; it must be valid
      for every selected leaf (``axis=(0, 1, 3)`` makes the input channels
      of conv kernels ``(h, w, in, out)`` the groups).
    prunable: ``(path, leaf) -> bool`` selecting the leaves to project; by
      default floating leaves with ``ndim >= 2`` (dense and conv kernels).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`ProjectionState` and whose ``update`` needs ``params``.

  Raises:
    ValueError: a radius that is not a scalar, negative or NaN; at ``init``
      or ``update``: a predicate that selects nothing, an ``axis`` out of
      range for a selected leaf; at ``update``: no params, updates or state
      that do not match the params.
    TypeError: a radius that is not a number, an ``axis`` that is not an
      int or a tuple of ints, a ``prunable`` that is not callable; at
      ``init`` or ``update``: a selected leaf that is not real
      floating-point.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> import jaxprune
    >>> params = {'kernel': jnp.array([[3.0, 4.0], [0.3, 0.4]])}
    >>> tx = optax.chain(optax.sgd(1.0), jaxprune.project_l21(2.5))
    >>> grads = {'kernel': jnp.zeros((2, 2))}
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> optax.apply_updates(params, updates)['kernel']  # row 2 is removed
    Array([[1.5, 2. ],
           [0. , 0. ]], dtype=float32)
  """
  return _projection(
      "project_l21",
      lambda x, r: l21_ball_projection(x, r, axis),
      radius,
      prunable,
      axis,
  )


def project_l11(
    radius: jax.typing.ArrayLike,
    *,
    axis: Axis = -1,
    prunable: _trees.PrunablePredicate | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Barlaud and Guyard's projected gradient with the bilevel l1,1 operator.

  Each selected leaf is mapped by :func:`l11_ball_projection` into its l1
  ball of radius ``radius``, whole groups (slices along ``axis``; by
  default the rows of a dense kernel ``(in, out)``: input features)
  removed first.  This is the authors' structured l1,1 constraint; it is
  not the Euclidean projection onto that ball, which is
  :func:`project_l1` (see :func:`l11_ball_projection`).  O(n) per leaf of
  n weights (31 passes over them, for float32).

  It is used like :func:`project_l1`: last in a chain, one ball of radius
  ``radius`` per selected leaf, ``radius`` injectable; see there how
  optimizers like Adam refill the zeros between projections.

  Args:
    radius: the radius of every leaf's ball, a scalar >= 0.
    axis: the axis, or tuple of axes, that a group spans; it must be valid
      for every selected leaf.
    prunable: ``(path, leaf) -> bool`` selecting the leaves to project; by
      default floating leaves with ``ndim >= 2`` (dense and conv kernels).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`ProjectionState` and whose ``update`` needs ``params``.

  Raises:
    ValueError: a radius that is not a scalar, negative or NaN; at ``init``
      or ``update``: a predicate that selects nothing, an ``axis`` out of
      range for a selected leaf; at ``update``: no params, updates or state
      that do not match the params.
    TypeError: a radius that is not a number, an ``axis`` that is not an
      int or a tuple of ints, a ``prunable`` that is not callable; at
      ``init`` or ``update``: a selected leaf that is not real
      floating-point.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> import jaxprune
    >>> params = {'kernel': jnp.array([[3.0, -2.0], [0.0, 3.0]])}
    >>> tx = optax.chain(optax.sgd(1.0), jaxprune.project_l11(2.0))
    >>> grads = {'kernel': jnp.zeros((2, 2))}
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> optax.apply_updates(params, updates)['kernel']
    Array([[ 1.5, -0.5],
           [ 0. ,  0. ]], dtype=float32)
  """
  return _projection(
      "project_l11",
      lambda x, r: l11_ball_projection(x, r, axis),
      radius,
      prunable,
      axis,
  )
