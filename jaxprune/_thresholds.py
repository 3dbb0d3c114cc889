"""Exact, sort-free soft thresholds: the searches behind the ball projections.

The projections of :mod:`jaxprune._balls` shrink magnitudes ``a`` by the
soft threshold ``tau >= 0`` with ``sum(max(a - tau, 0)) == radius`` (per
row, for the groups of the l1,1 projection).  :func:`rows_threshold`
finds it exactly, with static shapes (jit-friendly), and without sorting:
the bits of a non-negative float, read as an integer, keep its order, so
the soft threshold is found by a search over those bits, then refined by
one exact pass (:func:`refined_threshold`).  A long vector (an l1 leaf of
at least 8192 weights, or as many group norms) is searched by a radix
search (:func:`radix_search`), two or three passes of scatter-add
histograms over it; shorter ones, and the G thresholds inside the groups
of the l1,1 operator, all at once, by a bisection over the 31 bits of
the float32 keys (:func:`bisection`), 31 compare-and-sum passes.  Both
run in place, without reshaping a leaf, so a sharded leaf is projected
where it lies: only sums and histograms are all-reduced between the
devices.  For a leaf of n weights in G groups: O(n) for l1, O(n + G) for
l2,1 and l1,1.  (A sort costs O(n log n), and XLA's sort is slow on CPU:
with it, an Adam step projected onto the l1 ball took 27 times a plain
step on LeNet-300-100.)

Example:
  >>> import jax.numpy as jnp
  >>> from jaxprune import _thresholds
  >>> a = jnp.array([[3.0, 1.5, 0.5]])  # one row, l1 norm 5
  >>> tau = _thresholds.rows_threshold(a, jnp.array([[2.0]]), (0, 1))
  >>> tau  # 1.75 + 0.25 + 0 == 2
  Array([[1.25]], dtype=float32)
  >>> _thresholds.soft_threshold(jnp.array([3.0, -1.5, 0.5]), tau[0, 0])
  Array([ 1.75, -0.25,  0.  ], dtype=float32)

References:
  Condat, "Fast projection onto the simplex and the l1 ball", Mathematical
  Programming 158, 2016.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxprune import _sharding

# The thresholds are found without sorting, by one of two searches over
# the keys of the magnitudes (see rows_threshold).  Measured with XLA on
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


def row_sum(x: jax.Array, axes: tuple[int, ...], dtype=None) -> jax.Array:
  """Sums of ``x`` over each row, with the row's axes kept at size 1."""
  return jnp.sum(x, axis=axes, keepdims=True, dtype=dtype)


def radix_search(
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


def bisection(
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
    total = row_sum(jnp.where(above, a, jnp.zeros_like(a)), axes)
    count = row_sum(above, axes, count_dtype)
    below = _below(candidate, a.dtype)
    positive = (count > 0) & (
        total - count.astype(a.dtype) * below - radius > 0)
    return jax.tree.map(
        lambda new, old: jnp.where(positive, new, old),
        _Search(candidate, total, count), search)

  total = row_sum(a, axes)
  n = a.size // total.size
  # zeros_like and full_like keep the sharding of the row sums, as the
  # loop's carry must.
  everything = _Search(
      jnp.zeros_like(total, dtype=key_dtype),
      total,
      jnp.full_like(total, n, dtype=count_dtype),
  )
  return jax.lax.fori_loop(0, key_bits, step, everything)


def rows_threshold(
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
  radix search, 11 or 16 bits of the keys a pass (``radix_search``): 2
  or 3 passes for float32; otherwise (short rows, and the groups of the
  l1,1 projection, all at once), a bisection, a bit a pass
  (``bisection``): 31 passes for float32.
  """
  one_long_row = len(axes) == a.ndim and a.size >= _RADIX_MIN_ROW
  return refined_threshold(
      radix_search if one_long_row else bisection, a, radius, axes)


def refined_threshold(
    search: Callable[..., _Search],
    a: jax.Array,
    radius: jax.Array,
    axes: tuple[int, ...],
) -> jax.Array:
  """:func:`rows_threshold` with the support found by ``search``.

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
  total = row_sum(jnp.where(above, a, jnp.zeros_like(a)), axes)
  count = row_sum(above, axes, count_dtype)
  refined = (total - radius) / jnp.maximum(count, 1).astype(a.dtype)
  tau = jnp.maximum(jnp.where(count > 0, refined, first), 0)
  outside = row_sum(a, axes) - radius
  tau = jnp.where(outside > 0, tau, jnp.zeros_like(tau))
  invalid = jnp.isnan(outside) | (radius < 0)
  return jnp.where(invalid, jnp.asarray(jnp.nan, a.dtype), tau)


def soft_threshold(x: jax.Array, tau: jax.Array) -> jax.Array:
  """``sign(x) * max(|x| - tau, 0)``; exactly ``x`` where ``tau == 0``."""
  return x - jnp.clip(x, -tau, tau)
