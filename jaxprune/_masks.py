"""Masks over a parameter tree: checking them, applying them to params,
gradients and updates.

A mask tree has the structure of the params: a boolean array of the leaf's
shape (True = kept) for every pruned leaf and ``None`` for the others.

Example: updates that leave the pruned weight exactly 0 after
``optax.apply_updates``, whatever the optimizer proposed.

  >>> import jax.numpy as jnp
  >>> from jaxprune import _masks
  >>> params = {'w': jnp.array([1.0, -2.0, 3.0]), 'b': jnp.ones(1)}
  >>> masks = {'w': jnp.array([True, False, True]), 'b': None}
  >>> updates = {'w': jnp.array([0.5, 0.5, 0.5]), 'b': jnp.array([0.5])}
  >>> _masks.zero_pruned_params(masks, updates, params)['w']
  Array([0.5, 2. , 0.5], dtype=float32)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxprune import _nnx
from jaxprune import _plans
from jaxprune import _sharding
from jaxprune import _trees


def _is_none(x: Any) -> bool:
  return x is None


def mask_leaves(masks: Any) -> list[jax.Array]:
  """The masks' arrays in tree order (the None leaves dropped)."""
  return jax.tree.leaves(masks)


def all_kept(plan: _plans.Plan, params: Any) -> Any:
  """Masks that keep everything: True for prunable leaves, None elsewhere."""
  return jax.tree.map(
      lambda flag, p: jnp.ones_like(p, dtype=jnp.bool_) if flag else None,
      plan.prunable,
      params,
  )


def check_masks(params: Any, masks: Any, plan: _plans.Plan,
                what: str = "the masks in the optimizer state") -> None:
  """Raises ``ValueError`` unless ``masks`` fit ``params`` and ``plan``."""
  expected_masks = jax.tree.map(
      lambda flag, p: p if flag else None, plan.prunable, params
  )
  _trees.check_same_structure(expected_masks, masks, what)
  for path, mask, leaf in zip(
      plan.paths, mask_leaves(masks), _plans.prunable_leaves(params, plan)
  ):
    if jnp.shape(mask) != jnp.shape(leaf):
      raise ValueError(
          f"the mask of {_trees.path_string(path)} has shape {jnp.shape(mask)} "
          f"but the param has shape {jnp.shape(leaf)}"
      )


def checked_initial_masks(masks: Any, params: Any, plan: _plans.Plan,
                          caller: str) -> Any:
  """The user's initial masks, checked against the params, as boolean
  arrays placed (sharded) as their params are.  Masks in the plain form of
  a Flax NNX state are put in the structure of the params' ``nnx.State``."""
  masks = _nnx.conformed(masks, params, f"the masks given to {caller}")
  check_masks(params, masks, plan, what=(
      f"the masks given to {caller} (a boolean array for every prunable leaf, "
      "None for the others)"))
  for path, mask in zip(plan.paths, mask_leaves(masks)):
    if jnp.result_type(mask) != jnp.bool_:
      raise TypeError(
          f"the initial mask of {_trees.path_string(path)} has dtype "
          f"{jnp.result_type(mask)}; masks are boolean (True = kept)")
  return jax.tree.map(
      lambda m, p: None if m is None else _sharding.placed_like(m, p),
      masks, params, is_leaf=_is_none)


def mask_gradients(masks: Any, grads: Any) -> Any:
  """``grads`` with the entries of pruned weights replaced by 0 (replaced,
  not multiplied, so that a NaN gradient of a pruned weight is 0 too)."""
  return jax.tree.map(
      lambda m, g: g if m is None else jnp.where(m, g, jnp.zeros_like(g)),
      masks,
      grads,
      is_leaf=_is_none,
  )


def zero_pruned_params(masks: Any, updates: Any, params: Any) -> Any:
  """Updates that leave ``params + updates`` exactly 0 where the mask is False."""
  return jax.tree.map(
      lambda m, u, p: u if m is None else jnp.where(m, u, -p.astype(u.dtype)),
      masks,
      updates,
      params,
      is_leaf=_is_none,
  )


def apply_masks(params: Any, masks: Any) -> Any:
  """``params`` with the weights that ``masks`` prune set to exactly 0.

  Example:
    >>> import jax.numpy as jnp
    >>> import jaxprune
    >>> params = {'w': jnp.array([1.0, -2.0, 3.0]), 'b': jnp.ones(1)}
    >>> masks = {'w': jnp.array([True, False, True]), 'b': None}
    >>> jaxprune.apply_masks(params, masks)['w']
    Array([1., 0., 3.], dtype=float32)

  With Flax NNX, an ``nnx.State`` gives an ``nnx.State``, and a module is
  changed in place:

    >>> from flax import nnx
    >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    >>> jaxprune.apply_masks(model, {'kernel': jnp.array([[True], [False]]),
    ...                              'bias': None})
    >>> float(model.kernel[1, 0])
    0.0

  Args:
    params: the parameter tree: a Linen params dict, an ``nnx.State`` (e.g.
      ``nnx.state(model, nnx.Param)``) or its pure-dict form, or an
      ``nnx.Module``, whose ``nnx.Param`` values are replaced in place.
    masks: a tree with the structure of ``params``: a boolean array of the
      leaf's shape (True = kept) or ``None`` (not pruned) for every leaf, as
      :func:`jaxprune.masks_of` and :func:`jaxprune.snip` return (for NNX,
      nested dicts as ``nnx.State.to_pure_dict()`` gives them, or a state).

  Returns:
    The masked params, of the type given; ``None`` for a module.

  Raises:
    ValueError: if the trees or a leaf's shape do not match.
    TypeError: if a mask is not boolean (a float "mask" of 0.2 would keep
      every weight).
  """
  if isinstance(params, nnx.Module):
    nnx.update(params, apply_masks(nnx.state(params, nnx.Param), masks))
    return None
  masks = _nnx.conformed(masks, params, "the masks")
  _trees.check_same_structure(
      jax.tree.map(lambda _: 0, params), jax.tree.map(
          lambda m: 0, masks, is_leaf=_is_none), "the masks")

  def masked(path, p, m):
    if m is None:
      return p
    where = _trees.path_string(_trees.readable_path(path))
    if jnp.result_type(m) != jnp.bool_:
      raise TypeError(
          f"the mask of {where} has dtype {jnp.result_type(m)}; masks are "
          "boolean (True = kept)")
    if jnp.shape(m) != jnp.shape(p):
      raise ValueError(
          f"{where}: a mask of shape {jnp.shape(m)} cannot mask a param of "
          f"shape {jnp.shape(p)}")
    return jnp.where(m, p, jnp.zeros_like(p))

  return jax.tree_util.tree_map_with_path(masked, params, masks,
                                          is_leaf=_is_none)
