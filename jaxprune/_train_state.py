"""A Flax ``TrainState`` that exposes the masks of its pruning optimizer.

Example:
  >>> import jax.numpy as jnp, optax
  >>> import jaxprune
  >>> params = {'w': jnp.ones((4, 4))}
  >>> tx = jaxprune.prune(optax.adam(1e-3),
  ...                     criterion=jaxprune.criteria.magnitude,
  ...                     schedule=jaxprune.schedules.constant(0.5))
  >>> state = jaxprune.TrainState.create(apply_fn=None, params=params, tx=tx)
  >>> state = state.apply_gradients(grads={'w': jnp.ones((4, 4))})
  >>> int(state.masks['w'].sum())
  8
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax.training import train_state

from jaxprune import _inspect


class TrainState(train_state.TrainState):
  """``flax.training.train_state.TrainState`` with a ``masks`` property.

  Use it exactly like Flax's: ``apply_gradients`` runs the pruning
  optimizer's update, which keeps pruned weights at zero by itself.
  ``create`` stores ``step`` as an int32 array (Flax stores a Python int),
  so a jitted train step sees the same input types from the first call on
  and compiles once.
  """

  @classmethod
  def create(cls, *, apply_fn, params, tx, **kwargs):
    state = super().create(apply_fn=apply_fn, params=params, tx=tx, **kwargs)
    return state.replace(step=jnp.asarray(state.step, jnp.int32))

  @property
  def masks(self) -> Any:
    """``jaxprune.masks_of(self.opt_state)``."""
    return _inspect.masks_of(self.opt_state)
