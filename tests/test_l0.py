"""L0 gates: sampling statistics, test-time gates, expected density, placement."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxprune

BETA, GAMMA, ZETA = 2 / 3, -0.1, 1.1


def _sigmoid(x):
  return 1 / (1 + np.exp(-x))


def _p_nonzero(log_alpha):
  return _sigmoid(np.asarray(log_alpha, np.float64) - BETA * math.log(-GAMMA / ZETA))


def _test_gate(log_alpha, louizos=False):
  la = np.asarray(log_alpha, np.float64)
  s = _sigmoid(la if louizos else la / BETA)
  return np.clip(s * (ZETA - GAMMA) + GAMMA, 0, 1)


def _gated_tree():
  """A weight-gated dense kernel, an input-gated dense kernel, a filter-gated
  conv with a bias, and an ungated leaf."""
  rng = np.random.default_rng(0)
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  return {
      "unstructured": {"kernel": f32(rng.normal(size=(4, 3))),
                       "log_alpha": f32(rng.normal(size=(4, 3)) * 3)},
      "dense": {"kernel": f32(rng.normal(size=(5, 6))), "bias": f32(rng.normal(size=6)),
                "log_alpha": f32([-9.0, -1.0, 0.0, 2.0, 9.0])},
      "conv": {"kernel": f32(rng.normal(size=(3, 3, 2, 4))), "bias": f32(rng.normal(size=4)),
               "log_alpha": f32([-9.0, -2.5, 1.0, 6.0])},
      "scale": f32(rng.normal(size=(7,))),
  }


# --- the gate distribution -------------------------------------------------

@pytest.mark.parametrize("log_alpha", [-3.0, -1.0, 0.0, 1.5, 4.0])
def test_sampled_gates_match_the_closed_form_probabilities(log_alpha):
  n = 200_000
  z = np.asarray(jaxprune._l0.sample_gates(
      jnp.full((n,), log_alpha, jnp.float32), jax.random.key(3)))
  assert np.all((z >= 0) & (z <= 1))
  # P(z != 0), and P(z == 1) = 1 - Q(s <= (1 - gamma) / (zeta - gamma)).
  p_nonzero = _p_nonzero(log_alpha)
  t = (1 - GAMMA) / (ZETA - GAMMA)
  p_one = 1 - _sigmoid(BETA * math.log(t / (1 - t)) - log_alpha)
  for observed, expected in ((np.mean(z != 0), p_nonzero), (np.mean(z == 1), p_one)):
    sigma = math.sqrt(expected * (1 - expected) / n)
    assert abs(observed - expected) < 4 * sigma + 1e-6


def test_sampled_gates_are_reproducible_and_differentiable():
  la = jnp.linspace(-2.0, 2.0, 64)
  a = jaxprune._l0.sample_gates(la, jax.random.key(1))
  np.testing.assert_array_equal(a, jaxprune._l0.sample_gates(la, jax.random.key(1)))
  assert not np.array_equal(a, jaxprune._l0.sample_gates(la, jax.random.key(2)))
  grad = jax.grad(lambda la: jnp.sum(jaxprune._l0.sample_gates(la, jax.random.key(1))))(la)
  assert np.all(np.isfinite(grad)) and np.any(grad > 0)


@pytest.mark.parametrize("louizos", [False, True])
def test_test_time_gates_follow_the_formula(louizos):
  la = np.linspace(-8.0, 8.0, 101).astype(np.float32)
  got = jaxprune._l0.deterministic_gates(jnp.asarray(la), louizos)
  np.testing.assert_allclose(got, _test_gate(la, louizos), atol=1e-6)
  # A gate is exactly zero for log_alpha far below zero.
  assert float(got[0]) == 0.0 and float(got[-1]) == 1.0


# --- add_gates -------------------------------------------------------------

def test_add_gates_places_log_alpha_beside_each_kernel():
  params = {"Dense_0": {"kernel": jnp.ones((784, 30)), "bias": jnp.zeros(30)},
            "Conv_0": {"kernel": jnp.ones((5, 5, 1, 8)), "bias": jnp.zeros(8)},
            "other": {"w": jnp.ones((3, 3))}}
  gated = jaxprune.add_gates(params, jax.random.key(0), granularity="unit")
  assert gated["Dense_0"]["log_alpha"].shape == (784,)
  assert gated["Conv_0"]["log_alpha"].shape == (8,)
  assert gated["other"]["w_log_alpha"].shape == (3,)
  for name in params:  # the original leaves are kept as they were
    for key, leaf in params[name].items():
      assert gated[name][key] is leaf
  weights = jaxprune.add_gates(params, jax.random.key(0), granularity="weight")
  assert weights["Conv_0"]["log_alpha"].shape == (5, 5, 1, 8)


def test_add_gates_draws_the_published_initialisation():
  params = {"a": {"kernel": jnp.ones((2000, 50))}, "b": {"kernel": jnp.ones((50, 10))}}
  gated = jaxprune.add_gates(
      params, jax.random.key(0), granularity="weight",
      drop_rate=lambda path, leaf: 0.2 if path[0] == "a" else 0.5)
  a = np.asarray(gated["a"]["log_alpha"])
  assert a.mean() == pytest.approx(math.log(0.8 / 0.2), abs=1e-3)
  assert a.std() == pytest.approx(0.01, rel=0.05)
  assert np.asarray(gated["b"]["log_alpha"]).mean() == pytest.approx(0.0, abs=2e-3)


@pytest.mark.parametrize("granularity", ["unit", "weight"])
def test_rescale_weights_divides_what_each_gate_multiplies_by_its_keep_rate(
    granularity):
  # Gallego-Posada et al.: w / (1 - d0) where the gates are made, so that
  # weights doubled at d0 = 0.5 and multiplied by gates near 0.5 start at
  # their ungated scale.
  rng = np.random.default_rng(0)
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  params = {"Dense_0": {"kernel": f32(rng.normal(size=(6, 4))),
                        "bias": f32(rng.normal(size=4))},
            "Conv_0": {"kernel": f32(rng.normal(size=(3, 3, 1, 5))),
                       "bias": f32(rng.normal(size=5))}}
  drop = {"Dense_0": 0.2, "Conv_0": 0.5}
  kwargs = dict(granularity=granularity,
                drop_rate=lambda path, leaf: drop[path[0]])
  plain = jaxprune.add_gates(params, jax.random.key(0), **kwargs)
  scaled = jaxprune.add_gates(params, jax.random.key(0), rescale_weights=True,
                              **kwargs)
  for name, d0 in drop.items():
    np.testing.assert_array_equal(plain[name]["kernel"], params[name]["kernel"])
    np.testing.assert_allclose(scaled[name]["kernel"],
                               np.asarray(params[name]["kernel"]) / (1 - d0),
                               rtol=1e-6)
    assert scaled[name]["kernel"].dtype == jnp.float32
    np.testing.assert_array_equal(scaled[name]["log_alpha"],
                                  plain[name]["log_alpha"])
  # Only a filter gate multiplies the bias beside its kernel.
  np.testing.assert_array_equal(scaled["Dense_0"]["bias"],
                                params["Dense_0"]["bias"])
  conv_bias = np.asarray(params["Conv_0"]["bias"])
  np.testing.assert_allclose(
      scaled["Conv_0"]["bias"],
      conv_bias / 0.5 if granularity == "unit" else conv_bias, rtol=1e-6)


def test_granularity_can_be_chosen_per_leaf():
  params = {"Conv_0": {"kernel": jnp.ones((3, 3, 1, 4))}, "Dense_0": {"kernel": jnp.ones((8, 2))}}
  gated = jaxprune.add_gates(
      params, jax.random.key(0),
      granularity=lambda path, leaf: "unit" if path[0] == "Conv_0" else None)
  assert gated["Conv_0"]["log_alpha"].shape == (4,)
  assert "log_alpha" not in gated["Dense_0"]


@pytest.mark.parametrize("kwargs, error, match", [
    ({"granularity": "row"}, ValueError, "unknown gate granularity"),
    ({"drop_rate": 0.0}, ValueError, r"drop rate .* must be in \(0, 1\)"),
    ({"drop_rate": 1.5}, ValueError, "drop rate"),
    ({"gated": lambda path, leaf: False}, ValueError, "no leaf"),
])
def test_add_gates_rejects_bad_arguments(kwargs, error, match):
  params = {"d": {"kernel": jnp.ones((3, 2))}}
  with pytest.raises(error, match=match):
    jaxprune.add_gates(params, jax.random.key(0), **kwargs)


def test_add_gates_rejects_bad_trees():
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="not an entry of a dict"):
    jaxprune.add_gates([jnp.ones((3, 2))], key)
  with pytest.raises(TypeError, match="only floating-point"):
    jaxprune.add_gates({"d": {"kernel": jnp.ones((3, 2), jnp.int32)}}, key,
                       gated=lambda path, leaf: True)
  with pytest.raises(ValueError, match="already has a gate"):
    jaxprune.add_gates({"d": {"kernel": jnp.ones((3, 2)), "log_alpha": jnp.zeros(3)}},
                       key, gated=lambda path, leaf: path[-1] == "kernel")
  with pytest.raises(ValueError, match="'unit' gates need"):
    jaxprune.add_gates({"d": {"scale": jnp.ones(3)}}, key, granularity="unit",
                       gated=lambda path, leaf: True)


# --- apply_gates, hard_masks ----------------------------------------------

def _numpy_gated(params, gates):
  out = {k: dict(v) if isinstance(v, dict) else v for k, v in params.items()}
  for layer in ("unstructured", "dense", "conv"):
    out[layer].pop("log_alpha")
  out["unstructured"]["kernel"] = (
      np.asarray(params["unstructured"]["kernel"]) * gates["unstructured"])
  out["dense"]["kernel"] = np.asarray(params["dense"]["kernel"]) * gates["dense"][:, None]
  out["conv"]["kernel"] = np.asarray(params["conv"]["kernel"]) * gates["conv"]
  out["conv"]["bias"] = np.asarray(params["conv"]["bias"]) * gates["conv"]
  return out


def test_apply_gates_at_test_time_multiplies_each_group():
  params = _gated_tree()
  got = jax.jit(jaxprune.apply_gates)(params)
  gates = {k: _test_gate(params[k]["log_alpha"]) for k in ("unstructured", "dense", "conv")}
  expected = _numpy_gated(params, gates)
  assert jax.tree.structure(got) == jax.tree.structure(expected)
  for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
    np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-7)
  # The dense layer's bias is not gated by input-neuron gates.
  np.testing.assert_array_equal(got["dense"]["bias"], params["dense"]["bias"])


def test_apply_gates_in_training_samples_from_the_key():
  params = _gated_tree()
  a = jaxprune.apply_gates(params, jax.random.key(0))
  b = jax.jit(jaxprune.apply_gates)(params, jax.random.key(0))
  c = jaxprune.apply_gates(params, jax.random.key(1))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-6)
  assert not np.array_equal(a["dense"]["kernel"], c["dense"]["kernel"])
  # Strongly closed gates (log_alpha = -9) are zero in every sample.
  assert np.all(np.asarray(a["dense"]["kernel"])[0] == 0)
  assert np.all(np.asarray(a["conv"]["kernel"])[..., 0] == 0)
  assert float(a["conv"]["bias"][0]) == 0.0


def test_hard_masks_are_where_the_test_time_gate_is_nonzero():
  params = _gated_tree()
  masks = jaxprune.hard_masks(params)
  assert masks["scale"] is None and masks["dense"]["bias"] is None
  np.testing.assert_array_equal(
      masks["unstructured"]["kernel"], _test_gate(params["unstructured"]["log_alpha"]) > 0)
  np.testing.assert_array_equal(masks["dense"]["kernel"][:, 0], [False, True, True, True, True])
  assert masks["dense"]["kernel"].shape == (5, 6)
  np.testing.assert_array_equal(masks["conv"]["bias"], [False, False, True, True])
  report = jaxprune.sparsity(masks)
  assert 0 < float(report.global_sparsity) < 1


def test_hard_masks_of_nan_gates_raise_or_count_as_kept_under_jit():
  params = _gated_tree()
  log_alpha = np.asarray(params["dense"]["log_alpha"]).copy()
  log_alpha[[1, 3]] = np.nan
  params["dense"]["log_alpha"] = jnp.asarray(log_alpha)
  with pytest.raises(ValueError, match=r"dense/log_alpha holds NaN at 2 of 5"):
    jaxprune.hard_masks(params)
  masks = jax.jit(jaxprune.hard_masks)(params)  # the documented fallback
  assert np.all(np.asarray(masks["dense"]["kernel"])[[1, 3]])


def test_gated_flax_models_compute_the_gated_network():
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
  conv = nn.Conv(4, (3, 3))
  params = jaxprune.add_gates(conv.init(jax.random.key(1), x)["params"],
                              jax.random.key(2), granularity="unit")
  params["log_alpha"] = jnp.array([-9.0, 0.0, 1.0, 9.0])
  z = jaxprune._l0.deterministic_gates(params["log_alpha"])
  plain = {k: v for k, v in params.items() if k != "log_alpha"}
  np.testing.assert_allclose(
      conv.apply({"params": jaxprune.apply_gates(params)}, x),
      conv.apply({"params": plain}, x) * z[None, None, None, :], rtol=1e-5, atol=1e-6)

  x = jax.random.normal(jax.random.key(0), (2, 5))
  dense = nn.Dense(3)
  params = jaxprune.add_gates(dense.init(jax.random.key(1), x)["params"],
                              jax.random.key(2), granularity="unit")
  z = jaxprune._l0.deterministic_gates(params["log_alpha"])
  plain = {k: v for k, v in params.items() if k != "log_alpha"}
  np.testing.assert_allclose(
      dense.apply({"params": jaxprune.apply_gates(params)}, x),
      dense.apply({"params": plain}, x * z[None, :]), rtol=1e-5, atol=1e-6)


def test_gate_functions_reject_params_without_gates():
  params = {"d": {"kernel": jnp.ones((3, 2))}}
  for fn in (jaxprune.apply_gates, jaxprune.hard_masks, jaxprune.expected_density,
             jaxprune.gate_labels):
    with pytest.raises(ValueError, match="no L0 gate"):
      fn(params)
  with pytest.raises(ValueError, match="fits none of the gate granularities"):
    jaxprune.apply_gates({"d": {"kernel": jnp.ones((3, 2)), "log_alpha": jnp.zeros(2)}})


# --- expected density -------------------------------------------------------

def test_expected_density_against_numpy():
  params = _gated_tree()
  density = jax.jit(jaxprune.expected_density)(params)
  p = {k: _p_nonzero(params[k]["log_alpha"]) for k in ("unstructured", "dense", "conv")}
  group = {"unstructured": 1, "dense": 6, "conv": 3 * 3 * 2 + 1}
  sizes = {k: p[k].size * group[k] for k in p}
  layers = {k: float(np.sum(p[k]) * group[k] / sizes[k]) for k in p}
  assert density.sizes == {f"{k}/kernel": v for k, v in sizes.items()}
  assert list(density.layers) == ["conv/kernel", "dense/kernel", "unstructured/kernel"]
  for k in p:
    assert float(density.layers[f"{k}/kernel"]) == pytest.approx(layers[k], rel=1e-5)
  model = sum(layers[k] * sizes[k] for k in p) / sum(sizes.values())
  assert float(density.model) == pytest.approx(model, rel=1e-5)
  assert float(jaxprune.expected_l0(params)) == pytest.approx(
      sum(layers[k] * sizes[k] for k in p), rel=1e-5)


def test_expected_density_is_differentiable_in_log_alpha_only():
  params = _gated_tree()
  grads = jax.grad(lambda p: jaxprune.expected_density(p).model)(params)
  la = np.asarray(params["dense"]["log_alpha"], np.float64)
  p = _p_nonzero(la)
  total = 12 + 30 + 4 * 19
  np.testing.assert_allclose(grads["dense"]["log_alpha"], p * (1 - p) * 6 / total,
                             rtol=1e-4, atol=1e-8)
  assert not np.any(np.asarray(grads["dense"]["kernel"]))


# --- clip_log_alpha, gate_labels --------------------------------------------

def test_clip_log_alpha_keeps_gates_in_range_and_leaves_the_rest():
  params = _gated_tree()
  grads = jax.tree.map(lambda p: jnp.full_like(p, 100.0), params)
  tx = optax.chain(optax.sgd(1.0), jaxprune.clip_log_alpha())
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  low = math.log(0.01)
  for k in ("unstructured", "dense", "conv"):
    np.testing.assert_allclose(new[k]["log_alpha"], low, rtol=1e-6)
    np.testing.assert_allclose(new[k]["kernel"], np.asarray(params[k]["kernel"]) - 100, rtol=1e-6)
  with pytest.raises(ValueError, match="needs the params"):
    tx.update(grads, tx.init(params))
  with pytest.raises(ValueError, match="lower < upper"):
    jaxprune.clip_log_alpha(1.0, 0.0)


def test_gate_labels_partition_gates_from_weights():
  params = _gated_tree()
  labels = jaxprune.gate_labels(params)
  assert labels["dense"] == {"kernel": "weights", "bias": "weights", "log_alpha": "gates"}
  assert labels["scale"] == "weights"
  tx = optax.partition({"weights": optax.sgd(0.0), "gates": optax.sgd(1.0)},
                       jaxprune.gate_labels)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  assert float(jnp.abs(updates["dense"]["kernel"]).max()) == 0.0
  np.testing.assert_array_equal(updates["dense"]["log_alpha"], -np.ones(5))
