"""Pruning criteria: pure functions from ``(params, grads, key)`` to scores.

A criterion returns a tree of scores with the structure and shapes of
``params``; :func:`jaxprune.prune` keeps the highest-scoring weights.
``grads`` is the gradient the update receives at the pruning step and
``key`` a PRNG key drawn from the transformation's state for that step.
Any function of this signature is a criterion; it is traced inside the
jitted train step, so it must be pure.

Example:
  >>> import jax, jax.numpy as jnp
  >>> import jaxprune
  >>> params = {'w': jnp.array([[1.0, -3.0], [0.5, 2.0]])}
  >>> grads = {'w': jnp.array([[1.0, 0.1], [4.0, 0.0]])}
  >>> jaxprune.criteria.magnitude(params, grads, jax.random.key(0))['w']
  Array([[1. , 3. ],
         [0.5, 2. ]], dtype=float32)
  >>> jaxprune.criteria.saliency(params, grads, jax.random.key(0))['w']
  Array([[1. , 0.3],
         [2. , 0. ]], dtype=float32)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from typing import Protocol
from typing import runtime_checkable

import jax
import jax.numpy as jnp

__all__ = ["Criterion", "PerWeightCriterion", "magnitude", "random", "saliency"]


class Criterion(Protocol):
  """The signature of a pruning criterion: ``(params, grads, key) -> scores``.

  A criterion whose score of each weight depends only on that weight and its
  gradient can also be a :class:`PerWeightCriterion`.
  """

  def __call__(self, params: Any, grads: Any, key: jax.Array) -> Any:
    ...


@runtime_checkable
class PerWeightCriterion(Criterion, Protocol):
  """A criterion that scores each weight from itself and its gradient alone.

  Besides being a :class:`Criterion`, it has a ``per_weight`` attribute: the
  function ``(param, grad) -> score`` that it applies elementwise to every
  leaf (:func:`magnitude` and :func:`saliency` are such criteria).  The mask
  update of :func:`jaxprune.prune` then computes the scores a slice at a
  time where it ranks them, instead of holding the scores of all the
  weights at once; the masks are the same.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxprune import criteria
    >>> def squared(params, grads, key):
    ...   return {k: jnp.square(v) for k, v in params.items()}
    >>> squared.per_weight = lambda param, grad: jnp.square(param)
    >>> isinstance(squared, criteria.PerWeightCriterion)
    True
    >>> isinstance(criteria.random, criteria.PerWeightCriterion)
    False
  """

  per_weight: Callable[[jax.Array, jax.Array], jax.Array]


def per_weight_form(criterion: Criterion) -> Callable | None:
  """``criterion.per_weight`` if it is a :class:`PerWeightCriterion`, else
  None.

  Raises:
    TypeError: if its ``per_weight`` is not callable.
  """
  if not isinstance(criterion, PerWeightCriterion):
    return None
  if not callable(criterion.per_weight):
    raise TypeError(
        "criterion.per_weight must be a (param, grad) -> score function, got "
        f"{criterion.per_weight!r}")
  return criterion.per_weight


def magnitude(params: Any, grads: Any, key: jax.Array) -> Any:
  """``|w|``: keeps the largest weights."""
  del grads, key
  return jax.tree.map(jnp.abs, params)


magnitude.per_weight = lambda param, grad: jnp.abs(param)


def random(params: Any, grads: Any, key: jax.Array) -> Any:
  """Independent ``U(0, 1)`` scores: a random mask, reproducible from the key."""
  del grads
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, max(len(leaves), 1))
  scores = [
      jax.random.uniform(k, jnp.shape(leaf), jnp.float32)
      for k, leaf in zip(keys, leaves)
  ]
  return jax.tree.unflatten(treedef, scores)


def saliency(params: Any, grads: Any, key: jax.Array) -> Any:
  """``|g * w|``, the connection sensitivity of SNIP (Lee et al. 2019).

  ``g`` is the gradient the update receives at the pruning step: that of
  the step's one training batch, with the model in training mode.  The
  authors of SNIP and SNIP-it sum it over several fresh batches in
  evaluation mode instead; for their form during training see
  :func:`jaxprune.replace_masks`.
  """
  del key
  if grads is None:
    raise ValueError("the saliency criterion needs gradients, got None")
  return jax.tree.map(saliency.per_weight, params, grads)


saliency.per_weight = lambda param, grad: jnp.abs(grad * param)
