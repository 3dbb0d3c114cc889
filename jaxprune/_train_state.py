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

from flax.training import train_state

from jaxprune import _inspect


class TrainState(train_state.TrainState):
  """``flax.training.train_state.TrainState`` with a ``masks`` property.

  Use it exactly like Flax's: ``apply_gradients`` runs the pruning
  optimizer's update, which keeps pruned weights at zero by itself.
  """

  @property
  def masks(self) -> Any:
    """``jaxprune.masks_of(self.opt_state)``."""
    return _inspect.masks_of(self.opt_state)
