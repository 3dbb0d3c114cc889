"""Centroid fine-tuning: the shared values trained, every kept weight held
on its centroid, as an optax transformation.

Deep Compression (Han, Mao and Dally 2016, section 3.2) fine-tunes a shared
network by training its centroids: the gradient of a centroid is the sum of
the gradients of the weights that share it, the optimizer steps the
centroids, and every weight takes its centroid's new value; the indices and
the pruning masks stay fixed.

:func:`fine_tune_centroids` wraps any optax transformation (``inner``),
which runs on the centroids and on the leaves that share no codebook (the
biases), with their gradients.  Its updates move every kept weight onto its
new centroid and keep pruned weights exactly 0.0, so ``optax.apply_updates``
(or ``nnx.Optimizer.update``) needs nothing more.

Exactness: every centroid moves by ``move = (old + step) - old`` (the inner
optimizer's step as float32 arithmetic can take it), becoming
``old + move``; every kept weight's update is ``(old - weight) + move``.
Where a kept weight equals its old centroid bit for bit (true from the start
when the params are :func:`jaxprune.sharing.shared_params`, and kept by
every step), that update is ``move`` itself, so ``weight + update`` is
computed as the new centroid is and equals it bit for bit (float32 params).
A weight that is off its centroid is moved onto it up to one rounding.
"""

from __future__ import annotations

from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxprune import _inspect
from jaxprune import _nested
from jaxprune import _nnx
from jaxprune import _sharding
from jaxprune import _sharing_kmeans
from jaxprune import _trees


@_inspect.register_mask_state
class FineTuneState(NamedTuple):
  """The state of :func:`fine_tune_centroids`.

  Shared leaves are numbered in the order of the params' leaves (JAX's
  order: dict keys sorted).

  Attributes:
    centroids: one float32 ``[2**bits]`` array per shared leaf.
    indices: each shared leaf's centroid indices (its shape, unsigned).
    masks: the masks, with the structure of the params (plain form):
      each shared leaf's mask (True = kept), ``None`` at the other leaves;
      :func:`jaxprune.masks_of` reads them.
    inner_state: the state of ``inner``, whose params are the pair
      ``(centroids, rest)``: the tuple of centroids and the tuple of the
      leaves that share no codebook.
  """

  centroids: tuple[jax.Array, ...]
  indices: tuple[jax.Array, ...]
  masks: Any
  inner_state: optax.OptState


def _book_paths(shared: _sharing_kmeans.SharedWeights, caller: str
                ) -> dict[_nested.Path, _sharing_kmeans.Codebook]:
  if not isinstance(shared, _sharing_kmeans.SharedWeights):
    raise TypeError(
        f"{caller}: shared must be the SharedWeights that "
        f"jaxprune.sharing.codebooks returns, got {type(shared).__name__}")
  books = {}

  def walk(node, path):
    if isinstance(node, _sharing_kmeans.Codebook):
      books[path] = node
    elif isinstance(node, dict):
      for key, value in node.items():
        walk(value, path + (key,))

  walk(shared.codebooks, ())
  return books


def _split(tree: Any, books: dict, caller: str, what: str):
  """The leaves of ``tree`` with their paths and treedef, and per leaf the
  index of its codebook in ``books`` (or None)."""
  flat, treedef = jax.tree_util.tree_flatten_with_path(
      _nnx.without_variables(tree))
  paths = [_trees.readable_path(path) for path, _ in flat]
  order = {path: i for i, path in enumerate(books)}
  slots = [order.get(path) for path in paths]
  missing = sorted(set(books) - set(paths), key=str)
  if missing:
    raise ValueError(
        f"{caller}: {what} have no leaf "
        f"{', '.join(_trees.path_string(p) for p in missing)}, which shares a "
        "codebook; give the params the codebooks were made for")
  return [leaf for _, leaf in flat], paths, slots, treedef


def _lookup(table: jax.Array, indices: jax.Array) -> jax.Array:
  """``table[indices]``, sharded as ``indices`` are."""
  if _sharding.explicit_axes(indices):
    return table.at[indices].get(out_sharding=jax.typeof(indices).sharding.spec)
  return jnp.take(table, indices)


def fine_tune_centroids(inner: optax.GradientTransformation,
                        shared: _sharing_kmeans.SharedWeights
                        ) -> optax.GradientTransformationExtraArgs:
  """Trains the centroids of ``shared`` with ``inner``; every kept weight
  follows its centroid, pruned weights stay 0.0.

  Example:
    Start from the shared params; after a step each kept weight is still
    exactly its centroid.

    >>> import jax, jax.numpy as jnp, optax
    >>> from jaxprune import sharing
    >>> params = {'w': jnp.array([[0.25, 0.75], [2.0, 5.0]]), 'b': jnp.zeros(2)}
    >>> masks = {'w': jnp.array([[True, True], [True, False]]), 'b': None}
    >>> shared = sharing.codebooks(params, masks, bits=1)
    >>> params = sharing.shared_params(shared)
    >>> shared.codebooks['w'].centroids.tolist()
    [0.5, 2.0]
    >>> tx = sharing.fine_tune_centroids(optax.sgd(0.125), shared)
    >>> state = tx.init(params)
    >>> grads = {'w': jnp.ones((2, 2)), 'b': jnp.ones(2)}
    >>> updates, state = tx.update(grads, state, params)
    >>> params = optax.apply_updates(params, updates)
    >>> state.centroids[0].tolist()  # 0.5 - 0.125 * 2 and 2.0 - 0.125 * 1
    [0.25, 1.875]
    >>> params['w'].tolist()
    [[0.25, 0.25], [1.875, 0.0]]

  Args:
    inner: the optimizer of the centroids and of the leaves that share no
      codebook; it gets the pair ``(centroids, rest)`` as its params.
    shared: what :func:`jaxprune.sharing.codebooks` returns.  The params
      given to ``init`` and ``update`` should be
      :func:`jaxprune.sharing.shared_params` of it (Linen params, an
      ``nnx.State`` or its plain form, as ``nnx.Optimizer`` passes them).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`FineTuneState` (extra arguments go to ``inner``).

  References:
    Han, Mao and Dally, "Deep Compression: Compressing Deep Neural Networks
    with Pruning, Trained Quantization and Huffman Coding", ICLR 2016,
    section 3.2, https://arxiv.org/abs/1510.00149
  """
  caller = "jaxprune.sharing.fine_tune_centroids"
  books = _book_paths(shared, caller)
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    leaves, paths, slots, treedef = _split(params, books, caller, "the params")
    for leaf, path, slot in zip(leaves, paths, slots):
      if slot is not None and jnp.shape(leaf) != books[path].indices.shape:
        raise ValueError(
            f"{caller}: {_trees.path_string(path)} has shape {jnp.shape(leaf)} "
            f"in the params but {books[path].indices.shape} in the codebooks")
    # The indices and masks live beside their weights (sharded as they are),
    # the centroids whole on each of their devices.
    placed = {path: leaf for leaf, path, slot in zip(leaves, paths, slots)
              if slot is not None}
    centroids = tuple(_sharding.replicated_like(b.centroids, placed[path])
                      for path, b in books.items())
    rest = tuple(leaf for leaf, slot in zip(leaves, slots) if slot is None)
    masks = _nnx.plain(jax.tree.unflatten(treedef, [
        None if slot is None
        else _sharding.placed_like(books[path].mask, placed[path])
        for path, slot in zip(paths, slots)]))
    indices = tuple(_sharding.placed_like(book.indices, placed[path])
                    for path, book in books.items())
    return FineTuneState(centroids, indices, masks, inner.init((centroids, rest)))

  def update_fn(updates, state, params=None, **extra_args):
    _trees.check_state_type(state, FineTuneState, caller)
    if params is None:
      raise ValueError(
          f"{caller}: update needs the params (tx.update(grads, state, params)): "
          "the weights are moved onto their centroids")
    grads, _, slots, treedef = _split(updates, books, caller, "the gradients")
    values = jax.tree.leaves(_nnx.without_variables(params))
    masks = jax.tree.leaves(state.masks, is_leaf=lambda m: m is None)
    k_grads = [None] * len(books)
    for grad, slot, mask in zip(grads, slots, masks, strict=True):
      if slot is not None:
        indices = state.indices[slot]
        kept = jnp.where(mask, grad, jnp.zeros_like(grad)).astype(jnp.float32)
        # A scatter-add over the kernel's own shape: no reshape, so a
        # sharded kernel is summed where its shards lie.
        # Under explicit sharding the sums come out whole on every device.
        whole = ({"out_sharding": jax.sharding.PartitionSpec()}
                 if _sharding.explicit_axes(kept) else {})
        k_grads[slot] = jnp.zeros_like(state.centroids[slot]).at[
            indices.astype(jnp.int32)].add(kept, **whole)
    rest = tuple(g for g, slot in zip(grads, slots) if slot is None)
    steps, inner_state = inner.update(
        (tuple(k_grads), rest), state.inner_state,
        (state.centroids, tuple(v for v, s in zip(values, slots) if s is None)),
        **extra_args)
    centroid_steps, rest_steps = steps
    proposed = optax.apply_updates(state.centroids, centroid_steps)
    # Each centroid moves by `move`, and so does each of its weights: the
    # new centroid is old + move, computed as apply_updates computes
    # weight + move.  (Adding the inner step itself would not do: XLA may
    # contract the step's last multiply and the centroid's add into one
    # fused multiply-add, rounded once, in one place and not the other.)
    moves = jax.tree.map(jnp.subtract, proposed, state.centroids)
    centroids = jax.tree.map(jnp.add, state.centroids, moves)
    out, rest_steps = [], list(rest_steps)
    for value, slot, mask in zip(values, slots, masks, strict=True):
      if slot is None:
        out.append(rest_steps.pop(0))
        continue
      indices = state.indices[slot].astype(jnp.int32)
      old = _lookup(state.centroids[slot], indices)
      step = _lookup(moves[slot], indices)
      value32 = value.astype(jnp.float32)
      # Zero where the weight is on its centroid: then weight + update is
      # centroid + step, computed as apply_updates computes the centroid.
      moved = (old - value32) + step
      out.append(jnp.where(mask, moved, -value32).astype(value.dtype))
    new_state = FineTuneState(centroids, state.indices, state.masks, inner_state)
    return jax.tree.unflatten(treedef, out), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def fine_tuned(shared: _sharing_kmeans.SharedWeights, state: Any, params: Any
               ) -> _sharing_kmeans.SharedWeights:
  """``shared`` with the centroids that fine-tuning reached, and the
  unshared leaves of ``params``: what to store after training.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from jaxprune import sharing
    >>> params = {'w': jnp.array([[0.5, 2.0]])}
    >>> shared = sharing.codebooks(params, {'w': jnp.array([[True, True]])}, bits=1)
    >>> tx = sharing.fine_tune_centroids(optax.sgd(1.0), shared)
    >>> params = sharing.shared_params(shared)
    >>> updates, state = tx.update({'w': jnp.ones((1, 2))}, tx.init(params), params)
    >>> params = optax.apply_updates(params, updates)
    >>> tuned = sharing.fine_tuned(shared, state, params)
    >>> tuned.codebooks['w'].centroids.tolist()
    [-0.5, 1.0]

  Args:
    shared: the :class:`~jaxprune.sharing.SharedWeights` that the
      transformation was made with.
    state: the optimizer state that holds the :class:`FineTuneState`
      (alone, or inside a chain; for ``nnx.Optimizer``, its ``opt_state``).
    params: the trained params (Linen, ``nnx.Module``, ``nnx.State`` or its
      plain form).

  Returns:
    A :class:`~jaxprune.sharing.SharedWeights`.

  Raises:
    ValueError: a state that holds no :class:`FineTuneState`, or several.
  """
  caller = "jaxprune.sharing.fine_tuned"
  books = _book_paths(shared, caller)
  found = [x for x in jax.tree.leaves(
      _nnx.without_variables(state), is_leaf=lambda x: isinstance(x, FineTuneState))
           if isinstance(x, FineTuneState)]
  if len(found) != 1:
    raise ValueError(
        f"{caller}: the state holds {len(found)} FineTuneState; give the state of "
        "the optimizer made with jaxprune.sharing.fine_tune_centroids")
  tuned = found[0]
  if len(tuned.centroids) != len(books):
    raise ValueError(
        f"{caller}: the state has {len(tuned.centroids)} codebooks, shared has "
        f"{len(books)}; give the SharedWeights the optimizer was made with")
  new = {path: book._replace(centroids=jnp.asarray(c))
         for (path, book), c in zip(books.items(), tuned.centroids)}
  skeleton, leaves = _nested.flatten(params, caller)
  codebooks = _nested.unflatten(skeleton, [new.get(path) for path, _ in leaves])
  return _sharing_kmeans.SharedWeights(
      codebooks, _nested.unflatten(skeleton, [leaf for _, leaf in leaves]))
