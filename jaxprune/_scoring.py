"""What the scoring functions before training share: the jitted gradient,
the batches of each round, and the check of their scores.

Example:
  >>> from jaxprune import _scoring
  >>> batches = _scoring.round_batches(iter(range(10)), 3, "caller")
  >>> batches(), batches()
  ([0, 1, 2], [3, 4, 5])
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from jaxprune import _checks
from jaxprune import _plans
from jaxprune import _trees


@functools.lru_cache(maxsize=8)
def jitted_gradient(loss_fn: Callable[[Any, Any], jax.Array]):
  """``jax.grad(loss_fn)``, jitted: the gradient with respect to the params."""
  return jax.jit(jax.grad(loss_fn))


def round_batches(batches: Iterable[Any], batches_per_round: int, caller: str):
  """A function giving the batches of each round.

  A sequence is used whole in every round; an iterator gives
  ``batches_per_round`` fresh batches per round.
  """
  _checks.check_batches(batches, caller)
  if isinstance(batches, Sequence):
    if len(batches) == 0:
      raise ValueError(f"{caller}: batches is empty; give at least one batch")
    return lambda: batches
  iterator = iter(batches)

  def fresh():
    drawn = list(itertools.islice(iterator, batches_per_round))
    if not drawn:
      raise ValueError(
          f"{caller}: the batch iterator ran out; it must give "
          f"batches_per_round={batches_per_round} batches per round")
    return drawn

  return fresh


def check_scores(scores: Any, plan: _plans.Plan, caller: str) -> None:
  """Raises ``ValueError`` naming the first prunable leaf whose scores hold
  NaN or inf (scores computed on the host, outside jit)."""
  for path, score in zip(plan.paths, _plans.prunable_leaves(scores, plan)):
    bad = int(np.count_nonzero(~np.isfinite(np.asarray(score))))
    if bad:
      raise ValueError(
          f"{caller}: the score of {_trees.path_string(path)} is NaN "
          f"or inf for {_checks.counted(bad, 'weight')}; the loss or its gradient is not finite "
          "at these params and batches")
