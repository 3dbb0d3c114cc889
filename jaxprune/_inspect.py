"""Reading masks and sparsity out of optimizer states and parameter trees.

Example:
  >>> import jax.numpy as jnp
  >>> import jaxprune
  >>> masks = {'w': jnp.array([[True, False], [False, False]]), 'b': None}
  >>> report = jaxprune.sparsity(masks)
  >>> float(report.global_sparsity)
  0.75
"""

from __future__ import annotations

from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxprune import _packing
from jaxprune import _trees

_MASK_STATE_TYPES: list[type] = []


def register_mask_state(cls: type) -> type:
  """Marks an optimizer-state type whose ``masks`` field ``masks_of`` reads."""
  _MASK_STATE_TYPES.append(cls)
  return cls


def _is_mask_state(x: Any) -> bool:
  return isinstance(x, tuple(_MASK_STATE_TYPES))


def masks_of(opt_state: Any) -> Any:
  """The current masks held in an optimizer state.

  Finds the state of a jaxprune transformation anywhere inside
  ``opt_state``: at the top, inside ``optax.chain``,
  ``optax.inject_hyperparams`` or any other wrapper, or inside a Flax
  ``TrainState``.

  Args:
    opt_state: an optimizer state, or any pytree holding one.

  Returns:
    A tree with the structure of the params: a boolean array (True = kept)
    of the leaf's shape for every prunable leaf, ``None`` for the others.

  Raises:
    ValueError: if ``opt_state`` holds no pruning state, or more than one.
  """
  return _packing.unpack_tree(find_state(
      opt_state, _is_mask_state, "masks_of", "pruning state",
      "a jaxprune transformation (jaxprune.prune, jaxprune.flipout)",
  ).masks)


def replace_masks(opt_state: Any, masks: Any) -> Any:
  """``opt_state`` with the masks of its pruning state replaced by ``masks``.

  For masks found outside the train step, between updates: SNIP-it during
  training as its authors run it recomputes the sensitivity at each pruning
  event on a few fresh batches with the model in evaluation mode
  (:func:`jaxprune.snip` with the current masks is one such round), which
  the train step's own gradient cannot give.  The inner optimizer's state
  is kept, as the authors keep theirs; the next update zeroes the weights
  the new masks prune (:func:`jaxprune.apply_masks` zeroes them at once).

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import jaxprune
    >>> params = {'w': jnp.array([[1.0, -2.0], [0.5, 3.0]])}
    >>> tx = jaxprune.prune(optax.sgd(0.1))  # fixed masks, all kept
    >>> opt_state = tx.init(params)
    >>> loss_fn = lambda p, x: jnp.sum((x @ p['w']) ** 2)
    >>> batches = [jnp.ones((4, 2))]  # fresh batches, evaluation mode
    >>> masks = jaxprune.snip(loss_fn, params, batches, sparsity=0.5,
    ...                       masks=jaxprune.masks_of(opt_state))
    >>> opt_state = jaxprune.replace_masks(opt_state, masks)
    >>> jaxprune.masks_of(opt_state)['w'].tolist()
    [[False, True], [False, True]]
    >>> updates, opt_state = tx.update(params, opt_state, params)
    >>> optax.apply_updates(params, updates)['w'][:, 0].tolist()
    [0.0, 0.0]

  Args:
    opt_state: an optimizer state holding one pruning state, as
      :func:`masks_of` finds it (also inside a Flax ``TrainState``).
    masks: booleans with the structure of the masks :func:`masks_of`
      returns (an array of the leaf's shape for every prunable leaf,
      ``None`` for the others).

  Returns:
    ``opt_state`` with the new masks, packed where the state packs its own.

  Raises:
    ValueError: no pruning state or more than one; masks of another
      structure or shape.
    TypeError: masks that are not boolean.
  """
  state = find_state(
      opt_state, _is_mask_state, "replace_masks", "pruning state",
      "a jaxprune transformation (jaxprune.prune, jaxprune.flipout)")
  current = _packing.unpack_tree(state.masks)
  is_none = lambda x: x is None
  _trees.check_same_structure(
      jax.tree.map(lambda _: 0, current, is_leaf=is_none),
      jax.tree.map(lambda _: 0, masks, is_leaf=is_none), "the masks")
  for old, new in zip(jax.tree.leaves(current), jax.tree.leaves(masks)):
    if jnp.shape(new) != jnp.shape(old):
      raise ValueError(
          f"replace_masks: a mask has shape {jnp.shape(new)} where the "
          f"state's has {jnp.shape(old)}")
    if jnp.result_type(new) != jnp.bool_:
      raise TypeError(
          f"replace_masks: a mask has dtype {jnp.result_type(new)}; masks "
          "are boolean")
  replaced = state._replace(masks=_packing.packed_like(
      jax.tree.map(jnp.asarray, masks), state.masks))
  return jax.tree.map(lambda x: replaced if x is state else x, opt_state,
                      is_leaf=_is_mask_state)


def find_state(opt_state: Any, is_state, caller: str, what: str, built_with: str):
  """The one sub-state of ``opt_state`` for which ``is_state`` holds.

  Raises:
    ValueError: naming ``caller``, if there is none or more than one.
  """
  found = [
      x for x in jax.tree.leaves(opt_state, is_leaf=is_state) if is_state(x)
  ]
  if not found:
    raise ValueError(
        f"{caller} found no {what} in the given optimizer state; was the "
        f"optimizer built with {built_with}?"
    )
  if len(found) > 1:
    raise ValueError(
        f"{caller} found {len(found)} {what}s in the given optimizer state "
        "and cannot tell which one you mean; call it on the part of the state "
        "that holds the one you want"
    )
  return found[0]


class Sparsity(NamedTuple):
  """Achieved sparsity of a tree of params or masks.

  Attributes:
    global_sparsity: the fraction of zeros (or False) over all counted leaves.
    per_leaf: a tree like the input, the fraction for every counted leaf,
      ``None`` for the others.
  """

  global_sparsity: jax.Array
  per_leaf: Any


def sparsity(tree: Any, prunable: _trees.PrunablePredicate | None = None) -> Sparsity:
  """Measures the sparsity of params or masks.

  Boolean leaves (masks) and :class:`jaxprune.PackedMask` leaves count
  their False entries; other leaves selected by ``prunable`` (by default
  floating leaves with ``ndim >= 2``, the prunable default of
  :func:`jaxprune.prune`) count their exact zeros.  ``None`` leaves are
  skipped.  Works under jit.

  Args:
    tree: params, or masks from :func:`jaxprune.masks_of`.
    prunable: which non-boolean leaves to count, ``(path, leaf) -> bool``.

  Returns:
    A :class:`Sparsity`.

  Raises:
    ValueError: if no leaf is counted.
  """
  predicate = _trees.default_prunable if prunable is None else prunable
  tree = _packing.unpack_tree(tree)
  zeros, sizes = [], []

  def measure(path, leaf):
    if jnp.result_type(leaf) == jnp.bool_:
      empty = ~jnp.asarray(leaf)
    elif predicate(_trees.readable_path(path), leaf):
      empty = jnp.asarray(leaf) == 0
    else:
      return None
    zeros.append(jnp.sum(empty, dtype=jnp.int32))
    sizes.append(jnp.size(leaf))
    return zeros[-1].astype(jnp.float32) / max(jnp.size(leaf), 1)

  per_leaf = jax.tree_util.tree_map_with_path(measure, tree)
  if not zeros:
    raise ValueError(
        "sparsity counted no leaf: the tree holds no boolean masks and no leaf "
        "the prunable predicate selects"
    )
  total = sum(z.astype(jnp.float32) for z in zeros)
  return Sparsity(total / max(sum(sizes), 1), per_leaf)
