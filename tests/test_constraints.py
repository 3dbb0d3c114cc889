"""dual_ascent, density_constraint and l0_penalty."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxprune


def _step(tx, loss):
  @jax.jit
  def step(params, state):
    grads = jax.grad(loss)(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return step


# --- the dual update --------------------------------------------------------

def test_dual_update_by_hand():
  """g(x) = 3 x - 1, dual_lr 0.5, a zero loss gradient, sgd(1)."""
  tx = optax.chain(jaxprune.dual_ascent(lambda p: 3 * p["x"] - 1, dual_lr=0.5),
                   optax.sgd(1.0))
  params = {"x": jnp.array(1.0)}
  state = tx.init(params)
  zero = {"x": jnp.array(0.0)}
  # Step 1: lambda = 0 adds nothing; g = 2, so lambda becomes 0 + 0.5 * 2.
  updates, state = tx.update(zero, state, params)
  assert float(updates["x"]) == 0.0
  assert float(state[0].multipliers[0]) == 1.0 and float(state[0].values[0]) == 2.0
  # Step 2: the gradient gets lambda * dg/dx = 1 * 3; lambda = 1 + 0.5 * 2.
  updates, state = tx.update(zero, state, params)
  assert float(updates["x"]) == -3.0
  assert float(state[0].multipliers[0]) == 2.0
  assert float(state[0].violations[0]) == 2.0
  # Feasible (g = -1 < 0): the restart sets lambda to 0 at once.
  params = {"x": jnp.array(0.0)}
  updates, state = tx.update(zero, state, params)
  assert float(updates["x"]) == -6.0  # still with the old lambda = 2
  assert float(state[0].multipliers[0]) == 0.0
  assert float(state[0].violations[0]) == 0.0
  assert int(state[0].step) == 3


def test_without_restarts_the_multiplier_descends_and_stays_nonnegative():
  tx = jaxprune.dual_ascent(lambda p: p["x"], dual_lr=1.0, dual_restarts=False)
  state = tx.init({"x": jnp.array(0.0)})
  zero = {"x": jnp.array(0.0)}
  lambdas = []
  for x in (2.0, 1.0, -0.5, -5.0, 0.5):
    _, state = tx.update(zero, state, {"x": jnp.array(x)})
    lambdas.append(float(state.multipliers[0]))
  assert lambdas == [2.0, 3.0, 2.5, 0.0, 0.5]


def test_array_and_several_constraints_get_a_multiplier_per_entry():
  constraints = [lambda p: p["w"] - 1.0, lambda p: jnp.sum(p["w"]) - 10.0]
  tx = jaxprune.dual_ascent(constraints, dual_lr=0.1)
  params = {"w": jnp.array([0.0, 2.0, 3.0])}
  state = tx.init(params)
  assert [m.shape for m in state.multipliers] == [(3,), ()]
  updates, state = tx.update({"w": jnp.zeros(3)}, state, params)
  np.testing.assert_allclose(state.multipliers[0], [0.0, 0.1, 0.2])
  assert float(state.multipliers[1]) == 0.0  # feasible: 5 <= 10
  updates, state = tx.update({"w": jnp.zeros(3)}, state, params)
  np.testing.assert_allclose(updates["w"], [0.0, 0.1, 0.2], rtol=1e-6)


def test_a_nan_constraint_value_keeps_the_multiplier():
  tx = jaxprune.dual_ascent(lambda p: jnp.log(p["x"]), dual_lr=1.0)
  state = tx.init({"x": jnp.array(1.0)})
  _, state = tx.update({"x": jnp.array(0.0)}, state, {"x": jnp.array(math.e)})
  _, state = tx.update({"x": jnp.array(0.0)}, state, {"x": jnp.array(-1.0)})
  assert float(state.multipliers[0]) == pytest.approx(1.0)
  assert math.isnan(float(state.values[0]))


@pytest.mark.parametrize("multiplier", [0.0, 2.0])
def test_a_nan_constraint_value_never_reaches_the_params(multiplier):
  # sqrt(sum(w) - 1) at sum(w) < 1: the value and its gradient are NaN.
  tx = optax.chain(
      jaxprune.dual_ascent(lambda p: jnp.sqrt(jnp.sum(p["w"]) - 1.0),
                           dual_lr=0.5),
      optax.sgd(0.1))
  params = {"w": jnp.array([0.2, 0.3])}
  state = tx.init(params)
  dual = state[0]._replace(multipliers=(jnp.float32(multiplier),))
  state = (dual, state[1])
  grads = {"w": jnp.array([1.0, -1.0])}
  updates, state = jax.jit(tx.update)(grads, state, params)
  np.testing.assert_array_equal(updates["w"], np.float32([-0.1, 0.1]))  # sgd alone
  assert float(state[0].multipliers[0]) == multiplier
  assert int(state[0].skipped) == 1
  assert math.isnan(float(state[0].values[0]))


def test_an_infinite_constraint_gradient_is_left_out():
  # sqrt(sum(w)) at sum(w) = 0: a finite value with an infinite gradient.
  tx = jaxprune.dual_ascent(lambda p: jnp.sqrt(jnp.sum(p["w"])), dual_lr=0.5)
  params = {"w": jnp.zeros(2)}
  state = tx.init(params)
  state = state._replace(multipliers=(jnp.float32(1.0),))
  updates, state = tx.update({"w": jnp.ones(2)}, state, params)
  np.testing.assert_array_equal(updates["w"], [1.0, 1.0])
  assert int(state.skipped) == 1
  updates, state = tx.update({"w": jnp.ones(2)}, state, {"w": jnp.ones(2)})
  np.testing.assert_allclose(updates["w"], 1.0 + 1.0 / (2 * np.sqrt(2.0)),
                             rtol=1e-6)
  assert int(state.skipped) == 1


def test_jit_equals_no_jit():
  tx = optax.chain(jaxprune.dual_ascent(lambda p: jnp.sum(p["w"] ** 2) - 1.0, dual_lr=0.3),
                   optax.adam(0.1))
  params = {"w": jnp.array([1.0, -2.0, 0.5])}
  grads = {"w": jnp.array([0.1, 0.2, -0.3])}
  a = b = tx.init(params)
  pa = pb = params
  for _ in range(4):
    ua, a = tx.update(grads, a, pa)
    ub, b = jax.jit(tx.update)(grads, b, pb)
    pa, pb = optax.apply_updates(pa, ua), optax.apply_updates(pb, ub)
  np.testing.assert_allclose(pa["w"], pb["w"], rtol=1e-6)
  np.testing.assert_allclose(a[0].multipliers[0], b[0].multipliers[0], rtol=1e-6)


# --- convergence to the KKT point --------------------------------------------

def test_converges_to_the_kkt_point_of_a_constrained_quadratic():
  """min ||x - a||^2 s.t. sum(x) <= 1: x* = a - lambda*/2, lambda* =
  2 (sum(a) - 1) / n."""
  a = jnp.array([1.0, 2.0, -0.5, 0.5])
  lam = 2 * (float(jnp.sum(a)) - 1) / a.size
  tx = optax.chain(
      jaxprune.dual_ascent(lambda p: jnp.sum(p["x"]) - 1.0, dual_lr=0.05,
                           dual_restarts=False),
      optax.sgd(0.05))
  step = _step(tx, lambda p: jnp.sum((p["x"] - a) ** 2))
  params = {"x": jnp.zeros(4)}
  state = tx.init(params)
  for _ in range(3000):
    params, state = step(params, state)
  np.testing.assert_allclose(params["x"], a - lam / 2, atol=1e-4)
  assert float(state[0].multipliers[0]) == pytest.approx(lam, abs=1e-4)


def test_an_inactive_constraint_leaves_the_unconstrained_optimum():
  a = jnp.array([0.1, 0.2])
  tx = optax.chain(jaxprune.dual_ascent(lambda p: jnp.sum(p["x"]) - 1.0, dual_lr=0.05),
                   optax.sgd(0.1))
  step = _step(tx, lambda p: jnp.sum((p["x"] - a) ** 2))
  params, state = {"x": jnp.zeros(2)}, tx.init({"x": jnp.zeros(2)})
  for _ in range(300):
    params, state = step(params, state)
  np.testing.assert_allclose(params["x"], a, atol=1e-5)
  assert float(state[0].multipliers[0]) == 0.0


def test_l0_gates_reach_a_density_target():
  """Least squares on 20 inputs that all matter, gated to expected density
  0.35: an active constraint, met by dropping the weakest inputs.  With
  log_alpha clipped at ln 0.01 a closed gate still counts P(z != 0) = 0.047,
  so 6 open gates give 0.332 and 7 give 0.380: the density oscillates
  around the target with 6 gates open at the end."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(256, 20)), jnp.float32)
  w_true = np.linspace(1.0, 0.05, 20, dtype=np.float32)[:, None]
  y = x @ w_true
  params = jaxprune.add_gates({"d": {"kernel": jnp.zeros((20, 1))}}, jax.random.key(0),
                              granularity="unit")
  tx = optax.chain(
      jaxprune.dual_ascent(jaxprune.density_constraint(0.35), dual_lr=5.0),
      optax.adam(0.02), jaxprune.clip_log_alpha())

  @jax.jit
  def step(params, state, key):
    def loss(p):
      w = jaxprune.apply_gates(p, key)["d"]["kernel"]
      return jnp.mean((x @ w - y) ** 2)

    updates, state = tx.update(jax.grad(loss)(params), state, params)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  for t in range(2000):
    params, state = step(params, state, jax.random.key(t))
  density = float(jaxprune.expected_density(params).model)
  assert density == pytest.approx(0.35, abs=0.015)
  kept = np.asarray(jaxprune.hard_masks(params)["d"]["kernel"])[:, 0]
  assert kept.sum() == 6 and kept[:5].all()  # the strongest stay


# --- density_constraint --------------------------------------------------------

def _two_layers():
  return {"a": {"kernel": jnp.ones((4, 3)), "log_alpha": jnp.array([-9.0, 9.0, 0.0, 1.0])},
          "b": {"kernel": jnp.ones((3, 2)), "log_alpha": jnp.zeros((3, 2))}}


def test_density_constraint_values():
  params = _two_layers()
  d = jaxprune.expected_density(params)
  model = jaxprune.density_constraint(0.4)(params)
  assert model.shape == () and float(model) == pytest.approx(float(d.model) - 0.4)
  layer = jax.jit(jaxprune.density_constraint(0.35, "layer"))(params)
  np.testing.assert_allclose(layer, [float(d.layers["a/kernel"]) - 0.35,
                                     float(d.layers["b/kernel"]) - 0.35], rtol=1e-6)
  each = jaxprune.density_constraint([0.3, 0.6], "layer")(params)
  np.testing.assert_allclose(each, [float(d.layers["a/kernel"]) - 0.3,
                                    float(d.layers["b/kernel"]) - 0.6], rtol=1e-6)


@pytest.mark.parametrize("args, match", [
    ((0.0,), r"in \(0, 1\]"),
    ((1.5,), r"in \(0, 1\]"),
    ((float("nan"),), r"in \(0, 1\]"),
    ((0.01,), "cannot be met"),
    ((0.5, "global"), "scope"),
    (([0.2, 0.3], "model"), "one target"),
])
def test_density_constraint_rejects_bad_targets(args, match):
  with pytest.raises(ValueError, match=match):
    jaxprune.density_constraint(*args)


def test_density_constraint_checks_the_number_of_layer_targets():
  with pytest.raises(ValueError, match="3 layer targets for 2 gated layers"):
    jaxprune.density_constraint([0.3, 0.3, 0.3], "layer")(_two_layers())
  assert jaxprune.density_constraint(0.01, log_alpha_range=None)(_two_layers()).shape == ()


# --- bad input ------------------------------------------------------------------

def test_dual_ascent_rejects_bad_input():
  with pytest.raises(ValueError, match="at least one constraint"):
    jaxprune.dual_ascent([], dual_lr=0.1)
  with pytest.raises(TypeError, match="^constraint 1 is not a function: got an "
                     "object of type float$"):
    jaxprune.dual_ascent([lambda p: 0.0, 3.0], dual_lr=0.1)
  with pytest.raises(TypeError, match="constraints must be"):
    jaxprune.dual_ascent(0.5, dual_lr=0.1)
  for bad in (-1.0, 0.0, float("nan")):
    with pytest.raises(ValueError, match="dual_lr must be > 0"):
      jaxprune.dual_ascent(lambda p: p["x"], dual_lr=bad)
  with pytest.raises(ValueError, match="dual_lr must be finite"):
    jaxprune.dual_ascent(lambda p: p["x"], dual_lr=float("inf"))
  tx = jaxprune.dual_ascent(lambda p: jnp.sum(p["x"] > 0), dual_lr=0.1)
  with pytest.raises(TypeError, match="floating-point"):
    tx.init({"x": jnp.ones(3)})
  tx = jaxprune.dual_ascent(lambda p: p["x"], dual_lr=0.1)
  with pytest.raises(ValueError, match="needs the params"):
    tx.update({"x": jnp.ones(3)}, tx.init({"x": jnp.ones(3)}))
  with pytest.raises(ValueError, match="returned shape"):
    tx.update({"x": jnp.ones(2)}, tx.init({"x": jnp.ones(3)}), {"x": jnp.ones(2)})


# --- the penalty baseline ----------------------------------------------------------

def test_l0_penalty_adds_the_scaled_gradient_of_the_expected_l0():
  params = _two_layers()
  tx = jaxprune.l0_penalty(0.25)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  la = np.asarray(params["a"]["log_alpha"], np.float64)
  p = 1 / (1 + np.exp(-(la - 2 / 3 * math.log(0.1 / 1.1))))
  np.testing.assert_allclose(updates["a"]["log_alpha"], 1 + 0.25 * 3 * p * (1 - p), rtol=1e-5)
  np.testing.assert_array_equal(updates["a"]["kernel"], np.ones((4, 3)))
  with pytest.raises(ValueError, match="strength must be >= 0"):
    jaxprune.l0_penalty(-0.1)
  with pytest.raises(ValueError, match="needs the params"):
    tx.update(grads, tx.init(params))
