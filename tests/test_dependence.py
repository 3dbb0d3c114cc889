"""Linear-dependence unit removal: exact folds, least-squares coefficients,
the tolerance, Linen, NNX and conv layers, annealing, bad input."""

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import small_models
from flax import nnx

import jaxprune

_MLP = functools.partial(small_models.MLP, widths=(5, 4))
_LAYERS = small_models.MLP_LAYERS


def _dependent_mlp(seed=0):
  """An MLP whose first layer is positive on positive inputs (relu is the
  identity there) and whose unit 3 is 2 * unit 0 + 0.5 * unit 1 exactly."""
  params = _MLP().init(jax.random.key(seed), jnp.zeros((1, 8)))["params"]
  rng = np.random.default_rng(seed)
  kernel = rng.uniform(0.1, 1.0, (8, 5))
  bias = rng.uniform(0.1, 0.5, 5)
  kernel[:, 3] = 2 * kernel[:, 0] + 0.5 * kernel[:, 1]
  bias[3] = 2 * bias[0] + 0.5 * bias[1]
  params = dict(params)
  params["Dense_0"] = {"kernel": jnp.asarray(kernel, jnp.float32),
                       "bias": jnp.asarray(bias, jnp.float32)}
  params["Dense_1"] = {"kernel": jnp.asarray(rng.normal(size=(5, 4)), jnp.float32),
                       "bias": jnp.asarray(rng.uniform(0.5, 1.0, 4), jnp.float32)}
  return params


def _positive_inputs(n=64, seed=1, shape=(8,)):
  return jnp.asarray(np.random.default_rng(seed).uniform(0.0, 1.0, (n, *shape)),
                     jnp.float32)


def test_an_exactly_dependent_unit_is_removed_and_the_shrunk_network_is_equal():
  params = _dependent_mlp()
  x = _positive_inputs()
  acts = jaxprune.unit_activations(_MLP(), x, layers=_LAYERS,
                                   variables={"params": params})
  assert {k: v.shape for k, v in acts.items()} == {"Dense_0": (64, 5),
                                                   "Dense_1": (64, 4)}
  found = jaxprune.linear_dependence(params, acts, layers=_LAYERS, tolerance=1e-4)
  assert found.report["Dense_0"].removed == (3,)  # the last of the set
  assert found.report["Dense_0"].residuals[0] < 1e-5
  assert found.report["Dense_1"].removed == ()
  assert found.node_masks["Dense_0"].tolist() == [True, True, True, False, True]
  small = jaxprune.shrink(found.params, found.node_masks, layers=_LAYERS)
  assert small.widths == {"Dense_0": 4, "Dense_1": 4, "Dense_2": 3}
  smaller = _MLP(widths=(4, 4))
  for inputs in (x, _positive_inputs(seed=7)):  # calibration and fresh inputs
    want = _MLP().apply({"params": params}, inputs)
    np.testing.assert_allclose(
        np.asarray(smaller.apply({"params": small.params}, inputs)),
        np.asarray(want), rtol=1e-5, atol=1e-5)
    # The folded params at full size compute the same too.
    np.testing.assert_allclose(
        np.asarray(_MLP().apply({"params": found.params}, inputs)),
        np.asarray(want), rtol=1e-5, atol=1e-5)
  print(found.report["Dense_0"])


def _near_dependent(noise, seed=0, rows=200):
  """Activations of 6 units, unit 5 = a_0 - 0.7 a_2 + 0.3 + noise * e."""
  rng = np.random.default_rng(seed)
  a = np.maximum(rng.normal(size=(rows, 6)), 0) + rng.uniform(0, 0.2, (rows, 6))
  a[:, 5] = a[:, 0] - 0.7 * a[:, 2] + 0.3 + noise * rng.normal(size=rows)
  params = {"h": {"kernel": jnp.asarray(rng.normal(size=(3, 6)), jnp.float32),
                  "bias": jnp.zeros(6)},
            "o": {"kernel": jnp.asarray(rng.normal(size=(6, 2)), jnp.float32),
                  "bias": jnp.asarray(rng.normal(size=2), jnp.float32)}}
  return params, a


def _lstsq(a, j, others, intercept=True):
  design = a[:, others]
  if intercept:
    design = np.concatenate([design, np.ones((len(a), 1))], 1)
  solution, *_ = np.linalg.lstsq(design, a[:, j], rcond=None)
  residual = np.linalg.norm(a[:, j] - design @ solution) / np.linalg.norm(a[:, j])
  return solution, residual


@pytest.mark.parametrize("intercept", [True, False])
def test_fold_coefficients_are_numpys_least_squares(intercept):
  params, a = _near_dependent(noise=0.02)
  found = jaxprune.linear_dependence(params, {"h": a}, layers=["h", "o"],
                                     tolerance=0.2, max_removed=1,
                                     intercept=intercept)
  report = found.report["h"]
  (j,) = report.removed
  others = [i for i in range(6) if i != j]
  solution, residual = _lstsq(a, j, others, intercept)
  want = np.zeros(6)
  want[others] = solution[:5]
  np.testing.assert_allclose(report.coefficients[0], want, rtol=1e-9, atol=1e-12)
  assert report.intercepts[0] == pytest.approx(solution[5] if intercept else 0.0)
  assert report.residuals[0] == pytest.approx(residual)
  # No other unit is better predicted by the rest.
  for k in others:
    assert _lstsq(a, k, [i for i in range(6) if i != k], intercept)[1] >= residual
  kernel = np.asarray(params["o"]["kernel"], np.float64)
  folded = kernel + want[:, None] * kernel[j][None]
  folded[j] = 0
  np.testing.assert_allclose(np.asarray(found.params["o"]["kernel"]), folded,
                             rtol=1e-5, atol=1e-6)
  bias = np.asarray(params["o"]["bias"]) + (solution[5] if intercept else 0) * kernel[j]
  np.testing.assert_allclose(np.asarray(found.params["o"]["bias"]), bias,
                             rtol=1e-5, atol=1e-6)
  assert report.next_residual is None  # stopped by max_removed


def test_the_tolerance_decides_a_near_dependent_unit():
  params, a = _near_dependent(noise=0.05)
  _, residual = _lstsq(a, 5, [0, 1, 2, 3, 4])
  assert 0.01 < residual < 0.2
  loose = jaxprune.linear_dependence(params, {"h": a}, layers=["h", "o"],
                                     tolerance=1.1 * residual)
  assert loose.report["h"].removed[0] == 5
  assert loose.report["h"].residuals[0] == pytest.approx(residual)
  tight = jaxprune.linear_dependence(params, {"h": a}, layers=["h", "o"],
                                     tolerance=0.9 * residual)
  assert tight.report["h"].removed == ()
  assert tight.report["h"].next_residual == pytest.approx(residual)
  assert tight.node_masks["h"].all()
  np.testing.assert_array_equal(np.asarray(tight.params["o"]["kernel"]),
                                np.asarray(params["o"]["kernel"]))


def test_independent_units_are_all_kept_and_dead_ones_removed():
  rng = np.random.default_rng(3)
  a = np.maximum(rng.normal(size=(300, 8)), 0)
  params = {"h": {"kernel": jnp.ones((2, 8)), "bias": jnp.zeros(8)},
            "o": {"kernel": jnp.ones((8, 1)), "bias": jnp.zeros(1)}}
  found = jaxprune.linear_dependence(params, {"h": a}, layers=["h", "o"],
                                     tolerance=0.05)
  assert found.report["h"].removed == () and found.report["h"].kept == 8
  assert found.report["h"].next_residual > 0.5
  a[:, 2] = 0.0  # a dead unit: removed, residual 0, nothing folded
  found = jaxprune.linear_dependence(params, {"h": a}, layers=["h", "o"],
                                     tolerance=0.0)
  assert found.report["h"].removed == (2,)
  assert found.report["h"].residuals == (0.0,)
  assert np.asarray(found.params["o"]["kernel"])[:, 0].tolist() == [
      1, 1, 0, 1, 1, 1, 1, 1]


def test_every_layer_keeps_one_unit_and_max_removed_caps():
  a = np.outer(np.linspace(1, 2, 10), np.arange(1, 5))  # four multiples of one
  params = {"h": {"kernel": jnp.ones((2, 4)), "bias": jnp.zeros(4)},
            "o": {"kernel": jnp.ones((4, 1)), "bias": jnp.zeros(1)}}
  found = jaxprune.linear_dependence(params, {"h": a}, layers=["h", "o"],
                                     tolerance=1e-6)
  assert found.report["h"].kept == 1 and found.report["h"].removed == (3, 2, 1)
  assert np.asarray(found.params["o"]["kernel"])[:, 0] == pytest.approx(
      [10.0, 0, 0, 0], abs=1e-4)  # 1 + 2 + 3 + 4 times unit 0
  capped = jaxprune.linear_dependence(params, {"h": a}, layers=["h", "o"],
                                      tolerance=1e-6, max_removed=2)
  assert capped.report["h"].removed == (3, 2)
  # Units removed before neither go again nor predict.
  again = jaxprune.linear_dependence(
      capped.params, {"h": a}, layers=["h", "o"], tolerance=1e-6,
      node_masks=capped.node_masks)
  assert again.report["h"].removed == (1,)
  assert again.node_masks["h"].tolist() == [True, False, False, False]


class _NnxMLP(nnx.Module):
  def __init__(self, rngs, hidden=5):
    self.hidden = nnx.Linear(8, hidden, rngs=rngs)
    self.out = nnx.Linear(hidden, 3, rngs=rngs)

  def __call__(self, x):
    return self.out(nnx.relu(self.hidden(x)))


def test_nnx_model_is_folded_in_place_and_shrinks():
  model = _NnxMLP(nnx.Rngs(0))
  linen = _dependent_mlp()
  model.hidden.kernel.set_value(linen["Dense_0"]["kernel"])
  model.hidden.bias.set_value(linen["Dense_0"]["bias"])
  x = _positive_inputs()
  want = model(x)
  acts = jaxprune.unit_activations(model, x, layers=["hidden", "out"])
  assert acts["hidden"].shape == (64, 5)
  assert isinstance(model.out, nnx.Linear)  # the model is left as it was
  found = jaxprune.linear_dependence(model, acts, layers=["hidden", "out"],
                                     tolerance=1e-4)
  assert found.report["hidden"].removed == (3,)
  np.testing.assert_allclose(np.asarray(model.out.kernel.get_value()),
                             np.asarray(found.params["out"]["kernel"]))
  np.testing.assert_allclose(np.asarray(model(x)), np.asarray(want), atol=1e-5)
  shrunk = jaxprune.shrink(model, found.node_masks, layers=["hidden", "out"])
  small = _NnxMLP(nnx.Rngs(1), hidden=shrunk.widths["hidden"])
  shrunk.load_into(small)
  np.testing.assert_allclose(np.asarray(small(x)), np.asarray(want), rtol=1e-5,
                             atol=1e-5)


class _ConvNet(nn.Module):
  """conv - relu - avg pool - conv - relu - flatten - dense - dense."""

  widths: Sequence[int] = (4, 4, 6)

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(self.widths[0], (3, 3), padding="VALID")(x))
    x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = nn.relu(nn.Conv(self.widths[1], (2, 2), padding="VALID")(x))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(self.widths[2])(x))
    return nn.Dense(2)(x)


_CONV_LAYERS = ["Conv_0", "Conv_1", "Dense_0", "Dense_1"]


def test_conv_channels_fold_into_the_next_conv_and_the_flattened_dense():
  model = _ConvNet()
  x = _positive_inputs(16, shape=(10, 10, 2))
  params = dict(model.init(jax.random.key(0), x[:1])["params"])
  rng = np.random.default_rng(0)
  for name, combination in (("Conv_0", (2.0, 0.5)), ("Conv_1", (1.0, 3.0))):
    kernel = rng.uniform(0.1, 1.0, np.shape(params[name]["kernel"]))
    bias = rng.uniform(0.1, 0.5, np.shape(params[name]["bias"]))
    kernel[..., 3] = combination[0] * kernel[..., 0] + combination[1] * kernel[..., 2]
    bias[3] = combination[0] * bias[0] + combination[1] * bias[2]
    params[name] = {"kernel": jnp.asarray(kernel, jnp.float32),
                    "bias": jnp.asarray(bias, jnp.float32)}
  acts = jaxprune.unit_activations(model, x, layers=_CONV_LAYERS,
                                   variables={"params": params})
  # Conv_0: 16 samples x 4 x 4 pooled positions; Conv_1: x 3 x 3, flattened.
  assert acts["Conv_0"].shape == (256, 4) and acts["Conv_1"].shape == (144, 4)
  # Dense_0's units are left alone: on 16 samples some are dead (all 0),
  # which the calibration set cannot tell from units dead on every input.
  found = jaxprune.linear_dependence(
      params, {name: acts[name] for name in ("Conv_0", "Conv_1")},
      layers=_CONV_LAYERS, tolerance=1e-4)
  assert found.report["Dense_0"].removed == ()
  assert found.report["Conv_0"].removed == (3,)
  assert found.report["Conv_1"].removed == (3,)
  small = jaxprune.shrink(found.params, found.node_masks, layers=_CONV_LAYERS)
  assert small.params["Dense_0"]["kernel"].shape == (27, small.widths["Dense_0"])
  smaller = _ConvNet(widths=(3, 3, small.widths["Dense_0"]))
  for inputs in (x, _positive_inputs(4, seed=9, shape=(10, 10, 2))):
    np.testing.assert_allclose(
        np.asarray(smaller.apply({"params": small.params}, inputs)),
        np.asarray(model.apply({"params": params}, inputs)), rtol=1e-4, atol=1e-5)


def test_annealing_during_training_keeps_removed_units_cut_off():
  params = _dependent_mlp()
  x = _positive_inputs()
  y = jnp.asarray(np.arange(64) % 3, jnp.int32)
  model = _MLP()

  def loss_fn(p):
    return optax.softmax_cross_entropy_with_integer_labels(
        model.apply({"params": p}, x), y).mean()

  all_kept = jax.tree.map(lambda p: jnp.ones(p.shape, bool) if p.ndim == 2 else None,
                          params)
  tx = jaxprune.prune(optax.adam(1e-2), masks=all_kept)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state):
    updates, opt_state = tx.update(jax.grad(loss_fn)(params), opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  schedule = jaxprune.dependence_schedule(1e-4, 1e-2, begin_step=0, frequency=4,
                                          events=2)
  assert schedule.steps == (0, 4)
  node_masks = None
  for i in range(8):
    if i in schedule.steps:
      acts = jaxprune.unit_activations(model, x, layers=_LAYERS,
                                       variables={"params": params})
      found = jaxprune.linear_dependence(
          params, acts, layers=_LAYERS, node_masks=node_masks,
          tolerance=schedule.tolerances[schedule.steps.index(i)])
      params, node_masks = found.params, found.node_masks
      opt_state = jaxprune.replace_masks(opt_state, jaxprune.node_weight_masks(
          jaxprune.masks_of(opt_state), node_masks, layers=_LAYERS))
    params, opt_state = step(params, opt_state)
  assert not node_masks["Dense_0"][3]
  # The next layer's rows of the removed units stayed 0 through Adam's steps.
  for name, following in zip(_LAYERS, _LAYERS[1:]):
    removed = ~np.asarray(node_masks[name])
    assert not np.asarray(params[following]["kernel"])[removed].any()
  small = jaxprune.shrink(params, node_masks, layers=_LAYERS)
  widths = (small.widths["Dense_0"], small.widths["Dense_1"])
  np.testing.assert_allclose(
      np.asarray(_MLP(widths=widths).apply({"params": small.params}, x)),
      np.asarray(model.apply({"params": params}, x)), rtol=1e-5, atol=1e-5)


def test_bad_input_is_named():
  params, a = _near_dependent(0.0)
  layers = ["h", "o"]
  with pytest.raises(ValueError, match="'nope', which is not a hidden layer"):
    jaxprune.linear_dependence(params, {"nope": a}, layers=layers, tolerance=0.1)
  with pytest.raises(ValueError, match="'o', which is not a hidden layer"):
    jaxprune.linear_dependence(params, {"o": a}, layers=layers, tolerance=0.1)
  with pytest.raises(ValueError, match=r"shape \(200, 5\).*6 units"):
    jaxprune.linear_dependence(params, {"h": a[:, :5]}, layers=layers,
                               tolerance=0.1)
  with pytest.raises(ValueError, match=r"shape \(6,\)"):
    jaxprune.linear_dependence(params, {"h": a[0]}, layers=layers, tolerance=0.1)
  with pytest.raises(ValueError, match="tolerance of 'h' must be .* >= 0"):
    jaxprune.linear_dependence(params, {"h": a}, layers=layers, tolerance=-0.1)
  with pytest.raises(ValueError, match="tolerance of 'h'"):
    jaxprune.linear_dependence(params, {"h": a}, layers=layers,
                               tolerance=float("nan"))
  with pytest.raises(ValueError, match="layer 'x' is not a top-level entry"):
    jaxprune.linear_dependence(params, {"h": a}, layers=["h", "x"], tolerance=0.1)
  with pytest.raises(ValueError, match="not all finite"):
    jaxprune.linear_dependence(params, {"h": a * np.nan}, layers=layers,
                               tolerance=0.1)
  no_bias = {**params, "o": {"kernel": params["o"]["kernel"]}}
  with pytest.raises(ValueError, match="'o' has no bias.*intercept=False"):
    jaxprune.linear_dependence(no_bias, {"h": a}, layers=layers, tolerance=0.1)
  jaxprune.linear_dependence(no_bias, {"h": a}, layers=layers, tolerance=0.1,
                             intercept=False)
  with pytest.raises(ValueError, match="node mask of 'h' must be bool"):
    jaxprune.linear_dependence(params, {"h": a}, layers=layers, tolerance=0.1,
                               node_masks={"h": np.ones(6)})
  with pytest.raises(ValueError, match="max_removed"):
    jaxprune.linear_dependence(params, {"h": a}, layers=layers, tolerance=0.1,
                               max_removed=-1)
  with pytest.raises(ValueError, match="'Dense_7'"):
    jaxprune.unit_activations(_MLP(), _positive_inputs(), layers=["Dense_0", "Dense_7"],
                              variables={"params": _dependent_mlp()})
  with pytest.raises(ValueError, match="variables"):
    jaxprune.unit_activations(_MLP(), _positive_inputs(), layers=_LAYERS)
  with pytest.raises(ValueError, match="initial must be a tolerance > 0"):
    jaxprune.dependence_schedule(0.0, 0.1, begin_step=0, frequency=1, events=2)
  with pytest.raises(ValueError, match="no kernel mask for layer 'o'"):
    jaxprune.node_weight_masks({"h": {"kernel": jnp.ones((3, 6), bool)}},
                               {"h": np.ones(6, bool)}, layers=layers)


class _NormMLP(nn.Module):
  widths: Sequence[int] = (5,)

  @nn.compact
  def __call__(self, x):
    x = nn.Dense(self.widths[0])(x)
    x = nn.relu(nn.BatchNorm(use_running_average=True)(x))
    return nn.Dense(3)(x)


def test_batch_norm_between_the_layers_is_folded_through_and_shrunk():
  model = _NormMLP()
  x = _positive_inputs()
  variables = model.init(jax.random.key(0), x[:1])
  params = dict(variables["params"])
  params["Dense_0"] = _dependent_mlp()["Dense_0"]
  rng = np.random.default_rng(2)
  # Positive after the norm (relu is the identity): a large bias, small scale.
  params["BatchNorm_0"] = {"scale": jnp.asarray(rng.uniform(0.1, 0.3, 5), jnp.float32),
                           "bias": jnp.asarray(rng.uniform(5, 6, 5), jnp.float32)}
  stats = {"BatchNorm_0": {"mean": jnp.asarray(rng.normal(size=5), jnp.float32),
                           "var": jnp.asarray(rng.uniform(0.5, 2, 5), jnp.float32)}}
  full = {"params": params, "batch_stats": stats}
  acts = jaxprune.unit_activations(model, x, layers=["Dense_0", "Dense_1"],
                                   variables=full)
  found = jaxprune.linear_dependence(params, acts, layers=["Dense_0", "Dense_1"],
                                     norms={"Dense_0": "BatchNorm_0"}, tolerance=1e-4)
  assert found.report["Dense_0"].removed == (3,)
  assert float(found.params["BatchNorm_0"]["scale"][3]) == 0.0
  small = jaxprune.shrink(found.params, found.node_masks, layers=["Dense_0", "Dense_1"],
                          norms={"Dense_0": "BatchNorm_0"}, batch_stats=stats)
  got = _NormMLP(widths=(4,)).apply(
      {"params": small.params, "batch_stats": small.batch_stats}, x)
  np.testing.assert_allclose(np.asarray(got), np.asarray(model.apply(full, x)),
                             rtol=1e-5, atol=1e-4)
