"""One battery of checks over every jaxprune transformation.

Add a row to ``_TRANSFORMS`` for each new transformation.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxprune
from jaxprune import criteria, schedules

_SCHEDULE = schedules.polynomial(0.75, begin_step=0, end_step=4, frequency=2)

_TRANSFORMS = {
    "prune-magnitude-global": lambda inner: jaxprune.prune(
        inner, criterion=criteria.magnitude, schedule=_SCHEDULE),
    "prune-random-layerwise": lambda inner: jaxprune.prune(
        inner, criterion=criteria.random, schedule=_SCHEDULE,
        allocation="layerwise"),
    "prune-saliency-erk": lambda inner: jaxprune.prune(
        inner, criterion=criteria.saliency, schedule=_SCHEDULE, allocation="erk"),
    "flipout": lambda inner: jaxprune.flipout(inner, prune_every=2),
    "flipout-noiseless-p1": lambda inner: jaxprune.flipout(
        inner, prune_every=2, rate=0.6, p=1.0, noise=0.0, final_sparsity=0.8),
}


def _params(dtype=jnp.float32):
  rng = np.random.default_rng(0)
  return {
      "a": {"kernel": jnp.asarray(rng.normal(size=(6, 5)), dtype),
            "bias": jnp.asarray(rng.normal(size=(5,)), dtype)},
      "b": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 2, 4)), dtype)},
  }


def _grads(params, t):
  return jax.tree.map(lambda p: jnp.cos(p * (t + 1)).astype(p.dtype), params)


def _signature(tree):
  return jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), tree)


@pytest.fixture(params=list(_TRANSFORMS))
def make(request):
  return _TRANSFORMS[request.param]


def test_jitted_steps_keep_state_types_and_compile_once(make):
  tx = make(optax.adam(1e-2))
  params = _params()
  state = tx.init(params)
  traces = []

  @jax.jit
  def step(params, state, t):
    traces.append(None)
    updates, state = tx.update(_grads(params, t), state, params)
    return optax.apply_updates(params, updates), state

  for t in range(6):
    new_params, new_state = step(params, state, jnp.asarray(t, jnp.float32))
    assert _signature(new_state) == _signature(state)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    params, state = new_params, new_state
  assert len(traces) == 1


def test_keeps_param_dtypes(make):
  tx = make(optax.sgd(0.1))
  params = _params(jnp.bfloat16)
  updates, state = jax.jit(tx.update)(_grads(params, 0), tx.init(params), params)
  assert _signature(updates) == _signature(params)
  assert _signature(optax.apply_updates(params, updates)) == _signature(params)


def test_state_passes_through_lax_cond_and_scan(make):
  tx = make(optax.sgd(0.1, momentum=0.9))
  params = _params()
  state = tx.init(params)

  def body(carry, t):
    params, state = carry
    updates, new_state = tx.update(_grads(params, t), state, params)
    new_state = jax.lax.cond(t >= 0, lambda: new_state, lambda: state)
    return (optax.apply_updates(params, updates), new_state), None

  (params, state), _ = jax.jit(
      lambda c: jax.lax.scan(body, c, jnp.arange(6.0))
  )((params, state))
  masks = jaxprune.masks_of(state)
  for name in ("a", "b"):
    kernel, mask = np.asarray(params[name]["kernel"]), np.asarray(masks[name]["kernel"])
    assert np.all(kernel[~mask] == 0)
  from_masks = float(jaxprune.sparsity(masks).global_sparsity)
  assert from_masks > 0.7
  assert float(jaxprune.sparsity(params).global_sparsity) == pytest.approx(from_masks)


def test_works_with_inject_hyperparams(make):
  tx = optax.inject_hyperparams(lambda learning_rate: make(optax.adam(learning_rate)))(
      learning_rate=1e-2
  )
  params = _params()
  state = tx.init(params)
  step = jax.jit(tx.update)
  for t in range(5):
    updates, state = step(_grads(params, t), state, params)
    params = optax.apply_updates(params, updates)
  state.hyperparams["learning_rate"] = state.hyperparams["learning_rate"] * 0.1
  updates, state = step(_grads(params, 5), state, params)
  assert float(jaxprune.sparsity(jaxprune.masks_of(state)).global_sparsity) > 0.7
  assert step._cache_size() == 1
