"""Weight sharing by k-means: per layer, ``2**bits`` shared values
(centroids) found by Lloyd's algorithm over the surviving weights only.

Deep Compression (Han, Mao and Dally 2016, section 3) clusters the kept
weights of each layer into ``k = 2**bits`` clusters, stores for every kept
weight only the index of its cluster, and for the layer one table (the
codebook) of the ``k`` centroids.  Pruned weights take no part: they are no
point of any cluster, stay exactly zero, and are marked by the mask.

Lloyd's algorithm here (:func:`kmeans`), in one dimension, jittable:

1. assign every kept weight to its nearest centroid (``argmin |w - c|``;
   on a tie, the lower index);
2. move every centroid to the mean of its weights; a centroid with no
   weight (an *empty cluster*) keeps its value;
3. assign again; stop after ``iterations`` rounds, or earlier, when no
   assignment changed.

The indices returned are always the nearest centroids of the centroids
returned.  Three initialisations, as Han et al. compare them (section 3.1;
linear is the one they found best, since it keeps the rare large weights):

- ``"linear"``: ``k`` values evenly spaced from the smallest to the largest
  kept weight, both included;
- ``"density"``: the quantiles of the kept weights at probabilities
  ``(i + 0.5) / k``, ``i = 0..k-1``, interpolated linearly between order
  statistics (numpy's default ``np.quantile`` rule);
- ``"random"`` (Forgy): ``k`` kept weights drawn without replacement with
  the ``key`` given (where fewer than ``k`` weights are kept, every kept
  weight is drawn and the rest repeat the smallest), sorted.

Every initialisation gives sorted centroids, and Lloyd's algorithm in one
dimension keeps them sorted, so the codebooks come out in increasing order.

References:
  Han, Mao and Dally, "Deep Compression: Compressing Deep Neural Networks
  with Pruning, Trained Quantization and Huffman Coding", ICLR 2016,
  https://arxiv.org/abs/1510.00149
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune import _nested
from jaxprune import _trees

INITS = ("linear", "density", "random")
"""The names of the centroid initialisations: ``"linear"``, ``"density"``
and ``"random"``."""
MAX_BITS = 16
_DEFAULT_ITERATIONS = 100


class Codebook(NamedTuple):
  """One shared leaf: its centroids, and each weight's centroid index.

  A pytree of arrays, so it can be jitted over and held in an optimizer
  state.

  Attributes:
    centroids: float32 ``[2**bits]``, the shared values, increasing.
    indices: the leaf's shape, ``uint8`` (``bits <= 8``) or ``uint16``: the
      centroid of every kept weight; 0 at pruned weights (where it means
      nothing: read the mask).
    mask: bool, the leaf's shape: True where the weight is kept.
  """

  centroids: jax.Array
  indices: jax.Array
  mask: jax.Array

  @property
  def bits(self) -> int:
    """``log2`` of the number of centroids."""
    return int(self.centroids.shape[0]).bit_length() - 1

  def values(self, dtype: Any = jnp.float32) -> jax.Array:
    """The leaf: every kept weight its centroid, every pruned one +0.0."""
    shared = jnp.take(self.centroids, self.indices.astype(jnp.int32))
    return jnp.where(self.mask, shared, jnp.zeros((), shared.dtype)).astype(dtype)


class SharedWeights(NamedTuple):
  """Params whose masked (or selected) leaves share a codebook each: what
  :func:`codebooks` returns.

  Attributes:
    codebooks: nested dicts with the nesting of the params: a
      :class:`Codebook` at every shared leaf, ``None`` at the others.
    params: the params as given (plain nested dicts for Flax NNX): the
      values of the leaves that are not shared, and each leaf's dtype.
  """

  codebooks: Any
  params: Any


def index_dtype(bits: int) -> np.dtype:
  """``uint8`` for up to 8 bits, ``uint16`` for up to 16.

  Example:
    >>> from jaxprune import sharing
    >>> sharing.index_dtype(5), sharing.index_dtype(12)
    (dtype('uint8'), dtype('uint16'))
  """
  return np.dtype(np.uint8 if bits <= 8 else np.uint16)


def _assign(values: jax.Array, centroids: jax.Array) -> jax.Array:
  """The nearest centroid of every value, the lower index on ties."""
  distances = jnp.abs(values[:, None] - centroids[None, :])
  return jnp.argmin(distances, axis=1).astype(jnp.int32)


def _means(values, mask, assignments, centroids):
  """Every centroid moved to the mean of its kept values; empty ones stay."""
  k = centroids.shape[0]
  weight = mask.astype(values.dtype)
  sums = jax.ops.segment_sum(values * weight, assignments, num_segments=k)
  counts = jax.ops.segment_sum(weight, assignments, num_segments=k)
  return jnp.where(counts > 0, sums / jnp.maximum(counts, 1), centroids)


@functools.partial(jax.jit, static_argnames="iterations")
def _lloyd(values, mask, centroids, iterations):
  values = values.reshape(-1).astype(jnp.float32)
  mask = mask.reshape(-1)
  centroids = centroids.astype(jnp.float32)
  first = _assign(values, centroids)

  def changed(carry):
    i, _, _, moved = carry
    return (i < iterations) & moved

  def step(carry):
    i, centroids, assignments, _ = carry
    centroids = _means(values, mask, assignments, centroids)
    again = _assign(values, centroids)
    moved = jnp.any((again != assignments) & mask)
    return i + 1, centroids, again, moved

  _, centroids, assignments, _ = jax.lax.while_loop(
      changed, step, (0, centroids, first, jnp.bool_(True)))
  return centroids, jnp.where(mask, assignments, 0)


def kmeans(values: jax.Array, mask: jax.Array, centroids: jax.Array, *,
           iterations: int = _DEFAULT_ITERATIONS) -> tuple[jax.Array, jax.Array]:
  """Lloyd's algorithm in one dimension over the kept ``values``.

  Jitted; pruned values are no point of any cluster.  See the module
  docstring for the steps and the rule for empty clusters.

  Example:
    Two clusters; the pruned 9.0 moves no centroid.

    >>> import jax.numpy as jnp
    >>> from jaxprune import sharing
    >>> values = jnp.array([0.0, 0.2, 0.9, 1.1, 9.0])
    >>> mask = jnp.array([True, True, True, True, False])
    >>> centroids, indices = sharing.kmeans(values, mask, jnp.array([0.0, 1.0]))
    >>> centroids.tolist(), indices.tolist()
    ([0.10000000149011612, 1.0], [0, 0, 1, 1, 0])

  Args:
    values: the weights, any shape (flattened).
    mask: bool, the shape of ``values``: True where kept.
    centroids: float ``[k]``, the initial centroids.
    iterations: the most rounds of means and assignments (``>= 0``).

  Returns:
    The centroids (float32 ``[k]``) and each value's centroid index
    (int32, flattened; 0 where pruned).
  """
  if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
    raise ValueError(
        f"jaxprune.sharing.kmeans: iterations must be an integer >= 0, got "
        f"{iterations!r}")
  return _lloyd(jnp.asarray(values), jnp.asarray(mask), jnp.asarray(centroids),
                iterations)


@functools.partial(jax.jit, static_argnames=("k", "init"))
def _initial(values, mask, k, init, key):
  values = values.reshape(-1).astype(jnp.float32)
  mask = mask.reshape(-1)
  kept = jnp.sum(mask)
  any_kept = kept > 0
  fraction = jnp.arange(k, dtype=jnp.float32) / max(k - 1, 1)
  if init == "linear":
    lo = jnp.where(any_kept, jnp.min(jnp.where(mask, values, jnp.inf)), 0.0)
    hi = jnp.where(any_kept, jnp.max(jnp.where(mask, values, -jnp.inf)), 0.0)
    return lo + (hi - lo) * fraction
  ordered = jnp.sort(jnp.where(mask, values, jnp.inf))  # kept ones first
  if init == "density":
    probability = (jnp.arange(k, dtype=jnp.float32) + 0.5) / k
    position = probability * (jnp.maximum(kept, 1) - 1).astype(jnp.float32)
    below = jnp.floor(position).astype(jnp.int32)
    above = jnp.minimum(below + 1, jnp.maximum(kept, 1) - 1)
    low, high = ordered[below], ordered[above]
    quantiles = low + (high - low) * (position - below.astype(jnp.float32))
    return jnp.where(any_kept, quantiles, 0.0)
  # random (Forgy): k kept weights drawn without replacement (Gumbel top-k).
  scores = jnp.where(mask, jax.random.uniform(key, values.shape), -1.0)
  _, chosen = jax.lax.top_k(scores, min(k, values.shape[0]))
  picked = jnp.where(mask[chosen], values[chosen], jnp.inf)
  picked = jnp.concatenate([picked, jnp.full(k - picked.shape[0], jnp.inf)])
  picked = jnp.sort(picked)
  smallest = jnp.where(any_kept, picked[0], 0.0)
  return jnp.sort(jnp.where(jnp.isfinite(picked), picked, smallest))


def initial_centroids(values: jax.Array, mask: jax.Array, bits: int,
                      init: str = "linear", *, key: jax.Array | None = None
                      ) -> jax.Array:
  """The ``2**bits`` initial centroids of ``init`` for the kept ``values``.

  A leaf that keeps nothing gets centroids 0.0.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxprune import sharing
    >>> values = jnp.array([-1.0, 0.0, 5.0, 2.0])
    >>> mask = jnp.array([True, True, False, True])
    >>> sharing.initial_centroids(values, mask, 2).tolist()
    [-1.0, 0.0, 1.0, 2.0]
    >>> sharing.initial_centroids(values, mask, 1, "density").tolist()
    [-0.5, 1.0]

  Args:
    values: the weights, any shape.
    mask: bool, the shape of ``values``: True where kept.
    bits: ``1..16``; ``2**bits`` centroids.
    init: ``"linear"``, ``"density"`` or ``"random"`` (module docstring).
    key: a PRNG key, for ``"random"`` only.

  Returns:
    float32 ``[2**bits]``, increasing.
  """
  caller = "jaxprune.sharing.initial_centroids"
  _check_bits(bits, caller, "the leaf")
  _check_init(init, key, caller)
  return _initial(jnp.asarray(values), jnp.asarray(mask), 2**bits, init,
                  jax.random.key(0) if key is None else key)


def _check_bits(bits: Any, caller: str, where: str) -> None:
  if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not (
      1 <= bits <= MAX_BITS):
    raise ValueError(
        f"{caller}: bits for {where} must be an integer from 1 to {MAX_BITS} "
        f"(2**bits centroids), got {bits!r}")


def _check_init(init: Any, key: Any, caller: str) -> None:
  if init not in INITS:
    raise ValueError(
        f"{caller}: unknown init {init!r}; the initialisations are "
        f"{', '.join(repr(i) for i in INITS)}")
  if init == "random" and key is None:
    raise ValueError(
        f"{caller}: init='random' draws its centroids from the kept weights "
        "and needs a PRNG key: pass key=jax.random.key(0)")
  if init != "random" and key is not None:
    raise ValueError(
        f"{caller}: a key is for init='random' only, got one with "
        f"init={init!r}")


Bits = int | Callable[[_nested.Path, Any], int]


def codebooks(params: Any, masks: Any, *, bits: Bits, init: str = "linear",
              iterations: int = _DEFAULT_ITERATIONS, key: jax.Array | None = None,
              prunable: _trees.PrunablePredicate | None = None) -> SharedWeights:
  """Per leaf, ``2**bits`` shared values by k-means over its kept weights.

  Example:
    Every kept weight becomes one of 4 values; the pruned one stays 0.

    >>> import jax.numpy as jnp
    >>> from jaxprune import sharing
    >>> params = {'w': jnp.array([[0.0, 0.25, 1.25], [2.0, 3.0, 7.0]]),
    ...           'b': jnp.ones(3)}
    >>> masks = {'w': jnp.array([[True, True, True], [True, True, False]]),
    ...          'b': None}
    >>> shared = sharing.codebooks(params, masks, bits=2)
    >>> book = shared.codebooks['w']
    >>> book.centroids.tolist(), book.indices.tolist()
    ([0.125, 1.25, 2.0, 3.0], [[0, 0, 1], [2, 3, 0]])
    >>> sharing.shared_params(shared)['w'].tolist()
    [[0.125, 0.125, 1.25], [2.0, 3.0, 0.0]]

  Args:
    params: nested dicts of arrays (Linen params), or Flax NNX params: an
      ``nnx.Module``, an ``nnx.State`` or its plain form.
    masks: the nesting of ``params`` with a boolean array (True = kept) or
      ``None`` at every leaf, as :func:`jaxprune.masks_of` and
      :func:`jaxprune.prune_once` return; or ``None`` for params that were
      not pruned.
    bits: the number of bits of a centroid index, ``1..16`` (``2**bits``
      centroids): one for every leaf, or a function ``(path, leaf) -> int``
      (Han et al. give conv layers 8 bits and dense layers 5).
    init: ``"linear"`` (Han et al.'s choice), ``"density"`` or
      ``"random"``; see :mod:`jaxprune.sharing`'s k-means section.
    iterations: the most rounds of Lloyd's algorithm per leaf; it stops
      earlier once no assignment changes.
    key: a PRNG key for ``init="random"``, split into one per shared leaf
      (``jax.random.split(key, count)``, in leaf order).
    prunable: which leaves share a codebook, a ``(path, leaf) -> bool``
      predicate; ``None``: the masked leaves (with ``masks=None``, the
      floating leaves of 2 or more dimensions: the kernels).  A selected
      leaf without a mask keeps every weight; a masked leaf must be
      selected.

  Returns:
    A :class:`SharedWeights`.

  Raises:
    ValueError: bits out of range, an unknown init, a missing or needless
      key, masks that do not fit the params, or a masked leaf that
      ``prunable`` leaves out (each naming the leaf).
    TypeError: a mask that is not boolean, a shared leaf that is not
      floating-point.
  """
  caller = "jaxprune.sharing.codebooks"
  _check_init(init, key, caller)
  if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
    raise ValueError(f"{caller}: iterations must be an integer >= 0, got {iterations!r}")
  if masks is None:
    skeleton, flat = _nested.flatten(params, caller)
    leaves = [(path, leaf, None) for path, leaf in flat]
  else:
    skeleton, leaves = _nested.paired(params, masks, caller)
  chosen = []
  for path, leaf, mask in leaves:
    where = _trees.path_string(path)
    if prunable is not None:
      selected = prunable(path, leaf)
      if not isinstance(selected, (bool, np.bool_)):
        raise TypeError(
            f"{caller}: the prunable predicate returned {selected!r} for {where}; "
            "it must return True or False")
    elif masks is None:
      selected = _trees.default_prunable(path, leaf)
    else:
      selected = mask is not None
    if mask is not None and not selected:
      raise ValueError(
          f"{caller}: {where} is pruned (its mask is not None) but the prunable "
          "predicate leaves it out; every pruned leaf shares a codebook: select "
          "it, or give None as its mask")
    if selected and not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
      raise TypeError(
          f"{caller}: {where} has dtype {jnp.result_type(leaf)}; only "
          "floating-point leaves can share a codebook; leave it out with prunable")
    chosen.append(selected)
  keys = (jax.random.split(key, max(sum(chosen), 1)) if key is not None else None)
  books, used = [], 0
  for (path, leaf, mask), selected in zip(leaves, chosen):
    if not selected:
      books.append(None)
      continue
    leaf_bits = bits(path, leaf) if callable(bits) else bits
    where = _trees.path_string(path)
    _check_bits(leaf_bits, caller, where)
    values = jnp.asarray(leaf)
    kept = (jnp.ones(values.shape, jnp.bool_) if mask is None
            else jnp.asarray(mask))
    start = _initial(values, kept, 2**int(leaf_bits), init,
                     keys[used] if keys is not None else jax.random.key(0))
    used += 1
    centroids, assignments = _lloyd(values, kept, start, iterations)
    books.append(Codebook(
        centroids, assignments.reshape(values.shape).astype(index_dtype(leaf_bits)),
        kept))
  plain = _nested.unflatten(skeleton, [leaf for _, leaf, _ in leaves])
  return SharedWeights(_nested.unflatten(skeleton, books), plain)


def shared_params(shared: SharedWeights) -> Any:
  """The params with every kept weight replaced by its centroid and every
  pruned weight exactly 0.0; unshared leaves as they were.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxprune import sharing
    >>> params = {'w': jnp.array([[1.0, 2.0], [3.0, 10.0]])}
    >>> masks = {'w': jnp.array([[True, True], [True, False]])}
    >>> sharing.shared_params(sharing.codebooks(params, masks, bits=1))['w'].tolist()
    [[1.5, 1.5], [3.0, 0.0]]

  Args:
    shared: what :func:`codebooks` (or
      :func:`jaxprune.sharing.decompress`) returns.

  Returns:
    Nested dicts of JAX arrays, each leaf of its dtype in
    ``shared.params`` (for Flax NNX, the plain form of the state).
  """
  def leaf(book, value):
    if book is None:
      return jnp.asarray(value)
    return book.values(jnp.result_type(value))

  return jax.tree.map(leaf, shared.codebooks, shared.params,
                      is_leaf=lambda x: x is None or isinstance(x, Codebook))
