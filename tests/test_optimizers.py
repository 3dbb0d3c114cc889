"""Pruned weights stay exactly zero under every optimizer, at every step."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxprune
from jaxprune import criteria
from jaxprune import schedules

_STEPS = 200
_SCHEDULE = schedules.polynomial(0.8, begin_step=0, end_step=150, frequency=25)

_OPTIMIZERS = {
    "sgd": optax.sgd(0.1),
    "momentum": optax.sgd(0.1, momentum=0.9),
    "nesterov": optax.sgd(0.1, momentum=0.9, nesterov=True),
    "adam": optax.adam(1e-2),
    "adamw": optax.adamw(1e-2, weight_decay=0.5),
    "lion": optax.lion(1e-3, weight_decay=0.1),
    "adafactor": optax.adafactor(1e-2),
    "rmsprop": optax.rmsprop(1e-2, momentum=0.9),
    "clip+adamw": optax.chain(
        optax.clip_by_global_norm(1.0), optax.adamw(1e-2, weight_decay=0.5)
    ),
}


class _MLP(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(32)(x))
    x = nn.relu(nn.Dense(32)(x))
    return nn.Dense(3)(x)


def _data():
  x = jax.random.normal(jax.random.key(0), (64, 12))
  y = jnp.argmax(x[:, :3] + 0.5 * x[:, 3:6], axis=1)
  return x, y


def _train(tx):
  model = _MLP()
  x, y = _data()
  params = model.init(jax.random.key(1), x)["params"]
  state = jaxprune.TrainState.create(apply_fn=model.apply, params=params, tx=tx)

  @jax.jit
  def step(state):
    def loss_fn(params):
      logits = state.apply_fn({"params": params}, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    state = state.apply_gradients(grads=grads)
    return state, loss, _leaked(state.params, state.masks)

  losses, leaks = [], []
  for _ in range(_STEPS):
    state, loss, leaked = step(state)
    losses.append(loss)
    leaks.append(leaked)
  return state, np.asarray(losses), np.asarray(leaks), step


def _leaked(params, masks):
  """How many weights whose mask is False are not exactly zero."""
  counts = jax.tree.map(
      lambda m, p: jnp.zeros((), jnp.int32) if m is None
      else jnp.sum((p != 0) & ~m, dtype=jnp.int32),
      masks, params, is_leaf=lambda x: x is None,
  )
  return sum(jax.tree.leaves(counts))


@pytest.mark.parametrize("name", list(_OPTIMIZERS))
def test_pruned_weights_stay_zero(name):
  tx = jaxprune.prune(_OPTIMIZERS[name], criterion=criteria.magnitude,
                      schedule=_SCHEDULE)
  state, losses, leaks, step = _train(tx)
  assert leaks.tolist() == [0] * _STEPS
  assert step._cache_size() == 1
  kernels = [state.params[f"Dense_{i}"]["kernel"] for i in range(3)]
  total = sum(k.size for k in kernels)
  zeros = sum(int((k == 0).sum()) for k in kernels)
  assert zeros == total - (total - round(0.8 * total))
  assert float(jaxprune.sparsity(state.params).global_sparsity) == pytest.approx(
      zeros / total
  )
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]


@pytest.mark.parametrize("criterion", [criteria.random, criteria.saliency])
def test_other_criteria_keep_pruned_weights_zero(criterion):
  tx = jaxprune.prune(optax.adamw(1e-2, weight_decay=0.5), criterion=criterion,
                      schedule=_SCHEDULE, allocation="erk")
  _, _, leaks, _ = _train(tx)
  assert leaks.tolist() == [0] * _STEPS
