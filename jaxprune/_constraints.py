"""Constrained training by gradient descent-ascent on the Lagrangian.

Gallego-Posada et al. (2022), "Controlled Sparsity via Constrained
Optimization": instead of adding ``penalty * g(params)`` to the loss and
searching for the penalty that gives the wanted ``g``, state the constraint
``g(params) <= 0`` and solve ``min_params max_{lambda >= 0} loss + lambda *
g(params)``.  :func:`dual_ascent` is the multiplier half as an optax
transformation: it adds ``sum_k lambda_k * grad g_k(params)`` to the
incoming gradients (the primal optimizer chained after it then descends on
the Lagrangian) and ascends ``lambda_k <- max(0, lambda_k + dual_lr *
g_k(params))``, both with the multipliers of the previous step
(simultaneous descent-ascent).  The user's loss stays the plain task loss.

Example: minimise ``(x - 2)**2`` subject to ``x <= 1``; the KKT point is
``x = 1``, ``lambda = 2``.

  >>> import jax, jax.numpy as jnp, optax
  >>> import jaxprune
  >>> tx = optax.chain(
  ...     jaxprune.dual_ascent(lambda p: p['x'] - 1.0, dual_lr=0.05,
  ...                          dual_restarts=False),
  ...     optax.sgd(0.05))
  >>> params = {'x': jnp.array(0.0)}
  >>> state = tx.init(params)
  >>> @jax.jit
  ... def step(params, state):
  ...   grads = jax.grad(lambda p: (p['x'] - 2.0) ** 2)(params)
  ...   updates, state = tx.update(grads, state, params)
  ...   return optax.apply_updates(params, updates), state
  >>> for _ in range(2000):
  ...   params, state = step(params, state)
  >>> round(float(params['x']), 3), round(float(state[0].multipliers[0]), 3)
  (1.0, 2.0)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprune import _checks
from jaxprune import _l0
from jaxprune import _trees

Constraint = Callable[[Any], jax.Array]


def _no_gradient(g: Any) -> bool:
  """Whether ``g`` is JAX's gradient of an integer leaf (dtype ``float0``)."""
  return getattr(g, "dtype", None) == jax.dtypes.float0


def _add_gradient(u: jax.Array, g: jax.Array) -> jax.Array:
  """``u + g`` in the dtype of ``u``; an integer leaf (no gradient) keeps
  ``u``."""
  return u if _no_gradient(g) else u + g.astype(jnp.result_type(u))


def _as_constraints(constraints) -> tuple[Constraint, ...]:
  if callable(constraints):
    constraints = (constraints,)
  if isinstance(constraints, (str, bytes)) or not isinstance(constraints, Sequence):
    raise TypeError(
        "constraints must be a function params -> values or a sequence of "
        f"them, got {type(constraints).__name__}"
    )
  constraints = tuple(constraints)
  if not constraints:
    raise ValueError("dual_ascent needs at least one constraint function")
  for i, c in enumerate(constraints):
    if not callable(c):
      raise TypeError(f"constraint {i} is not a function: got an object of "
                      f"type {type(c).__name__}")
  return constraints


class DualAscentState(NamedTuple):
  """State of :func:`dual_ascent`, one entry per constraint function.

  Attributes:
    step: int32, the number of updates so far.
    multipliers: the Lagrange multipliers ``lambda_k >= 0``, float32 arrays
      of the shape of each constraint's value; zero at the start.
    values: the constraint values ``g_k(params)`` at the last update (feasible
      where ``<= 0``), the ones the multipliers were updated with.
    skipped: int32, the updates whose constraint values or constraint
      gradients were NaN or infinite, which added no constraint gradient.
  """

  step: jax.Array
  multipliers: tuple[jax.Array, ...]
  values: tuple[jax.Array, ...]
  skipped: jax.Array

  @property
  def violations(self) -> tuple[jax.Array, ...]:
    """``max(g_k, 0)``: by how much each constraint was violated."""
    return tuple(jnp.maximum(v, 0.0) for v in self.values)


def dual_ascent(
    constraints: Constraint | Sequence[Constraint],
    *,
    dual_lr: jax.typing.ArrayLike,
    dual_restarts: bool = True,
) -> optax.GradientTransformationExtraArgs:
  """Lagrange multipliers for inequality constraints ``g_k(params) <= 0``.

  Chain it before the primal optimizer: ``optax.chain(dual_ascent(...),
  optax.adam(...))``.  Each update

  1. evaluates ``g_k(params)`` and adds ``grad_params sum_k <lambda_k,
     g_k(params)>`` to the gradients, with the current multipliers;
  2. ascends ``lambda_k <- max(0, lambda_k + dual_lr * g_k(params))``;
     with ``dual_restarts``, a multiplier whose constraint is strictly
     satisfied (``g_k < 0``) is reset to 0 (the dual restart of
     Gallego-Posada et al.), so the pressure stops as soon as the target is
     met instead of overshooting while ``lambda`` decays.

  A multiplier whose constraint value is NaN or infinite keeps its previous
  value (the value is still recorded in the state, for logging), and an
  update where any constraint value, or the constraints' gradient, is NaN
  or infinite adds no constraint gradient at all: the updates pass through
  as they came, so one bad value (``sqrt`` of a negative number, say)
  cannot turn the params into NaN.  Such updates are counted in
  ``DualAscentState.skipped``.  Integer
  leaves of the params (a step counter, say) have no gradient: their
  updates pass through unchanged.

  Args:
    constraints: a function ``params -> values`` or a sequence of them;
      values are a float scalar or array (one multiplier per entry),
      differentiable in the params.  E.g. :func:`density_constraint`.
    dual_lr: the ascent step size ``eta_dual`` (1e-4 in the paper's MNIST
      runs), finite and > 0; may be injected with
      ``optax.inject_hyperparams``.
    dual_restarts: reset the multiplier of a satisfied constraint to 0.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose update needs the
    params; its state is a :class:`DualAscentState`.
  """
  constraints = _as_constraints(constraints)
  _checks.check_scalar_hyperparameter("dual_lr", dual_lr, positive=True)
  if not isinstance(dual_lr, jax.core.Tracer) and not math.isfinite(
      float(np.asarray(dual_lr))):
    raise ValueError(f"dual_lr must be finite, got {dual_lr}")

  def evaluate(params):
    return tuple(jnp.asarray(c(params)) for c in constraints)

  def init_fn(params):
    shapes = jax.eval_shape(evaluate, params)
    for i, s in enumerate(shapes):
      if not jnp.issubdtype(s.dtype, jnp.floating):
        raise TypeError(
            f"constraint {i} returns {s.dtype} values; constraints must return "
            "floating-point values"
        )
    zeros = tuple(jnp.zeros(s.shape, jnp.float32) for s in shapes)
    return DualAscentState(jnp.zeros([], jnp.int32), zeros, zeros,
                           jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError(
          "dual_ascent needs the params: call update(updates, state, params)"
      )
    _trees.check_state_type(state, DualAscentState, "jaxprune.dual_ascent")
    _trees.check_same_shapes(params, updates, "the updates (gradients)")
    values, pullback = jax.vjp(evaluate, params)
    for i, (v, m) in enumerate(zip(values, state.multipliers)):
      if v.shape != m.shape:
        raise ValueError(
            f"constraint {i} returned shape {v.shape}, but its multipliers have "
            f"shape {m.shape} (from init)"
        )
    (constraint_grads,) = pullback(
        tuple(m.astype(v.dtype) for m, v in zip(state.multipliers, values))
    )
    finite = jnp.all(jnp.stack(
        [jnp.all(jnp.isfinite(v)) for v in values]
        + [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(constraint_grads)
           if not _no_gradient(g)]))

    def add(u, g):
      return u if _no_gradient(g) else jnp.where(finite, _add_gradient(u, g), u)

    updates = jax.tree.map(add, updates, constraint_grads)
    multipliers = []
    for m, v in zip(state.multipliers, values):
      v = v.astype(jnp.float32)
      ascended = jnp.maximum(m + jnp.asarray(dual_lr, jnp.float32) * v, 0.0)
      if dual_restarts:
        ascended = jnp.where(v < 0, 0.0, ascended)
      multipliers.append(jnp.where(jnp.isfinite(v), ascended, m))
    recorded = tuple(v.astype(jnp.float32) for v in values)
    return updates, DualAscentState(
        optax.safe_increment(state.step), tuple(multipliers), recorded,
        state.skipped + (~finite).astype(jnp.int32),
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _min_density(log_alpha_range) -> float:
  """P(z != 0) at the lowest log_alpha, in Python floats (safe under a trace)."""
  shifted = log_alpha_range[0] - _l0.BETA * math.log(-_l0.GAMMA / _l0.ZETA)
  return 1.0 / (1.0 + math.exp(-shifted))


def density_constraint(
    target: float | Sequence[float],
    scope: str = "model",
    *,
    log_alpha_range: tuple[float, float] | None = _l0.LOG_ALPHA_RANGE,
) -> Constraint:
  """The constraint "expected L0 density <= target" for :func:`dual_ascent`.

  Args:
    target: the wanted density, in (0, 1]; with ``scope='layer'`` one
      target for every layer or a sequence with one per gated layer (in the
      order of :func:`jaxprune.expected_density`'s ``layers``).
    scope: ``'model'``: one constraint on the model-wise density;
      ``'layer'``: one per gated layer.
    log_alpha_range: the clipping range of ``log_alpha`` used in training
      (see :func:`jaxprune.clip_log_alpha`); a target below the smallest
      density it allows (0.047 for the published range) cannot be met and is
      refused.  ``None`` skips the check.

  Returns:
    ``params -> expected density - target``: a scalar for ``'model'``, a
    vector of one entry per layer for ``'layer'``.

  Example:
    >>> import jax.numpy as jnp
    >>> import jaxprune
    >>> params = {'d': {'kernel': jnp.ones((2, 3)), 'log_alpha': jnp.array([-9.0, 9.0])}}
    >>> float(jaxprune.density_constraint(0.3)(params).round(3))
    0.2
  """
  if scope not in ("model", "layer"):
    raise ValueError(f"scope must be 'model' or 'layer', got {scope!r}")
  targets = np.atleast_1d(np.asarray(target, np.float64))
  if targets.ndim != 1 or targets.size == 0:
    raise ValueError(f"target must be a number or a sequence of numbers, got {target!r}")
  if scope == "model" and targets.size != 1:
    raise ValueError("a model-wise density constraint takes one target")
  if not np.all((targets > 0) & (targets <= 1)):
    raise ValueError(f"density targets must be in (0, 1], got {target!r}")
  if log_alpha_range is not None:
    floor = _min_density(log_alpha_range)
    if np.any(targets < floor):
      raise ValueError(
          f"density target {target!r} cannot be met: with log_alpha clipped to "
          f"[{log_alpha_range[0]:.3f}, {log_alpha_range[1]:.3f}] the expected "
          f"density is at least {floor:.4f}"
      )

  def constraint(params):
    density = _l0.expected_density(params)
    if scope == "model":
      return density.model - float(targets[0])
    layers = jnp.stack(list(density.layers.values()))
    if targets.size not in (1, layers.shape[0]):
      raise ValueError(
          f"{_checks.counted(targets.size, 'layer target')} for "
          f"{_checks.counted(layers.shape[0], 'gated layer')} "
          f"({list(density.layers)})"
      )
    wanted = np.broadcast_to(targets, layers.shape).astype(np.float32)
    return layers - wanted

  return constraint


class PenaltyState(NamedTuple):
  """:func:`l0_penalty` keeps no state."""


def l0_penalty(strength: jax.typing.ArrayLike) -> optax.GradientTransformationExtraArgs:
  """The penalty baseline of Louizos et al.: adds ``strength * grad E[L0]``.

  Training with it minimises ``loss + strength * expected_l0(params)``, the
  expected number of non-zero gated weights; Louizos et al. use ``strength =
  lambda / N_train``.  Chain it before the optimizer.  Unlike
  :func:`dual_ascent`, the density it reaches depends on ``strength`` and
  has to be found by search.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import jaxprune
    >>> params = {'d': {'kernel': jnp.ones((2, 3)), 'log_alpha': jnp.zeros(2)}}
    >>> tx = optax.chain(jaxprune.l0_penalty(0.1), optax.sgd(1.0))
    >>> grads = jax.tree.map(jnp.zeros_like, params)
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> updates['d']['log_alpha'].round(3)  # -0.1 * 3 * P'(0)
    Array([-0.042, -0.042], dtype=float32)
  """
  if isinstance(strength, numbers.Real) and not strength >= 0:
    raise ValueError(f"strength must be >= 0, got {strength}")

  def init_fn(params):
    del params
    return PenaltyState()

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError("l0_penalty needs the params: call update(updates, state, params)")
    _trees.check_same_shapes(params, updates, "the updates (gradients)")
    grads = jax.grad(_l0.expected_l0, allow_int=True)(params)
    updates = jax.tree.map(
        lambda u, g: _add_gradient(u, g if _no_gradient(g) else strength * g),
        updates, grads,
    )
    return updates, state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
