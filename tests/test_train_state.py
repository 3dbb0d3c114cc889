"""jaxprune.TrainState: Flax's TrainState, plus masks, with no extra hook."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

import jaxprune
from jaxprune import criteria
from jaxprune import schedules


def test_train_state_exposes_masks_and_keeps_pruned_weights_zero():
  model = nn.Dense(8)
  x = jax.random.normal(jax.random.key(0), (16, 5))
  params = model.init(jax.random.key(1), x)["params"]
  tx = jaxprune.prune(optax.adamw(1e-2), criterion=criteria.magnitude,
                      schedule=schedules.one_shot(0.75, at_step=2))
  state = jaxprune.TrainState.create(apply_fn=model.apply, params=params, tx=tx)
  assert isinstance(state, train_state.TrainState)
  assert state.step.dtype == jnp.int32

  @jax.jit
  def step(state):
    grads = jax.grad(lambda p: jnp.sum(state.apply_fn({"params": p}, x) ** 2))(
        state.params
    )
    return state.apply_gradients(grads=grads)

  for _ in range(4):
    state = step(state)
  mask = np.asarray(state.masks["kernel"])
  assert state.masks["bias"] is None
  np.testing.assert_array_equal(jaxprune.masks_of(state)["kernel"], mask)
  assert mask.sum() == 40 - 30
  assert np.all(np.asarray(state.params["kernel"])[~mask] == 0)
  assert int(state.step) == 4
  assert step._cache_size() == 1
