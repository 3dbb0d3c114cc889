"""Sparsity schedules: the target sparsity as a pure function of the step.

Every schedule here is piecewise constant: the target changes only at the
steps where the mask is updated, and :func:`jaxprune.prune` updates the mask
exactly there.  The levels are known on the host when the schedule is made,
so the number of weights each tensor keeps is computed exactly, in Python,
before anything is traced.

Example:
  >>> import jaxprune
  >>> schedule = jaxprune.schedules.polynomial(
  ...     final_sparsity=0.9, begin_step=0, end_step=300, frequency=100)
  >>> schedule.steps  # the level 0.0 at step 0 changes nothing and is dropped
  (100, 200, 300)
  >>> [round(s, 4) for s in schedule.sparsities]
  [0.6333, 0.8667, 0.9]
  >>> float(schedule(250))
  0.8666...
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jaxprune import _checks

__all__ = [
    "Schedule",
    "constant",
    "geometric",
    "geometric_rounds",
    "one_shot",
    "piecewise",
    "polynomial",
]


@dataclasses.dataclass(frozen=True)
class Schedule:
  """A piecewise-constant sparsity schedule.

  Attributes:
    steps: strictly increasing steps at which the target sparsity changes
      (the mask update steps).
    sparsities: the target sparsity from each of those steps on; strictly
      increasing, each in ``[0, 1]``.  Before ``steps[0]`` the target is 0.
  """

  steps: tuple[int, ...]
  sparsities: tuple[float, ...]

  def __post_init__(self):
    """Checks the fields, for a schedule built directly rather than by the
    functions below (which check their own arguments first).

    Raises:
      ValueError: lengths that differ, steps that are negative or not
        strictly increasing, a sparsity outside ``[0, 1]`` (or NaN), or
        sparsities that do not strictly increase.
      TypeError: a step that is not an integer or a sparsity that is not a
        real number.
    """
    steps = tuple(_check_step(s, "Schedule step") for s in self.steps)
    sparsities = tuple(
        _checks.check_sparsity(s, "Schedule sparsity") for s in self.sparsities
    )
    if len(steps) != len(sparsities):
      raise ValueError(
          f"Schedule got {_checks.counted(len(steps), 'step')} but "
          f"{_checks.counted(len(sparsities), 'sparsity', 'sparsities')}"
      )
    if any(b <= a for a, b in zip(steps, steps[1:])):
      raise ValueError(
          f"Schedule steps must be strictly increasing, got {list(steps)}"
      )
    if any(b <= a for a, b in zip(sparsities, sparsities[1:])):
      raise ValueError(
          "Schedule sparsities must strictly increase (a pruned weight stays "
          f"pruned, and a repeated level would update no mask), got "
          f"{list(sparsities)}"
      )
    object.__setattr__(self, "steps", steps)
    object.__setattr__(self, "sparsities", sparsities)

  def level(self, step: jax.typing.ArrayLike) -> jax.Array:
    """Index of the level in force at ``step``; -1 before the first one."""
    if not self.steps:
      return jnp.full(jnp.shape(step), -1, jnp.int32)
    boundaries = jnp.asarray(self.steps, jnp.int32)
    passed = jnp.searchsorted(boundaries, jnp.asarray(step, jnp.int32), "right")
    return passed.astype(jnp.int32) - 1

  def __call__(self, step: jax.typing.ArrayLike) -> jax.Array:
    """The target sparsity at ``step`` (works under jit)."""
    level = self.level(step)
    if not self.steps:
      return jnp.zeros(jnp.shape(step), jnp.float32)
    table = jnp.asarray(self.sparsities, jnp.float32)
    return jnp.where(level >= 0, table[jnp.maximum(level, 0)], 0.0)


# The transformations count steps in int32.
_MAX_STEP = 2**31 - 1


def _check_step(value: int, name: str) -> int:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise TypeError(f"{name} must be an integer step, got {value!r}")
  if value < 0:
    raise ValueError(f"{name} must be >= 0, got {value}")
  if value > _MAX_STEP:
    raise ValueError(
        f"{name} must be at most 2**31 - 1 (the step counter is int32), got "
        f"{value}")
  return int(value)


def piecewise(steps: Sequence[int], sparsities: Sequence[float]) -> Schedule:
  """A schedule that moves to ``sparsities[i]`` at ``steps[i]``.

  Levels that do not raise the sparsity (a leading 0, a repeated value) need
  no mask update and are dropped.

  Args:
    steps: strictly increasing, non-negative steps.
    sparsities: non-decreasing sparsities in ``[0, 1]``, one per step.

  Returns:
    A :class:`Schedule`.

  Raises:
    ValueError: mismatched lengths, steps not increasing, a sparsity outside
      ``[0, 1]`` or decreasing (a pruned weight cannot come back).
  """
  steps = [_check_step(s, "step") for s in steps]
  sparsities = [_checks.check_sparsity(s, "sparsity") for s in sparsities]
  if len(steps) != len(sparsities):
    raise ValueError(
        f"got {_checks.counted(len(steps), 'step')} but "
        f"{_checks.counted(len(sparsities), 'sparsity', 'sparsities')}"
    )
  if any(b <= a for a, b in zip(steps, steps[1:])):
    raise ValueError(f"steps must be strictly increasing, got {steps}")
  if any(b < a for a, b in zip(sparsities, sparsities[1:])):
    raise ValueError(
        "sparsities must not decrease (a pruned weight stays pruned), got "
        f"{sparsities}"
    )
  kept_steps, kept_levels, previous = [], [], 0.0
  for step, sparsity in zip(steps, sparsities):
    if sparsity > previous:
      kept_steps.append(step)
      kept_levels.append(sparsity)
      previous = sparsity
  return Schedule(tuple(kept_steps), tuple(kept_levels))


def constant(sparsity: float) -> Schedule:
  """A fixed mask at ``sparsity``, chosen at the first step (step 0)."""
  return piecewise([0], [_checks.check_sparsity(sparsity, "sparsity")])


def one_shot(sparsity: float, at_step: int) -> Schedule:
  """Prunes once, to ``sparsity``, at ``at_step``."""
  return piecewise(
      [_check_step(at_step, "at_step")], [_checks.check_sparsity(sparsity, "sparsity")]
  )


def polynomial(
    final_sparsity: float,
    begin_step: int,
    end_step: int,
    frequency: int,
    initial_sparsity: float = 0.0,
    power: float = 3,
) -> Schedule:
  """Gradual pruning of Zhu & Gupta (2017).

  At ``t = begin_step, begin_step + frequency, ...`` and at ``end_step``
  (always, so that the final sparsity is reached), the target becomes

      s_t = s_f + (s_i - s_f) * (1 - (t - begin_step) / (end_step - begin_step)) ** power

  Args:
    final_sparsity: ``s_f``, reached at ``end_step``.
    begin_step: the first update step.
    end_step: the last update step; greater than ``begin_step``.
    frequency: steps between updates, at least 1.
    initial_sparsity: ``s_i``, the target at ``begin_step``; at most
      ``final_sparsity``.
    power: the exponent, 3 in the paper; positive.

  Returns:
    A :class:`Schedule`.

  References:
    Zhu & Gupta, `To prune, or not to prune
    <https://arxiv.org/abs/1710.01878>`_, 2017.
  """
  final_sparsity = _checks.check_sparsity(final_sparsity, "final_sparsity")
  initial_sparsity = _checks.check_sparsity(initial_sparsity, "initial_sparsity")
  begin_step = _check_step(begin_step, "begin_step")
  end_step = _check_step(end_step, "end_step")
  if end_step <= begin_step:
    raise ValueError(
        f"end_step ({end_step}) must be greater than begin_step ({begin_step})"
    )
  if isinstance(frequency, bool) or not isinstance(frequency, numbers.Integral):
    raise TypeError(f"frequency must be an integer, got {frequency!r}")
  if frequency < 1:
    raise ValueError(f"frequency must be >= 1, got {frequency}")
  if not (isinstance(power, numbers.Real) and math.isfinite(power) and power > 0):
    raise ValueError(f"power must be a positive number, got {power!r}")
  if initial_sparsity > final_sparsity:
    raise ValueError(
        f"initial_sparsity ({initial_sparsity}) must not exceed "
        f"final_sparsity ({final_sparsity})"
    )
  steps = list(range(begin_step, end_step, int(frequency))) + [end_step]
  span = end_step - begin_step
  sparsities = [
      final_sparsity
      + (initial_sparsity - final_sparsity) * (1 - (t - begin_step) / span) ** power
      for t in steps
  ]
  return piecewise(steps, sparsities)


def geometric_rounds(final_sparsity: float, steps: int = 5) -> tuple[float, ...]:
  """The sparsities of SNIP-it's rounds (Verdenius et al. 2020).

  ``k_i = K - (K - 0.5) * 0.5**i`` for ``i = 0..steps``, then ``K``: each
  round halves the distance left to the final sparsity ``K``, starting from
  0.5.  Rounds that would not be below ``K`` (when ``K <= 0.5``) are dropped,
  so a target of at most 0.5 is a single round.

  Example:
    >>> from jaxprune import schedules
    >>> [round(k, 4) for k in schedules.geometric_rounds(0.98)]
    [0.5, 0.74, 0.86, 0.92, 0.95, 0.965, 0.98]

  Args:
    final_sparsity: ``K``, in ``[0, 1]``.
    steps: ``S``, the number of halvings after the first round; >= 0.

  Returns:
    Strictly increasing sparsities ending with ``final_sparsity``.
  """
  final_sparsity = _checks.check_sparsity(final_sparsity, "final_sparsity")
  if isinstance(steps, bool) or not isinstance(steps, numbers.Integral):
    raise TypeError(f"steps must be an integer, got {steps!r}")
  if steps < 0:
    raise ValueError(f"steps must be >= 0, got {steps}")
  rounds = [
      final_sparsity - (final_sparsity - 0.5) * 0.5**i for i in range(steps + 1)
  ]
  return tuple(k for k in rounds if k < final_sparsity) + (final_sparsity,)


def geometric(
    final_sparsity: float, begin_step: int, frequency: int, steps: int = 5
) -> Schedule:
  """SNIP-it during training: one :func:`geometric_rounds` round per event.

  The rounds fire at ``begin_step, begin_step + frequency, ...``; with the
  saliency criterion, ``jaxprune.prune`` then prunes SNIP-it's rounds during
  training (the optimizer state is kept), ranked by the train step's own
  gradient.  The authors rank by the sensitivity on fresh batches in
  evaluation mode: at these steps, :func:`jaxprune.snip` with the current
  masks and :func:`jaxprune.replace_masks` (see its example).

  Example:
    >>> from jaxprune import schedules
    >>> s = schedules.geometric(0.9, begin_step=100, frequency=50, steps=2)
    >>> s.steps, [round(k, 3) for k in s.sparsities]
    ((100, 150, 200, 250), [0.5, 0.7, 0.8, 0.9])

  Args:
    final_sparsity: the last round's sparsity, in ``[0, 1]``.
    begin_step: the step of the first round.
    frequency: steps between rounds, at least 1.
    steps: as in :func:`geometric_rounds`.
  """
  rounds = geometric_rounds(final_sparsity, steps)
  begin_step = _check_step(begin_step, "begin_step")
  if isinstance(frequency, bool) or not isinstance(frequency, numbers.Integral):
    raise TypeError(f"frequency must be an integer, got {frequency!r}")
  if frequency < 1:
    raise ValueError(f"frequency must be >= 1, got {frequency}")
  return piecewise(
      [begin_step + i * int(frequency) for i in range(len(rounds))], rounds
  )
