"""The pruned optimizers the benchmarks compare with plain ``optax.adam(1e-3)``.

``METHODS`` is the one table of them: a name maps to a function of the run's
length in steps that builds a :class:`Pruned`. Every method wraps or chains
the same ``optax.adam(1e-3)`` the plain run uses.

Example:
  >>> from benchmarks import methods
  >>> pruned = methods.make("magnitude", steps=300)
  >>> sorted(pruned.update_steps)
  [0, 100, 200]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import numpy as np
import optax

import jaxprune

LEARNING_RATE = 1e-3
UPDATE_EVERY = 100  # steps between mask updates of the scheduled methods


class Pruned(NamedTuple):
  """A pruned adam and what a benchmark must know to run it.

  Attributes:
    tx: the optimizer.
    update_steps: the steps (counted from 0) whose update recomputes masks.
    description: what ``tx`` is, for the reports.
    gated: whether the trained params carry L0 gates (``add_gates``) that
      the forward pass applies (``apply_gates``).
  """

  tx: optax.GradientTransformation
  update_steps: frozenset[int]
  description: str
  gated: bool = False


def plain_adam() -> optax.GradientTransformation:
  """The baseline every method is timed against."""
  return optax.adam(LEARNING_RATE)


def _every_hundred_steps(steps: int) -> jaxprune.schedules.Schedule:
  """Polynomial sparsity 0.5 -> 0.9, updated at 0, 100, ... over ``steps``.

  Starting from a non-zero sparsity keeps the update at step 0, so a run of
  ``n * 100`` steps holds exactly ``n`` mask updates.
  """
  last = max(UPDATE_EVERY, UPDATE_EVERY * ((steps - 1) // UPDATE_EVERY))
  return jaxprune.schedules.polynomial(
      final_sparsity=0.9, initial_sparsity=0.5, begin_step=0, end_step=last,
      frequency=UPDATE_EVERY,
  )


def _scheduled(criterion, label: str,
               packed_masks: bool = False) -> Callable[[int], Pruned]:
  def make_scheduled(steps: int) -> Pruned:
    schedule = _every_hundred_steps(steps)
    tx = jaxprune.prune(plain_adam(), criterion=criterion, schedule=schedule,
                        packed_masks=packed_masks)
    packed = ", packed masks" if packed_masks else ""
    return Pruned(
        tx, frozenset(schedule.steps),
        f"prune(adam, {label}, polynomial 0.5->0.9, mask update every "
        f"{UPDATE_EVERY} steps{packed})",
    )

  return make_scheduled


def _snip_it_during_training(steps: int) -> Pruned:
  """SNIP-it's geometric rounds to 0.9 (0.5, 0.7, 0.8, ...), one every 100
  steps, ranked by |g * w| on the step's batch."""
  del steps
  schedule = jaxprune.schedules.geometric(0.9, begin_step=0,
                                          frequency=UPDATE_EVERY)
  tx = jaxprune.prune(plain_adam(), criterion=jaxprune.criteria.saliency,
                      schedule=schedule)
  return Pruned(
      tx, frozenset(schedule.steps),
      f"prune(adam, saliency |g*w|, geometric rounds to 0.9 every "
      f"{UPDATE_EVERY} steps): SNIP-it during training",
  )


def _flipout(noise: float) -> Callable[[int], Pruned]:
  def make_flipout(steps: int) -> Pruned:
    tx = jaxprune.flipout(plain_adam(), prune_every=UPDATE_EVERY, rate=0.5,
                          noise=noise, final_sparsity=0.9)
    return Pruned(
        tx, frozenset(range(UPDATE_EVERY, steps, UPDATE_EVERY)),
        f"flipout(adam, prune_every={UPDATE_EVERY}, rate 0.5, noise {noise:g})",
    )

  return make_flipout


def _l0_dual_ascent(steps: int) -> Pruned:
  del steps  # No schedule: the gates learn the masks.
  tx = optax.chain(
      jaxprune.dual_ascent(jaxprune.density_constraint(0.5), dual_lr=1e-2),
      plain_adam(),
      jaxprune.clip_log_alpha(),
  )
  return Pruned(
      tx, frozenset(),
      "L0 unit gates: chain(dual_ascent(density <= 0.5), adam, clip_log_alpha)",
      gated=True,
  )


def _held_masks(steps: int) -> Pruned:
  """Fixed random 90% masks of every kernel (seed 0) and no schedule: the
  masked step without the refresh gate, to tell the gate's cost from the
  masking's. The masks need the params' shapes, so ``prune`` is built at
  ``init``, which runs before any update."""
  del steps
  built = {}

  def init_fn(params):
    rng = np.random.default_rng(0)
    masks = jax.tree.map(
        lambda p: rng.random(p.shape) >= 0.9 if p.ndim > 1 else None, params)
    built["tx"] = jaxprune.prune(plain_adam(), masks=masks)
    return built["tx"].init(params)

  def update_fn(updates, state, params=None, **extra_args):
    return built["tx"].update(updates, state, params, **extra_args)

  return Pruned(
      optax.GradientTransformationExtraArgs(init_fn, update_fn), frozenset(),
      "prune(adam, masks=) holding fixed random 90% masks (no schedule)")


def _l0_gates_only(steps: int) -> Pruned:
  """The gated forward pass of ``"l0"`` under plain adam (no constraint):
  the gates' share of L0's cost."""
  del steps
  return Pruned(plain_adam(), frozenset(),
                "L0 unit gates under plain adam (no dual ascent, no clip)",
                gated=True)


def _projection(name: str, radius: float) -> Callable[[int], Pruned]:
  def make_projection(steps: int) -> Pruned:
    del steps  # Projects at every step.
    project = getattr(jaxprune, name)
    return Pruned(optax.chain(plain_adam(), project(radius)), frozenset(),
                  f"chain(adam, {name}({radius:g}))")

  return make_projection


METHODS: dict[str, Callable[[int], Pruned]] = {
    "magnitude": _scheduled(jaxprune.criteria.magnitude, "magnitude |w|"),
    "magnitude_packed": _scheduled(jaxprune.criteria.magnitude,
                                   "magnitude |w|", packed_masks=True),
    "saliency": _scheduled(jaxprune.criteria.saliency, "saliency |g*w|"),
    "snip_it": _snip_it_during_training,
    "flipout": _flipout(noise=1.0),
    "flipout_noise0": _flipout(noise=0.0),
    "l0": _l0_dual_ascent,
    "l0_gates_only": _l0_gates_only,
    "held_masks": _held_masks,
    "project_l1": _projection("project_l1", 100.0),
    "project_l21": _projection("project_l21", 20.0),
}


def make(method: str, steps: int) -> Pruned:
  """The pruned adam called ``method``, for a run of ``steps`` steps.

  Raises:
    ValueError: if ``method`` is not a key of ``METHODS``.
  """
  if method not in METHODS:
    raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
  return METHODS[method](steps)
