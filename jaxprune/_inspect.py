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
from flax import nnx

from jaxprune import _nnx
from jaxprune import _packing
from jaxprune import _trees

_MASK_STATE_TYPES: list[type] = []


def register_mask_state(cls: type) -> type:
  """Marks an optimizer-state type whose ``masks`` field ``masks_of`` reads."""
  _MASK_STATE_TYPES.append(cls)
  return cls


def _is_mask_state(x: Any) -> bool:
  return isinstance(x, tuple(_MASK_STATE_TYPES))


def _opt_state(opt_state: Any) -> Any:
  """The optimizer state, out of an ``nnx.Optimizer`` and its Variables."""
  if isinstance(opt_state, nnx.Optimizer):
    opt_state = opt_state.opt_state
  return _nnx.without_variables(opt_state)


def masks_of(opt_state: Any) -> Any:
  """The current masks held in an optimizer state.

  Finds the state of a jaxprune transformation anywhere inside
  ``opt_state``: at the top, inside ``optax.chain``,
  ``optax.inject_hyperparams`` or any other wrapper, inside a Flax
  ``TrainState``, or in a Flax NNX ``nnx.Optimizer``.

  Example: with Flax NNX, the masks come in the plain form of
  ``nnx.state(model, nnx.Param).to_pure_dict()``.

    >>> import optax
    >>> from flax import nnx
    >>> import jaxprune
    >>> model = nnx.Linear(4, 2, rngs=nnx.Rngs(0))
    >>> tx = jaxprune.prune(
    ...     optax.sgd(0.1), criterion=jaxprune.criteria.magnitude,
    ...     schedule=jaxprune.schedules.one_shot(0.5, 0))
    >>> optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    >>> masks = jaxprune.masks_of(optimizer)
    >>> masks['bias'] is None, masks['kernel'].dtype, masks['kernel'].shape
    (True, dtype('bool'), (4, 2))

  Args:
    opt_state: an optimizer state, any pytree holding one, or an
      ``nnx.Optimizer``.

  Returns:
    A tree with the structure of the params: a boolean array (True = kept)
    of the leaf's shape for every prunable leaf, ``None`` for the others.
    For Flax NNX, nested dicts as ``nnx.State.to_pure_dict()`` gives them
    (no Variable wrappers), which :func:`jaxprune.apply_masks`,
    :func:`jaxprune.sparsity` and ``jaxprune.prune(masks=...)`` take.

  Raises:
    ValueError: if ``opt_state`` holds no pruning state, or more than one.
  """
  return _nnx.plain(_packing.unpack_tree(find_state(
      _opt_state(opt_state), _is_mask_state, "masks_of", "pruning state",
      "a jaxprune transformation (jaxprune.prune, jaxprune.flipout)",
  ).masks))


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
    >>> tx = jaxprune.prune(optax.sgd(0.1),  # fixed masks, all kept
    ...                     masks={'w': jnp.ones((2, 2), bool)})
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
      :func:`masks_of` finds it (also inside a Flax ``TrainState``), or an
      ``nnx.Optimizer``, whose state is then replaced in place.
    masks: booleans with the structure of the masks :func:`masks_of`
      returns (an array of the leaf's shape for every prunable leaf,
      ``None`` for the others).

  Returns:
    ``opt_state`` with the new masks, packed where the state packs its own;
    ``None`` for an ``nnx.Optimizer`` (changed in place).

  Raises:
    ValueError: no pruning state or more than one; masks of another
      structure or shape.
    TypeError: masks that are not boolean.
  """
  if isinstance(opt_state, nnx.Optimizer):
    # As nnx.Optimizer.update writes its new state back.
    nnx.update(opt_state.opt_state,
               nnx.state(replace_masks(_opt_state(opt_state), masks)))
    return None
  state = find_state(
      opt_state, _is_mask_state, "replace_masks", "pruning state",
      "a jaxprune transformation (jaxprune.prune, jaxprune.flipout)")
  current = _packing.unpack_tree(state.masks)
  masks = _nnx.conformed(masks, current, "the masks")
  is_none = lambda x: x is None
  _trees.check_same_structure(
      jax.tree.map(lambda _: 0, current, is_leaf=is_none),
      jax.tree.map(lambda _: 0, masks, is_leaf=is_none), "the masks")
  for (path, old), new in zip(_trees.leaves_with_paths(current),
                              jax.tree.leaves(masks)):
    where = _trees.path_string(path)
    if jnp.shape(new) != jnp.shape(old):
      raise ValueError(
          f"replace_masks: the mask of {where} has shape {jnp.shape(new)}, "
          f"but the state's has {jnp.shape(old)}")
    if jnp.result_type(new) != jnp.bool_:
      raise TypeError(
          f"replace_masks: the mask of {where} has dtype "
          f"{jnp.result_type(new)}; masks are boolean")
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

  ``str()`` gives a table, one line per counted leaf.

  Attributes:
    global_sparsity: the fraction of zeros (or False) over all counted leaves.
    per_leaf: the fraction for every counted leaf, by its path
      (``{'Dense_0/kernel': 0.9, ...}``, 0-d arrays), in tree order.
  """

  global_sparsity: jax.Array
  per_leaf: dict[str, jax.Array]

  def __str__(self) -> str:
    width = max([len("global")] + [len(name) for name in self.per_leaf])
    lines = [f"{'global':<{width}}  {float(self.global_sparsity):7.2%}"]
    lines += [f"{name:<{width}}  {float(value):7.2%}"
              for name, value in self.per_leaf.items()]
    return "\n".join(lines)


def sparsity(tree: Any, prunable: _trees.PrunablePredicate | None = None) -> Sparsity:
  """Measures the sparsity of params or masks.

  Boolean leaves (masks) and :class:`jaxprune.PackedMask` leaves count
  their False entries; other leaves selected by ``prunable`` (by default
  floating leaves with ``ndim >= 2``, the prunable default of
  :func:`jaxprune.prune`) count their exact zeros.  ``None`` leaves are
  skipped.  Works under jit.

  Example:
    >>> import jax.numpy as jnp
    >>> import jaxprune
    >>> params = {'dense': {'kernel': jnp.array([[0.0, 1.0], [0.0, 0.0]]),
    ...                     'bias': jnp.zeros(2)}}
    >>> print(jaxprune.sparsity(params))
    global          75.00%
    dense/kernel    75.00%

  Args:
    tree: params, or masks from :func:`jaxprune.masks_of`; for Flax NNX
      also an ``nnx.State`` or the ``nnx.Module`` itself (its
      ``nnx.Param`` state is counted).
    prunable: which non-boolean leaves to count, ``(path, leaf) -> bool``.

  Returns:
    A :class:`Sparsity`.

  Raises:
    ValueError: if no leaf is counted.
  """
  predicate = _trees.default_prunable if prunable is None else prunable
  tree = _packing.unpack_tree(_nnx.params_of(tree))
  zeros, sizes, per_leaf = [], [], {}
  for path, leaf in _trees.leaves_with_paths(tree):
    if jnp.result_type(leaf) == jnp.bool_:
      empty = ~jnp.asarray(leaf)
    elif predicate(path, leaf):
      empty = jnp.asarray(leaf) == 0
    else:
      continue
    zeros.append(jnp.sum(empty, dtype=jnp.int32))
    sizes.append(jnp.size(leaf))
    per_leaf[_trees.path_string(path)] = (
        zeros[-1].astype(jnp.float32) / max(jnp.size(leaf), 1))
  if not zeros:
    raise ValueError(
        "sparsity counted no leaf: the tree holds no boolean masks and no leaf "
        "the prunable predicate selects"
    )
  total = sum(z.astype(jnp.float32) for z in zeros)
  return Sparsity(total / max(sum(sizes), 1), per_leaf)
