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

from typing import Any, Protocol

import jax
import jax.numpy as jnp

__all__ = ["Criterion", "magnitude", "random", "saliency"]


class Criterion(Protocol):
  """The signature of a pruning criterion.

  A criterion whose score of each weight depends only on that weight and its
  gradient may say so with a ``per_weight`` attribute, the function
  ``(param, grad) -> score`` that it applies elementwise to every leaf (as
  :func:`magnitude` and :func:`saliency` do).  The mask update then computes
  the scores a slice at a time where it ranks them, instead of holding the
  scores of all the weights at once; the masks are the same.
  """

  def __call__(self, params: Any, grads: Any, key: jax.Array) -> Any:
    ...


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
