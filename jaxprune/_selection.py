"""Exact top-k selection over groups of arrays, by counting instead of sorting.

A mask update has to keep exactly ``k`` weights per group (all prunable
weights for global ranking, one tensor for layerwise ranking), with ties
broken deterministically by flat index, inside jit, for groups of up to
hundreds of millions of weights.  Sorting that many scores is slow and, when
the weights are sharded, needs them gathered on one device.

Instead, every score is mapped to a ``uint32`` key whose integer order is the
score's order, and the k-th largest key is found by a radix search in two
passes over the weights: a histogram of the keys' high 16 bits finds the bin
that holds the k-th key, and a histogram of the low 16 bits of the keys in
that bin finds the key itself, with exact counts above and at it.  Each pass
is one scatter-add into 65536 counters (under sharding, a local histogram and
an all-reduce of it; on a single CPU device, one chunk of the keys at a time,
so that the scratch does not grow with the weights).  When the threshold
value is shared by more weights than there are places left (at 100M float32
scores, a few weights share almost every value, so this is the common case
there), the tied weights are kept from the lowest flat index: a few places
are found by one pass per place that takes the next tied index (a minimum),
many by the same two-pass radix search over the tied weights' indices.
Every pass after the first is a trip of one loop, so each source of keys is
traced twice whatever the number of passes (compile time grows with the
traced code).
On a single device, consecutive small arrays of a group are read as one run
(their keys laid end to end, at most one chunk), so that the compiled passes
do not grow with the number of kernels.

Example:
  >>> import jax.numpy as jnp
  >>> from jaxprune import _selection
  >>> keys = [_selection.ranking_keys(jnp.array([0.3, 0.1, 0.3, 0.2]),
  ...                                 jnp.ones(4, bool))]
  >>> selection = _selection.keep_top_k(keys, group_ids=(0,),
  ...                                  group_sizes=(4,), k=jnp.array([2]))
  >>> selection.kept[0].tolist()
  [True, False, True, False]
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxprune import _sharding

_SIGN_BIT = 0x80000000
# Pruned weights get key 0, below every surviving weight (the key of -inf is
# 0x007FFFFF), so a pruned weight never wins a place back.
PRUNED_KEY = 0
# NaN scores get a key between the two, alone in its bin of the threshold
# search's first histogram (no float maps there: the keys 0x0001xxxx belong to
# negative NaN bit patterns), so that histogram also counts them.
NAN_KEY = 0x00010000
# Strictly above the key of +inf: a weight given this key is always kept.
FORCED_KEY = 0xFFFFFFFF


def ranking_keys(scores: jax.Array, alive: jax.Array) -> jax.Array:
  """Maps scores to ``uint32`` keys whose integer order is the ranking order.

  Surviving weights (``alive``) are ranked by score, as float32; NaN scores
  get :data:`NAN_KEY`, below every real score (``-inf`` included), so a NaN
  never wins a place over a number.  ``-0.0`` ranks equal to ``0.0``.
  Weights that are not alive get key 0 and rank below everything.

  Args:
    scores: floating array.
    alive: boolean array of the same shape.

  Returns:
    A ``uint32`` array of the same shape.
  """
  x = scores.astype(jnp.float32)
  x = jnp.where(x == 0, jnp.zeros_like(x), x)  # -0.0 -> +0.0
  bits = lax.bitcast_convert_type(x, jnp.uint32)
  negative = (bits >> 31) == 1
  keys = jnp.where(negative, ~bits, bits | jnp.uint32(_SIGN_BIT))
  keys = jnp.where(jnp.isnan(x), jnp.uint32(NAN_KEY), keys)
  return jnp.where(alive, keys, jnp.uint32(PRUNED_KEY))


def scores_of_keys(keys: jax.Array) -> jax.Array:
  """The float32 scores whose :func:`ranking_keys` are ``keys``: the
  inverse map (NaN for :data:`NAN_KEY`; meaningless for pruned weights)."""
  keys = jnp.asarray(keys, jnp.uint32)
  positive = (keys >> 31) == 1
  bits = jnp.where(positive, keys & jnp.uint32(~_SIGN_BIT & 0xFFFFFFFF), ~keys)
  scores = lax.bitcast_convert_type(bits, jnp.float32)
  return jnp.where(keys == NAN_KEY, jnp.float32(jnp.nan), scores)


# The threshold search reads the 32-bit keys 16 bits at a time.
_RADIX_BITS = 16
_RADIX_BINS = 1 << _RADIX_BITS

# On a single CPU device the passes over the keys go through them in chunks
# of this many elements, so that the scratch arrays of a pass (the bins of a
# chunk and the ones they add) are this size rather than the keys' size: the
# whole step's temporary arena then stays small enough for the allocator to
# reuse it, where a large one is mapped afresh, and page-faulted again, at
# every execution (benchmarks/page_faults.py).
_CHUNK = 1 << 18

# Ties at the threshold with at most this many places left are broken by
# successive minima rather than by a radix search over their indices.
_FEW_PLACES = 4
# The trips of the threshold search after the first pass (see _cut).
_MINIMUM_TRIP = 5
_DONE = 4


class LazyKeys(NamedTuple):
  """Ranking keys computed where each pass needs them: ``fn(*arrays)``.

  ``fn`` must be elementwise over ``arrays`` (all of one shape), so that the
  keys of a slice of the arrays are ``fn`` of their slices: the selection
  then never holds the keys (or the scores they come from) of all the
  weights at once.

  Example:
    >>> import jax.numpy as jnp
    >>> w, alive = jnp.array([0.5, -2.0]), jnp.array([True, True])
    >>> keys = LazyKeys(lambda w, m: ranking_keys(jnp.abs(w), m), (w, alive))
    >>> keep_top_k([keys], (0,), (2,), jnp.array([1])).kept[0].tolist()
    [False, True]
  """

  fn: Callable[..., jax.Array]
  arrays: tuple[jax.Array, ...]

  @property
  def size(self) -> int:
    return self.arrays[0].size

  def computed(self) -> jax.Array:
    """The keys of all the elements."""
    return self.fn(*self.arrays)


def _lazy(keys: jax.Array | LazyKeys) -> LazyKeys:
  if isinstance(keys, LazyKeys):
    shapes = {jnp.shape(x) for x in keys.arrays}
    if len(shapes) != 1:
      raise ValueError(f"LazyKeys needs arrays of one shape, got {sorted(shapes)}")
    return keys
  return LazyKeys(lambda k: k, (keys,))


def _chunk_size(arrays: Sequence[jax.Array]) -> int | None:
  """The chunk length of the passes over ``arrays``; None: all at once.

  Chunks are cut from the flattened arrays with dynamic slices, which would
  gather a sharded array, so only arrays on a single CPU device are cut
  (other backends pool their memory and gain nothing from it).
  """
  single_cpu = jax.device_count() == 1 and jax.default_backend() == "cpu"
  sharded = any(_sharding.explicit_axes(x) for x in arrays)
  size = arrays[0].size
  if single_cpu and not sharded and size > _CHUNK:
    # Chunks of nearly equal length: the last one, cut to end at the
    # array's end, then repeats few elements (chunks of _CHUNK would repeat
    # up to a whole chunk in every pass).  A length of a multiple of 128:
    # an odd one made each pass twice as slow at 1M weights.
    chunks = -(-size // _CHUNK)
    return min(_CHUNK, -(-size // (chunks * 128)) * 128)
  return None


class _Part(NamedTuple):
  """A run of consecutive elements of one key array: its ``keys``, and where
  they lie: the whole array (``start`` None, any shape, possibly sharded) or
  a flat chunk from ``start``, whose elements before ``new_from`` an earlier
  chunk has already counted (the last chunk of an array is cut to end at
  the array's end, overlapping the one before it)."""

  keys: jax.Array
  start: jax.Array | int | None
  new_from: jax.Array | int | None = None

  def uncounted(self, bins: jax.Array) -> jax.Array:
    """``bins`` with the bin ``_RADIX_BINS`` (not counted) for the elements
    that an earlier part has counted."""
    if self.new_from is None:
      return bins
    fresh = self.index() >= self.new_from
    return jnp.where(fresh, bins, jnp.asarray(_RADIX_BINS, bins.dtype))

  def index(self, offset: int = 0) -> jax.Array:
    """``offset`` plus each element's row-major position in its array."""
    if self.start is None:
      return flat_index(self.keys, offset)
    return (offset + self.start
            + lax.broadcasted_iota(jnp.int32, self.keys.shape, 0))


class _Concatenated(NamedTuple):
  """The keys of several arrays, flattened and laid end to end."""

  parts: tuple[LazyKeys, ...]

  @property
  def size(self) -> int:
    return sum(part.size for part in self.parts)

  def computed(self) -> jax.Array:
    return jnp.concatenate([part.computed().reshape(-1) for part in self.parts])


class _Source(NamedTuple):
  """Keys that every pass reads as one run: one array, or several small
  arrays of one group, consecutive in the group's order, laid end to end.

  Each pass costs compiled code per source, so gathering the small arrays
  of a network (the many kernels of a ResNet) into a few sources keeps the
  compiled selection about the same size whatever the number of arrays.
  """

  keys: LazyKeys | _Concatenated
  group: int
  offset: int  # the flat index, within the group, of the first element
  members: tuple[tuple[int, int, int], ...]  # (array, start in the run, size)


def _sources(keys: Sequence[LazyKeys], group_ids: Sequence[int],
             offsets: Sequence[int]) -> list[_Source]:
  """The arrays as sources: on a single device, consecutive arrays of a
  group that together hold at most ``_CHUNK`` elements share one (a
  concatenation of at most one chunk adds no large scratch); on several
  devices each array is its own, since concatenating sharded arrays would
  gather them."""
  runs: list[list[int]] = []
  open_run: dict[int, list[int]] = {}  # per group, the run still growing
  single_device = jax.device_count() == 1
  for j, (key, g) in enumerate(zip(keys, group_ids)):
    run = open_run.get(g)
    small = single_device and key.size <= _CHUNK
    fits = (run is not None
            and sum(keys[i].size for i in run) + key.size <= _CHUNK)
    if small and fits:
      run.append(j)
      continue
    runs.append([j])
    open_run[g] = runs[-1] if small else None
  sources = []
  for run in runs:
    members, start = [], 0
    for j in run:
      members.append((j, start, keys[j].size))
      start += keys[j].size
    source_keys = keys[run[0]] if len(run) == 1 else _Concatenated(
        tuple(keys[j] for j in run))
    sources.append(_Source(source_keys, group_ids[run[0]], offsets[run[0]],
                           tuple(members)))
  return sources


def _fold(keys: LazyKeys | _Concatenated, fn: Callable, acc):
  """``acc = fn(acc, part)`` over the parts of ``keys``, in order: the whole
  array, or its chunks (see :func:`_chunk_size`) in a loop."""
  if keys.size == 0:
    return acc
  size = _chunk_size(keys.arrays) if isinstance(keys, LazyKeys) else None
  if size is None:
    return fn(acc, _Part(keys.computed(), None))
  flat = [x.reshape(-1) for x in keys.arrays]
  chunks = -(-keys.size // size)

  # One traced body for every chunk, the last one included: it ends at the
  # array's end and overlaps the one before, whose elements it marks as
  # counted (a remainder chunk of its own would trace the pass twice).
  def body(i, acc):
    new_from = i * size
    start = jnp.minimum(new_from, keys.size - size)
    chunk = keys.fn(*(lax.dynamic_slice_in_dim(x, start, size) for x in flat))
    return fn(acc, _Part(chunk, start, new_from))

  return lax.fori_loop(0, chunks, body, acc)


def _add_counts(histogram: jax.Array, bins: jax.Array) -> jax.Array:
  """``histogram`` plus the counts of ``bins`` (a bin of ``_RADIX_BINS`` is
  not counted); sharded ``bins`` are counted where they lie (see
  :func:`jaxprune._sharding.bin_sums`)."""
  return _sharding.bin_sums(bins, None, _RADIX_BINS, jnp.int32,
                            initial=histogram)


def _low_bins(values: jax.Array, high: jax.Array) -> jax.Array:
  """The low 16 bits of the ``values`` whose high bits equal ``high``; the
  uncounted bin ``_RADIX_BINS`` for the others (the second pass of a radix
  search)."""
  return jnp.where((values >> _RADIX_BITS) == high,
                   values & (_RADIX_BINS - 1), _RADIX_BINS)


def _highest_bin_reaching(
    histograms: jax.Array, above: jax.Array, k: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The highest bin ``b`` with ``above + count(bins >= b) >= k``, per group.

  Returns ``b``, the count in ``b`` and the count in the bins above ``b``
  (plus ``above``).  ``above < k`` or ``k == 0`` is assumed of the callers:
  with ``k == 0`` the answer is the top bin.
  """
  at_or_above = above[:, None] + jnp.cumsum(histograms[:, ::-1], axis=1)[:, ::-1]
  b = jnp.sum(at_or_above >= k[:, None], axis=1, dtype=jnp.int32) - 1
  b = jnp.maximum(b, 0)
  in_b = jnp.take_along_axis(histograms, b[:, None], axis=1)[:, 0]
  reaching = jnp.take_along_axis(at_or_above, b[:, None], axis=1)[:, 0]
  return b, in_b, reaching - in_b


class Selection(NamedTuple):
  """What :func:`keep_top_k` returns.

  Attributes:
    kept: one boolean array per key array, True where the element is kept.
    nan_counts: int32 vector, the number of keys equal to :data:`NAN_KEY`
      (surviving weights with a NaN score) in each group.
  """

  kept: list[jax.Array]
  nan_counts: jax.Array


class _Cut(NamedTuple):
  """Where a selection cuts: per group, an element is kept if its key is
  above ``threshold``, or equal to it at a flat index (within the group)
  below ``bound``; per array, the element at flat index ``forced`` (-1:
  none) counts as having the key :data:`FORCED_KEY`."""

  threshold: jax.Array  # uint32 [groups]
  bound: jax.Array  # int32 [groups]
  forced: jax.Array  # int32 [arrays]
  nan_counts: jax.Array  # int32 [groups]


def keep_top_k(
    keys: Sequence[jax.Array],
    group_ids: Sequence[int],
    group_sizes: Sequence[int],
    k: jax.Array,
    keep_best: bool = False,
) -> Selection:
  """Keeps exactly the ``k[g]`` largest keys of every group ``g``.

  Ties are broken by flat index: within a group the arrays are laid end to
  end in the order given, and among equal keys the lower index is kept.

  With ``keep_best``, the best surviving element of every array (the first
  of its largest key, if above :data:`PRUNED_KEY`) is kept whatever its
  rank, and the remaining places go by rank: that element is given
  :data:`FORCED_KEY` (its first histogram corrected for it), so the
  threshold is searched once whether or not forcing changes the result.

  Args:
    keys: ``uint32`` arrays from :func:`ranking_keys` (any shapes), or
      :class:`LazyKeys` that compute them.
    group_ids: static group index of each array, in ``[0, len(group_sizes))``.
    group_sizes: static number of elements of each group; each below 2**31.
    k: int32 vector, the number of elements to keep in each group, each in
      ``[0, group_size]`` (at least the number of forced elements with
      ``keep_best``).
    keep_best: keep every array's best surviving element.

  Returns:
    A :class:`Selection`: the kept elements, and the NaN scores counted
    along the way.
  """
  group_ids = tuple(group_ids)
  keys = [_lazy(key) for key in keys]
  k = jnp.asarray(k, jnp.int32)
  offsets, running = [], [0] * len(group_sizes)
  for key, g in zip(keys, group_ids):
    offsets.append(running[g])
    running[g] += key.size
  sources = _sources(keys, group_ids, offsets)
  cut = _cut(sources, len(keys), group_sizes, k, keep_best)
  kept = []
  for j, key in enumerate(keys):
    g = group_ids[j]
    key = key.computed()
    index = flat_index(key, offsets[j])
    if keep_best:  # otherwise nothing is forced
      key = _with_forced(key, index, offsets[j] + cut.forced[j])
    tie_kept = (key == cut.threshold[g]) & (index < cut.bound[g])
    kept.append((key > cut.threshold[g]) | tie_kept)
  return Selection(kept, cut.nan_counts)


def _with_forced(keys: jax.Array, index: jax.Array,
                 forced: jax.Array) -> jax.Array:
  """``keys`` with the element whose ``index`` is ``forced`` given
  :data:`FORCED_KEY` (none if ``forced`` matches no index)."""
  return jnp.where(index == forced, jnp.uint32(FORCED_KEY), keys)


_NO_INDEX = jnp.iinfo(jnp.int32).max


def _lowest_index(where: jax.Array, index: jax.Array) -> jax.Array:
  """The lowest ``index`` (int32, of ``where``'s shape) at which ``where``
  holds; :data:`_NO_INDEX` if it holds nowhere."""
  return jnp.min(jnp.where(where, index, jnp.int32(_NO_INDEX)))


def flat_index(x: jax.Array, offset: int = 0) -> jax.Array:
  """``offset`` plus each element's row-major position in ``x``, as int32
  of ``x``'s shape, computed in place (see :func:`_sharding.flat_index`)."""
  return _sharding.flat_index(x.shape, jnp.int32, offset, like=x)


class _Moves(NamedTuple):
  """Count corrections, one per entry: ``weight`` added to the bin of the
  key ``keys`` at flat ``index`` in group ``group`` (all int32 or uint32
  vectors of one length)."""

  group: jax.Array
  keys: jax.Array
  index: jax.Array
  weight: jax.Array


def _cut(sources, num_arrays, group_sizes, k, keep_best: bool) -> _Cut:
  """The top-k cut over the ``sources`` of ``num_arrays`` arrays; with
  ``keep_best``, every array's first element holding its largest key (if
  above :data:`PRUNED_KEY`) is given :data:`FORCED_KEY`."""
  num_groups = len(group_sizes)
  forced = None  # int32 per array once the first pass has found them

  def keys_of(source: _Source, part: _Part) -> jax.Array:
    """The part's keys with the forced elements' keys :data:`FORCED_KEY`
    (for the minimum trips; the counting passes correct their counts
    instead, see ``moves``)."""
    if forced is None:
      return part.keys
    keys, index = part.keys, part.index()
    for j, start, _ in source.members:
      keys = _with_forced(keys, index, jnp.where(forced[j] >= 0,
                                                 start + forced[j], -1))
    return keys

  # The threshold t is the k-th largest key: the largest t with
  # count(key >= t) >= k.  Its high 16 bits come from a histogram of every
  # key's high bits, its low 16 bits from a histogram of the low bits of the
  # keys in t's high bin.
  high_histograms = [jnp.zeros((_RADIX_BINS,), jnp.int32)] * num_groups
  max_keys = [jnp.uint32(0)] * num_arrays
  first_max = [jnp.int32(0)] * num_arrays  # where each array's max first is
  for source in sources:

    def high_pass(acc, part, source=source):
      histogram, largest, first = acc
      chunk = part.keys  # unforced: the forced elements are known after it
      # Where the first maximum lies, as the lowest index holding it (two
      # plain reductions: XLA:CPU's argmax, a reduction of pairs, took a
      # quarter of a 4M mask update).
      if len(source.members) == 1:  # possibly in chunks
        maxima = (jnp.max(chunk),)
        lowest = lambda: _lowest_index(chunk == maxima[0], part.index())
        if part.start is None:  # whole, maybe sharded: no reshape (a gather)
          firsts = (lowest(),)
        else:  # a later chunk holds the first maximum only if it is larger
          firsts = (lax.cond(maxima[0] > largest[0], lowest,
                             lambda: first[0]),)
      else:  # read whole: each member's maximum from its slice
        slices = [chunk[start:start + size] for _, start, size in source.members]
        maxima = tuple(jnp.max(x, initial=0) for x in slices)
        # (small arrays: argmax costs little here, and compiles smaller)
        firsts = tuple(jnp.argmax(x).astype(jnp.int32) if x.size else
                       jnp.int32(0) for x in slices)
      # A later part holds the first maximum only if its maximum is larger.
      first = tuple(jnp.where(m > l, i, f)
                    for m, l, i, f in zip(maxima, largest, firsts, first))
      return (_add_counts(histogram, part.uncounted(chunk >> _RADIX_BITS)),
              tuple(map(jnp.maximum, largest, maxima)), first)

    g = source.group
    members = len(source.members)
    high_histograms[g], largest, first = _fold(
        source.keys, high_pass,
        (high_histograms[g], (jnp.uint32(0),) * members,
         (jnp.int32(0),) * members))
    for (j, _, _), key_max, index in zip(source.members, largest, first):
      max_keys[j], first_max[j] = key_max, index
  high_histograms = jnp.stack(high_histograms)
  nan_counts = high_histograms[:, NAN_KEY >> _RADIX_BITS]
  moves = None  # with keep_best, the forced elements' moves to FORCED_KEY
  if keep_best:
    # Each array's best survivor moves from its key's bin to the top bin;
    # one that was NaN is still counted as a NaN score.
    own = jnp.stack(max_keys)  # each array's largest key
    survived = own > PRUNED_KEY
    forced = jnp.where(survived, jnp.stack(first_max), -1)
    group_of, offset_of = [0] * num_arrays, [0] * num_arrays
    for source in sources:
      for j, start, _ in source.members:
        group_of[j], offset_of[j] = source.group, source.offset + start
    group_of = jnp.asarray(group_of, jnp.int32)
    moved = survived.astype(jnp.int32)
    high_histograms = high_histograms.at[
        group_of, own >> _RADIX_BITS].add(-moved)
    high_histograms = high_histograms.at[group_of, _RADIX_BINS - 1].add(moved)
    # The later passes count the keys as they are (comparing every element's
    # index with the forced ones made each pass a third slower) and make the
    # same move: each forced element's count is taken off under its own key
    # and added under FORCED_KEY.
    moves = _Moves(
        group=jnp.concatenate([group_of] * 2),
        keys=jnp.concatenate([own, jnp.full_like(own, FORCED_KEY)]),
        index=jnp.concatenate(
            [jnp.asarray(offset_of, jnp.int32) + forced] * 2),
        weight=jnp.concatenate([-moved, moved]))
  high, _, above_high = _highest_bin_reaching(
      high_histograms, jnp.zeros((num_groups,), jnp.int32), k)
  high = high.astype(jnp.uint32)

  def histograms(bins_of) -> jax.Array:
    """``[groups, bins]``: the counts of ``bins_of(group, keys, index)``
    over the parts of every source of each group (bin ``_RADIX_BINS``: not
    counted), the forced elements counted under :data:`FORCED_KEY`."""
    per_group = [jnp.zeros((_RADIX_BINS,), jnp.int32)] * num_groups
    for source in sources:
      g = source.group
      per_group[g] = _fold(
          source.keys,
          lambda h, part, source=source: _add_counts(h, part.uncounted(
              bins_of(source.group, part.keys, part.index(source.offset)))),
          per_group[g])
    counts = jnp.stack(per_group)
    if moves is None:
      return counts
    # One scatter for all groups: each move's bin, offset by its group's.
    bins = bins_of(moves.group, moves.keys, moves.index)
    flat_bins = jnp.where(bins < _RADIX_BINS, moves.group * _RADIX_BINS + bins,
                          num_groups * _RADIX_BINS)
    return _sharding.bin_sums(
        flat_bins, moves.weight, num_groups * _RADIX_BINS, jnp.int32,
        initial=counts.reshape(-1)).reshape(counts.shape)

  # The rest of the search is one pass per trip of a loop, traced once: trip
  # 1 finds the threshold's low 16 bits among the keys in its high bin.  If
  # the ties at the threshold do not all fit, the kept ones are those of
  # lowest flat index, and the search finds one past the last of them: with
  # at most _FEW_PLACES places left (the common case with float32 scores at
  # scale, where two or three weights share the threshold's value), by one
  # trip per place that takes the next tied index (a minimum, about a third
  # of a histogram pass); with more, by trips 2 and 3, the index 16 bits at a
  # time (a digit is counted as 0xFFFF - digit, so that the highest-bin
  # search finds the lowest).
  class Search(NamedTuple):
    trip: jax.Array  # int32: 1, 2, 3, _MINIMUM_TRIP, or _DONE
    threshold: jax.Array  # uint32 [groups]: high << 16 until trip 1 is done
    above: jax.Array  # int32 [groups]: counted above the bins searched
    wanted: jax.Array  # int32 [groups]: k, then the places left among ties
    index_high: jax.Array  # int32 [groups], the bound's high 16 bits
    bound: jax.Array  # int32 [groups]
    taken: jax.Array  # int32: the minimum trips made

  def bins(trip, search: Search, g, keys: jax.Array,
           index: jax.Array) -> jax.Array:
    """The bins of ``keys`` at flat ``index`` in group ``g`` (an int, or
    each key's group) on this trip; the keys as they are, unforced."""
    in_high_bin = _low_bins(keys, search.threshold[g] >> _RADIX_BITS)
    tied = keys == search.threshold[g]
    high_digit = index >> _RADIX_BITS
    low_digit = index & (_RADIX_BINS - 1)
    index_bins = jnp.where(
        tied & ((trip == 2) | (high_digit == search.index_high[g])),
        (_RADIX_BINS - 1) - jnp.where(trip == 2, high_digit, low_digit),
        _RADIX_BINS)
    return jnp.where(trip == 1, in_high_bin.astype(jnp.int32), index_bins)

  def radix_trip(search: Search) -> Search:
    counts = histograms(functools.partial(bins, search.trip, search))
    b, in_b, above_b = _highest_bin_reaching(counts, search.above,
                                             search.wanted)
    if_trip = lambda t, value, other: jnp.where(search.trip == t, value, other)
    # Trip 1: the threshold, and how many places are left among its ties.
    threshold = if_trip(1, search.threshold | b.astype(jnp.uint32),
                        search.threshold)
    places_left = search.wanted - above_b
    all_fit = jnp.all(places_left == in_b)
    few = jnp.max(places_left) <= _FEW_PLACES
    # Trips 2 and 3: the digits of the last tied index kept.
    digit = (_RADIX_BINS - 1) - b
    last_kept = (search.index_high << _RADIX_BITS) | digit
    bound = if_trip(1, jnp.where(all_fit | ~few, sizes, 0), if_trip(
        3, jnp.where(search.wanted > 0, last_kept + 1, 0), search.bound))
    after_first = jnp.where(all_fit, _DONE, jnp.where(few, _MINIMUM_TRIP, 2))
    next_trip = if_trip(1, after_first, if_trip(3, _DONE, search.trip + 1))
    return search._replace(
        trip=next_trip,
        threshold=threshold,
        above=if_trip(2, above_b, jnp.zeros_like(above_b)),
        wanted=if_trip(1, places_left, search.wanted),
        index_high=if_trip(2, digit, search.index_high),
        bound=bound,
    )

  def minimum_trip(search: Search) -> Search:
    lowest = [jnp.int32(_NO_INDEX)] * num_groups
    for source in sources:
      g = source.group

      def lowest_in(acc, part, source=source, g=g):
        index = part.index(source.offset)
        tied = ((keys_of(source, part) == search.threshold[g])
                & (index >= search.bound[g]))
        return jnp.minimum(acc, _lowest_index(tied, index))

      lowest[g] = _fold(source.keys, lowest_in, lowest[g])
    bound = jnp.where(search.taken < search.wanted, jnp.stack(lowest) + 1,
                      search.bound)
    taken = search.taken + 1
    return search._replace(
        trip=jnp.where(taken >= jnp.max(search.wanted), _DONE, _MINIMUM_TRIP),
        bound=bound, taken=taken)

  sizes = jnp.asarray(group_sizes, jnp.int32)
  search = lax.while_loop(
      lambda search: search.trip != _DONE,
      lambda search: lax.cond(search.trip == _MINIMUM_TRIP, minimum_trip,
                              radix_trip, search),
      Search(trip=jnp.int32(1), threshold=high << _RADIX_BITS,
             above=above_high, wanted=k,
             index_high=jnp.zeros((num_groups,), jnp.int32), bound=sizes,
             taken=jnp.int32(0)))
  threshold, bound = search.threshold, search.bound
  return _Cut(
      threshold=threshold,
      bound=bound,
      forced=(jnp.full((num_arrays,), -1, jnp.int32) if forced is None
              else forced),
      nan_counts=nan_counts,
  )
