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

All three are exact and sort-based, with static shapes (jit-friendly): for a
leaf of n weights in G groups of m, O(n log n) for l1, O(n + G log G) for
l2,1 and O(n log m + G log G) for l1,1.  (The l1 projection also has
expected-O(n) algorithms, Condat 2016, with data-dependent loops.)

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
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprune import _flipout
from jaxprune import _inspect
from jaxprune import _pruning
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


def _rows_threshold(a: jax.Array, radius: jax.Array) -> jax.Array:
  """The soft threshold that puts every row of ``a`` in its own l1 ball.

  Args:
    a: ``[rows, n]`` non-negative magnitudes, ``n >= 1``.
    radius: ``[rows]`` radii (NaN where a radius is negative).

  Returns:
    ``[rows]`` thresholds ``tau >= 0`` with
    ``sum(max(a - tau, 0)) == radius`` for every row whose l1 norm exceeds
    its radius, and ``tau == 0`` for the others.

  With the magnitudes sorted in decreasing order ``s`` and ``c_k`` their
  running sums, ``tau = max(0, max_k (c_k - r) / k)`` (Condat 2016), then
  recomputed once over the support it selects, ``(sum_{a > tau} a - r) /
  #{a > tau}``, with a plain sum, which is more accurate than the running
  sum for long rows.
  """
  n = a.shape[-1]
  s = jnp.flip(jnp.sort(a, axis=-1), axis=-1)
  running = jnp.cumsum(s, axis=-1)
  k = jnp.arange(1, n + 1, dtype=a.dtype)
  r = radius[:, None]
  tau = jnp.maximum(jnp.max((running - r) / k[None, :], axis=-1), 0)
  support = a > tau[:, None]
  count = jnp.sum(support, axis=-1, dtype=jnp.int32)
  total = jnp.sum(jnp.where(support, a, jnp.zeros_like(a)), axis=-1)
  refined = jnp.maximum(
      (total - radius) / jnp.maximum(count, 1).astype(a.dtype), 0
  )
  tau = jnp.where((tau > 0) & (count > 0), refined, tau)
  return jnp.where(radius < 0, jnp.asarray(jnp.nan, a.dtype), tau)


def _radius_array(radius: jax.typing.ArrayLike, dtype) -> jax.Array:
  return jnp.asarray(radius).astype(dtype)


def _soft_threshold(x: jax.Array, tau: jax.Array) -> jax.Array:
  """``sign(x) * max(|x| - tau, 0)``; exactly ``x`` where ``tau == 0``."""
  return x - jnp.clip(x, -tau, tau)


# The implementations, on checked arguments.  Jitted, so that an eager call
# compiles one program per shape rather than one per operation; under an
# outer jit they are inlined.


@jax.jit
def _l1(x: jax.Array, radius: jax.typing.ArrayLike) -> jax.Array:
  dtype = _compute_dtype(x.dtype)
  xc = x.astype(dtype)
  r = _radius_array(radius, dtype)
  tau = _rows_threshold(jnp.abs(xc).reshape(1, -1), r.reshape(1))[0]
  return _soft_threshold(xc, tau).astype(x.dtype)


@functools.partial(jax.jit, static_argnames="axes")
def _l21(
    x: jax.Array, radius: jax.typing.ArrayLike, axes: tuple[int, ...]
) -> jax.Array:
  dtype = _compute_dtype(x.dtype)
  xc = x.astype(dtype)
  r = _radius_array(radius, dtype)
  norms = jnp.sqrt(jnp.sum(jnp.square(xc), axis=axes, keepdims=True))
  tau = _rows_threshold(norms.reshape(1, -1), r.reshape(1))[0]
  scale = jnp.maximum(norms - tau, 0) / jnp.where(norms > 0, norms, 1)
  scale = jnp.where(tau == 0, jnp.ones_like(scale), scale)  # exact if inside
  return (xc * scale).astype(x.dtype)


@functools.partial(jax.jit, static_argnames="axes")
def _l11(
    x: jax.Array, radius: jax.typing.ArrayLike, axes: tuple[int, ...]
) -> jax.Array:
  dtype = _compute_dtype(x.dtype)
  xc = x.astype(dtype)
  r = _radius_array(radius, dtype)
  a = jnp.abs(xc)
  norms = jnp.sum(a, axis=axes, keepdims=True)
  tau = _rows_threshold(norms.reshape(1, -1), r.reshape(1))[0]
  budgets = jnp.maximum(norms - tau, 0)  # NaN stays NaN
  kept = tuple(i for i in range(x.ndim) if i not in axes)
  rows = jnp.transpose(a, kept + axes).reshape(budgets.size, -1)
  group_tau = _rows_threshold(rows, budgets.reshape(-1))
  # Inside the ball every group keeps its whole norm: leave x exactly as is.
  group_tau = jnp.where(tau == 0, 0, group_tau.reshape(budgets.shape))
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

  Exact, by sorting the magnitudes (Duchi et al. 2008; the sort variant of
  Condat 2016): O(n log n) for ``n = x.size``, with static shapes, so it
  works under ``jit`` and ``vmap``.  Half-precision inputs are
  computed in float32; the result has the dtype of ``x``.

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
  _flipout._check_array_like("radius", radius, positive=False)
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
  group's direction is kept).  Cost: O(n) for the norms and
  O(G log G) to sort the ``G`` group norms.

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
  _flipout._check_array_like("radius", radius, positive=False)
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

  Cost: O(n log m) to sort the ``m`` entries of each group, plus
  O(G log G) for the ``G`` group norms.

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
  _flipout._check_array_like("radius", radius, positive=False)
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
  _flipout._check_array_like("radius", radius, positive=False)
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
    _pruning._require_params(params, name)
    _trees.check_same_structure(params, updates, "the updates tree")
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
  :func:`l1_ball_projection`, O(n log n) per leaf of n weights.

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
  so whole input features vanish.  O(n) per leaf of n weights, plus
  O(G log G) for its G groups.

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
  :func:`project_l1` (see :func:`l11_ball_projection`).  O(n log m) per
  leaf of n weights in groups of m.

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
