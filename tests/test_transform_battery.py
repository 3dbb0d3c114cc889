"""One battery of checks over every jaxprune transformation.

The transformations are the rows of ``tests/transforms.py``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import transforms
from flax import nnx

import jaxprune

# Projected gradient keeps no mask: under Adam every weight moves by about the
# learning rate at each step, refilling the zeros, so after the few Adam steps
# of test_works_with_inject_hyperparams its sparsity is far below a pruning
# schedule's.  The minimum sparsity that test expects, by row (default 0.7).
# 1:2 sparsity is 0.5 at most.
_ADAM_SPARSITY = {"project-l1": 0.2, "project-l21": 0.0, "project-l11": 0.2,
                  "prune-1of2": 0.5}
_SCAN_SPARSITY = {"prune-1of2": 0.5}


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
  """The tree's structure and its leaves' shapes and dtypes."""
  return jax.tree.structure(tree), [
      (jnp.shape(x), jnp.result_type(x)) for x in jax.tree.leaves(tree)]


@pytest.fixture(params=list(transforms.MASKED))
def make(request):
  row = transforms.MASKED[request.param]
  return lambda inner: row(inner, _params())


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


def _six_steps_in_scan_and_cond(tx, params):
  """Six jitted steps of ``tx`` inside ``lax.scan``, each new state passed
  through a ``lax.cond``; the final params and state."""
  def body(carry, t):
    params, state = carry
    updates, new_state = tx.update(_grads(params, t), state, params)
    new_state = jax.lax.cond(t >= 0, lambda: new_state, lambda: state)
    return (optax.apply_updates(params, updates), new_state), None

  (params, state), _ = jax.jit(
      lambda c: jax.lax.scan(body, c, jnp.arange(6.0))
  )((params, tx.init(params)))
  return params, state


def test_state_passes_through_lax_cond_and_scan(make, request):
  tx = make(optax.sgd(0.1, momentum=0.9))
  params, state = _six_steps_in_scan_and_cond(tx, _params())
  masks = jaxprune.masks_of(state)
  for name in ("a", "b"):
    kernel, mask = np.asarray(params[name]["kernel"]), np.asarray(masks[name]["kernel"])
    assert np.all(kernel[~mask] == 0)
  from_masks = float(jaxprune.sparsity(masks).global_sparsity)
  assert from_masks >= _SCAN_SPARSITY.get(request.node.callspec.params["make"], 0.7)
  assert float(jaxprune.sparsity(params).global_sparsity) == pytest.approx(from_masks)


def test_works_with_inject_hyperparams(make, request):
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
  minimum = _ADAM_SPARSITY.get(request.node.callspec.params["make"], 0.7)
  assert float(jaxprune.sparsity(jaxprune.masks_of(state)).global_sparsity) >= minimum
  assert step._cache_size() == 1


# --- transformations of L0-gated params (no masks in their state) -----------

def _gated_params(dtype=jnp.float32):
  return jaxprune.add_gates(_params(dtype), jax.random.key(0), granularity="unit")


@pytest.fixture(params=list(transforms.GATED))
def make_gated(request):
  row = transforms.GATED[request.param]
  return lambda inner: row(inner, _gated_params())


def _dual_states(state):
  return [s for s in jax.tree.leaves(
      state, is_leaf=lambda x: isinstance(x, jaxprune.DualAscentState))
      if isinstance(s, jaxprune.DualAscentState)]


def test_gated_steps_compile_once_keep_dtypes_and_lower_the_density(make_gated):
  for dtype in (jnp.float32, jnp.bfloat16):
    tx = make_gated(optax.adam(1e-1))
    params = _gated_params(dtype)
    before = float(jaxprune.expected_density(params).model)
    state = tx.init(params)
    step = jax.jit(lambda p, s, t, tx=tx: tx.update(_grads(p, t), s, p))
    for t in range(6):
      updates, new_state = step(params, state, jnp.asarray(t, jnp.float32))
      assert _signature(updates) == _signature(params)
      assert _signature(new_state) == _signature(state)
      params, state = optax.apply_updates(params, updates), new_state
    assert step._cache_size() == 1
    assert float(jaxprune.expected_density(params).model) < before
    for s in _dual_states(state):
      assert all(np.all(np.asarray(m) >= 0) for m in s.multipliers)


def test_gated_state_passes_through_scan_cond_and_inject_hyperparams(make_gated):
  tx = optax.inject_hyperparams(lambda learning_rate: make_gated(optax.adam(learning_rate)))(
      learning_rate=1e-1)
  params = _gated_params()
  scanned, state = _six_steps_in_scan_and_cond(tx, params)
  looped, looped_state = params, tx.init(params)
  for t in range(6):
    updates, looped_state = tx.update(_grads(looped, jnp.float32(t)), looped_state, looped)
    looped = optax.apply_updates(looped, updates)
  for a, b in zip(jax.tree.leaves(scanned), jax.tree.leaves(looped)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  low, high = jaxprune._l0.LOG_ALPHA_RANGE
  for name in ("a", "b"):
    la = np.asarray(scanned[name]["log_alpha"])
    assert np.all((la >= low - 1e-6) & (la <= high + 1e-6))


# --- the same rows under Flax NNX's nnx.Optimizer ---------------------------

class _NnxModel(nnx.Module):
  """The NNX counterpart of ``_params()``: ``a`` a dense layer, ``b`` a conv
  kernel without bias, holding the same values."""

  def __init__(self):
    rngs = nnx.Rngs(0)
    self.a = nnx.Linear(6, 5, rngs=rngs)
    self.b = nnx.Conv(2, 4, kernel_size=(3, 3), use_bias=False, rngs=rngs)
    state = nnx.state(self, nnx.Param)
    nnx.replace_by_pure_dict(state, _params())
    nnx.update(self, state)


@pytest.fixture(params=list(transforms.MASKED))
def make_nnx(request):
  row = transforms.MASKED[request.param]
  # The rows see the plain form, as a user's masks from jaxprune.snip on an
  # NNX model would be.
  return lambda inner: row(inner, nnx.to_pure_dict(nnx.state(_NnxModel(), nnx.Param)))


def test_nnx_optimizer_matches_the_functional_steps_and_compiles_once(make_nnx):
  model = _NnxModel()
  optimizer = nnx.Optimizer(model, make_nnx(optax.adam(1e-2)), wrt=nnx.Param)
  traces = []

  @nnx.jit
  def step(model, optimizer, t):
    traces.append(None)
    params = nnx.state(model, nnx.Param)
    optimizer.update(model, jax.tree.map(
        lambda p: jnp.cos(p * (t + 1)).astype(p.dtype), params))

  tx = make_nnx(optax.adam(1e-2))
  params = _params()
  state = tx.init(params)
  functional_step = jax.jit(tx.update)
  for t in range(6):
    step(model, optimizer, jnp.asarray(t, jnp.float32))
    updates, state = functional_step(_grads(params, t), state, params)
    params = optax.apply_updates(params, updates)
  assert len(traces) == 1

  got = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(params), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  masks = jaxprune.masks_of(optimizer)
  assert jax.tree.structure(masks, is_leaf=lambda x: x is None) == (
      jax.tree.structure(jaxprune.masks_of(state), is_leaf=lambda x: x is None))
  for name in ("a", "b"):
    mask = masks[name]["kernel"]
    assert mask.dtype == jnp.bool_
    np.testing.assert_array_equal(mask, jaxprune.masks_of(state)[name]["kernel"])
    assert np.all(np.asarray(got[name]["kernel"])[~np.asarray(mask)] == 0)
  assert masks["a"]["bias"] is None
  assert float(jaxprune.sparsity(model).global_sparsity) == pytest.approx(
      float(jaxprune.sparsity(params).global_sparsity))


@pytest.fixture(params=list(transforms.GATED))
def make_gated_nnx(request):
  row = transforms.GATED[request.param]
  return lambda inner: row(inner, _gated_params())


def test_gated_rows_under_nnx_optimizer_match_the_functional_steps(make_gated_nnx):
  model = _NnxModel()
  jaxprune.add_gates(model, jax.random.key(0), granularity="unit")
  params = _gated_params()
  for a, b in zip(jax.tree.leaves(nnx.to_pure_dict(nnx.state(model, nnx.Param))),
                  jax.tree.leaves(params), strict=True):
    np.testing.assert_array_equal(a, b)
  optimizer = nnx.Optimizer(model, make_gated_nnx(optax.adam(1e-1)), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, t):
    optimizer.update(model, jax.tree.map(
        lambda p: jnp.cos(p * (t + 1)).astype(p.dtype), nnx.state(model, nnx.Param)))

  tx = make_gated_nnx(optax.adam(1e-1))
  state = tx.init(params)
  functional_step = jax.jit(lambda p, s, t: tx.update(_grads(p, t), s, p))
  for t in range(6):
    step(model, optimizer, jnp.asarray(t, jnp.float32))
    updates, state = functional_step(params, state, jnp.asarray(t, jnp.float32))
    params = optax.apply_updates(params, updates)
  got = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(params), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert float(jaxprune.expected_density(model).model) == pytest.approx(
      float(jaxprune.expected_density(params).model), rel=1e-5)
