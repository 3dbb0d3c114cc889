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

The projections themselves are the pure functions of :mod:`jaxprune._balls`
(:func:`jaxprune.projections.l1_ball`, :func:`jaxprune.projections.l21_ball`
and :func:`jaxprune.projections.l11_ball`): exact, sort-free, O(n) per leaf
of n weights, and computed in place on a sharded leaf.

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
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprune import _balls
from jaxprune import _checks
from jaxprune import _inspect
from jaxprune import _trees


def _sum_dtype(a, b) -> np.dtype:
  """The dtype of ``a + b`` under standard promotion, for floating dtypes."""
  if np.dtype(a) == np.dtype(b):
    return np.dtype(a)
  return _balls.compute_dtype(a, b)


def _check_axis_type(axis: Any) -> None:
  """Checks ``axis`` before the shapes it applies to are known."""
  axes = axis if isinstance(axis, tuple) else (axis,)
  if any(
      isinstance(a, bool) or not isinstance(a, numbers.Integral) for a in axes
  ):
    raise TypeError(f"axis must be an int or a tuple of ints, got {axis!r}")
  if not axes:
    raise ValueError("axis must name at least one axis, got ()")


def _selected(
    params: Any, prunable, name: str, axis: _balls.Axis | None
) -> Any:
  """The tree of flags of the leaves to project, checked.

  Raises:
    ValueError: nothing selected; ``axis`` out of range for a leaf.
    TypeError: a selected leaf is not real floating-point.
  """
  flags, selected = _trees.selected_leaves(
      params, prunable, f"jaxprune.{name}", "projected")
  for path, leaf in selected:
    if axis is not None:
      _balls.normalize_axis(
          axis,
          np.ndim(leaf),
          f"leaf {_trees.path_string(path)} of shape {np.shape(leaf)}",
      )
  return flags


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


def _projection(
    name: str,
    project: Callable[[jax.Array, jax.Array], jax.Array],
    radius: jax.typing.ArrayLike,
    prunable: _trees.PrunablePredicate | None,
    axis: _balls.Axis | None,
) -> optax.GradientTransformationExtraArgs:
  """The transformation that projects ``params + updates`` with ``project``."""
  _checks.check_scalar_hyperparameter("radius", radius, positive=False)
  _checks.check_prunable(prunable)
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
      dtype = _balls.compute_dtype(p.dtype, u.dtype)
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
  :func:`jaxprune.projections.l1_ball`, O(n) per leaf of n weights, without sorting.

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
  return _projection(
      "project_l1", _balls.l1_ball, radius, prunable, None)


def project_l21(
    radius: jax.typing.ArrayLike,
    *,
    axis: _balls.Axis = -1,
    prunable: _trees.PrunablePredicate | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Projected gradient onto an l2,1 (group lasso) ball per leaf.

  Each selected leaf ``w`` is kept in ``{w : sum_g ||w_g||_2 <= radius}``
  by :func:`jaxprune.projections.l21_ball`, where a group is a slice along ``axis``:
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
      lambda x, r: _balls.l21_ball(x, r, axis),
      radius,
      prunable,
      axis,
  )


def project_l11(
    radius: jax.typing.ArrayLike,
    *,
    axis: _balls.Axis = -1,
    prunable: _trees.PrunablePredicate | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Barlaud and Guyard's projected gradient with the bilevel l1,1 operator.

  Each selected leaf is mapped by :func:`jaxprune.projections.l11_ball` into its l1
  ball of radius ``radius``, whole groups (slices along ``axis``; by
  default the rows of a dense kernel ``(in, out)``: input features)
  removed first.  This is the authors' structured l1,1 constraint; it is
  not the Euclidean projection onto that ball, which is
  :func:`project_l1` (see :func:`jaxprune.projections.l11_ball`).  O(n) per leaf of
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
      lambda x, r: _balls.l11_ball(x, r, axis),
      radius,
      prunable,
      axis,
  )
