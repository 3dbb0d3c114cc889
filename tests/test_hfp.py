"""Hardware-aware filter pruning: the latency table, information gain against
numpy, Opti-Cut's stopping and order, shrinking, Linen and NNX, bad input."""

import functools
import itertools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import small_models
from flax import nnx

import jaxprune

_MLP = functools.partial(small_models.MLP, widths=(6, 5))
_LAYERS = small_models.MLP_LAYERS


class _ConvNet(nn.Module):
  """conv 4 -> batch norm -> relu -> pool -> dense 5 -> relu -> dense 3."""

  widths: tuple = (4, 5)

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.widths[0], (3, 3))(x)
    x = nn.relu(nn.BatchNorm(use_running_average=True)(x))
    x = nn.max_pool(x, (2, 2), (2, 2)).reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(self.widths[1])(x))
    return nn.Dense(3)(x)


_CONV_LAYERS = ["Conv_0", "Dense_0", "Dense_1"]
_NORMS = {"Conv_0": "BatchNorm_0"}


class _NnxMLP(nnx.Module):
  def __init__(self, rngs, hidden=6):
    self.hidden = nnx.Linear(4, hidden, rngs=rngs)
    self.out = nnx.Linear(hidden, 3, rngs=rngs)

  def __call__(self, x):
    return self.out(nnx.relu(self.hidden(x)))


def _fake(fn, weights, x):
  """A fake measure: a number that encodes (input width, output width)."""
  return float(x.shape[-1] * 1000 + jax.eval_shape(fn, weights, x).shape[-1])


def _linen_mlp(seed=0):
  variables = _MLP().init(jax.random.key(seed), jnp.zeros((1, 4)))
  return _MLP(), variables


def _inputs(shape=(16, 4), seed=1):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _bilinear(xs, ys, table, x, y):
  """Bilinear interpolation written out: np.interp along each axis."""
  column = [np.interp(y, ys, row) for row in table]
  return float(np.interp(x, xs, column)) if len(xs) > 1 else column[0]


# The latency table.

def test_table_entries_are_the_measured_values_and_predict_interpolates():
  model, variables = _linen_mlp()
  table = jaxprune.latency_table(model, _inputs(), layers=_LAYERS,
                                 variables=variables, widths={"Dense_1": [3]},
                                 measure=_fake)
  assert table.layers == tuple(_LAYERS)
  assert table.inputs["Dense_0"].tolist() == [4]
  assert table.outputs["Dense_0"].tolist() == [1, 2, 3, 4, 5, 6]  # 8 points > 6
  assert table.outputs["Dense_1"].tolist() == [1, 3, 5]  # 1 and full added
  assert table.inputs["Dense_2"].tolist() == [1, 3, 5]
  assert table.outputs["Dense_2"].tolist() == [3]
  for name in _LAYERS:
    for (i, a), (j, b) in itertools.product(enumerate(table.inputs[name]),
                                            enumerate(table.outputs[name])):
      assert table.seconds[name][i, j] == a * 1000 + b, (name, a, b)
  assert table.total == 4 * 1000 + 3  # the whole network: 4 in, 3 out
  dense = 4006 + 6005 + 5003
  assert table.rest == table.total - dense
  assert table.predict({}) == pytest.approx(table.total)
  assert table.predict({"Dense_0": 3, "Dense_1": 3}) == 4003 + 3003 + 3003 + table.rest
  # Between grid points: Dense_1 reads 4 (a grid point) and has 4 (between 3 and 5).
  want = (4004 + _bilinear([1, 2, 3, 4, 5, 6], [1, 3, 5], table.seconds["Dense_1"], 4, 4)
          + _bilinear([1, 3, 5], [3], table.seconds["Dense_2"], 4, 3) + table.rest)
  assert table.predict({"Dense_0": 4, "Dense_1": 4}) == pytest.approx(want)
  assert table.predict({"Dense_0": 4, "Dense_1": 4}) == pytest.approx(
      4004 + (4003 + 4005) / 2 + 4003 + table.rest)
  again = jaxprune.LatencyTable.from_dict(json.loads(json.dumps(table.to_dict())))
  assert again.predict({"Dense_0": 2, "Dense_1": 2}) == table.predict(
      {"Dense_0": 2, "Dense_1": 2})


def test_bilinear_interpolation_in_both_widths():
  table = jaxprune.LatencyTable(
      layers=("a", "b", "c"), inputs={"a": np.array([2]), "b": np.array([1, 5]),
                                      "c": np.array([1, 3])},
      outputs={"a": np.array([1, 5]), "b": np.array([1, 3]), "c": np.array([2])},
      seconds={"a": np.array([[1.0, 5.0]]), "b": np.array([[1.0, 3.0], [5.0, 15.0]]),
               "c": np.array([[0.5], [1.5]])},
      total=0.0, rest=-2.0, input_shape=(1, 2))
  for wa, wb in itertools.product(range(1, 6), range(1, 4)):
    want = (_bilinear([2], [1, 5], table.seconds["a"], 2, wa)
            + _bilinear([1, 5], [1, 3], table.seconds["b"], wa, wb)
            + _bilinear([1, 3], [2], table.seconds["c"], wb, 2) - 2.0)
    assert table.predict({"a": wa, "b": wb}) == pytest.approx(want, abs=1e-12)
  assert table.predict({"a": 3, "b": 2}) == 3.0 + 6.0 + 1.0 - 2.0


def test_conv_and_nnx_layers_are_rebuilt_at_each_width():
  x = _inputs((2, 6, 6, 1))
  variables = _ConvNet().init(jax.random.key(0), x)
  table = jaxprune.latency_table(_ConvNet(), x, layers=_CONV_LAYERS,
                                 variables=variables, widths=3, measure=_fake)
  assert table.outputs["Conv_0"].tolist() == [1, 2, 4]
  # The dense layer after the pool reads 3 x 3 positions of each channel.
  assert table.seconds["Dense_0"][:, -1].tolist() == [9 * 1000 + 5, 18005, 36005]
  model = _NnxMLP(nnx.Rngs(0))
  table = jaxprune.latency_table(model, _inputs(), layers=["hidden", "out"],
                                 widths={"hidden": [2]}, measure=_fake)
  assert table.seconds["hidden"].tolist() == [[4001, 4002, 4006]]
  assert table.seconds["out"].tolist() == [[1003], [2003], [6003]]
  assert model.hidden.kernel.shape == (4, 6)  # left as it was


def test_default_measure_is_the_median_of_timed_calls():
  calls = []

  def fn(x):
    calls.append(x)
    return x

  clock = iter([0.0, 0.5, 1.0, 4.0, 4.0, 4.25, 10.0, 12.0, 20.0, 21.0])
  assert jaxprune.median_latency(fn, jnp.ones(2), repeats=5,
                                 timer=lambda: next(clock)) == 1.0  # .5 3 .25 2 1
  assert len(calls) == 6  # one warm-up call
  model, variables = _linen_mlp()
  table = jaxprune.latency_table(model, _inputs(), layers=_LAYERS,
                                 variables=variables, widths=2, repeats=2)
  assert all(np.all(s > 0) for s in table.seconds.values()) and table.total > 0


# Information gain.

def _numpy_forward(params, x, keep=None):
  """The MLP in numpy, units masked by ``keep``."""
  h = x
  for name in _LAYERS:
    h = h @ np.asarray(params[name]["kernel"], np.float64) + np.asarray(
        params[name]["bias"], np.float64)
    if name != _LAYERS[-1]:
      h = np.maximum(h, 0) * (keep[name] if keep else 1)
  return h


def _log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _numpy_gain(forward, units, keep):
  """KL(p || q) averaged over inputs, each kept unit ablated in turn."""
  log_p = _log_softmax(forward(keep))
  gains = {}
  for name, n in units.items():
    gain = np.full(n, np.inf)
    for j in np.flatnonzero(keep[name]):
      ablated = {k: v.copy() for k, v in keep.items()}
      ablated[name][j] = False
      log_q = _log_softmax(forward(ablated))
      gain[j] = np.mean(np.sum(np.exp(log_p) * (log_p - log_q), -1))
    gains[name] = gain
  return gains


def test_information_gain_is_the_kl_of_each_removal_linen():
  model, variables = _linen_mlp()
  x = _inputs((32, 4))
  keep = {"Dense_0": np.array([True, True, False, True, True, True]),
          "Dense_1": np.ones(5, bool)}
  got = jaxprune.information_gain(model, x, layers=_LAYERS, variables=variables,
                                  node_masks=keep, chunk=4)
  want = _numpy_gain(lambda k: _numpy_forward(variables["params"], np.asarray(x), k),
                     {"Dense_0": 6, "Dense_1": 5}, keep)
  for name in want:
    np.testing.assert_allclose(got[name], want[name], rtol=2e-3, atol=1e-6)
  assert got["Dense_0"][2] == np.inf and got["Dense_0"].dtype == np.float32


def test_information_gain_nnx_and_params_override():
  model = _NnxMLP(nnx.Rngs(0))
  x = _inputs((24, 4))
  plain = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  keep = {"hidden": np.ones(6, bool)}

  def forward(k):
    h = np.maximum(np.asarray(x) @ np.asarray(plain["hidden"]["kernel"])
                   + np.asarray(plain["hidden"]["bias"]), 0) * k["hidden"]
    return h @ np.asarray(plain["out"]["kernel"]) + np.asarray(plain["out"]["bias"])

  got = jaxprune.information_gain(model, x, layers=["hidden", "out"])
  want = _numpy_gain(forward, {"hidden": 6}, keep)
  np.testing.assert_allclose(got["hidden"], want["hidden"], rtol=2e-3, atol=1e-6)
  # Other params scored through the same model: a zero unit has no gain.
  other = jax.tree.map(lambda v: v, plain)
  other["out"]["kernel"] = other["out"]["kernel"].at[2].set(0.0)
  got = jaxprune.information_gain(model, x, layers=["hidden", "out"], params=other)
  assert got["hidden"][2] < 1e-6 < np.delete(got["hidden"], 2).min() / 100


def test_information_gain_with_a_conv_layer_and_batch_norm():
  x = _inputs((8, 6, 6, 1))
  variables = _ConvNet().init(jax.random.key(0), x)
  stats = jax.tree.map(lambda v: v + 0.3, variables["batch_stats"])  # mean .3, var 1.3
  variables = {**variables, "batch_stats": stats}
  got = jaxprune.information_gain(_ConvNet(), x, layers=_CONV_LAYERS,
                                  variables=variables, norms=_NORMS, chunk=3)
  p = variables["params"]

  def forward(keep):
    h = np.asarray(jax.lax.conv_general_dilated(
        x, p["Conv_0"]["kernel"], (1, 1), "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC")), np.float64)
    h = h + np.asarray(p["Conv_0"]["bias"])
    bn, s = p["BatchNorm_0"], stats["BatchNorm_0"]
    h = (h - np.asarray(s["mean"])) / np.sqrt(np.asarray(s["var"]) + 1e-5)
    h = np.maximum(h * np.asarray(bn["scale"]) + np.asarray(bn["bias"]), 0)
    h = h * keep["Conv_0"]
    h = h.reshape(8, 3, 2, 3, 2, 4).max(axis=(2, 4)).reshape(8, -1)
    h = np.maximum(h @ np.asarray(p["Dense_0"]["kernel"]) + np.asarray(
        p["Dense_0"]["bias"]), 0) * keep["Dense_0"]
    return h @ np.asarray(p["Dense_1"]["kernel"]) + np.asarray(p["Dense_1"]["bias"])

  want = _numpy_gain(forward, {"Conv_0": 4, "Dense_0": 5},
                     {"Conv_0": np.ones(4, bool), "Dense_0": np.ones(5, bool)})
  for name in want:
    np.testing.assert_allclose(got[name], want[name], rtol=5e-3, atol=1e-6)


# Opti-Cut.

def _unit_table(units=(6, 5), per_unit=(1.0, 2.0), rest=0.5):
  """A table where each unit of a hidden layer costs ``per_unit`` seconds,
  linear in the widths (exact under bilinear interpolation)."""
  a, b = units
  return jaxprune.LatencyTable(
      layers=tuple(_LAYERS),
      inputs={"Dense_0": np.array([4]), "Dense_1": np.array([1, a]),
              "Dense_2": np.array([1, b])},
      outputs={"Dense_0": np.array([1, a]), "Dense_1": np.array([1, b]),
               "Dense_2": np.array([3])},
      seconds={"Dense_0": np.array([[per_unit[0], per_unit[0] * a]]),
               "Dense_1": np.array([[per_unit[1], per_unit[1] * b]] * 2),
               "Dense_2": np.zeros((2, 1))},
      total=per_unit[0] * a + per_unit[1] * b + rest, rest=rest, input_shape=(1, 4))


def test_opti_cut_stops_at_the_budget_in_ascending_order_with_recovery():
  _, variables = _linen_mlp()
  params = variables["params"]
  table = _unit_table()  # dense: 6 + 10 + 0.5 = 16.5 s
  scores = {"Dense_0": np.array([0.5, 9.0, 0.1, 7.0, 0.3, 8.0]),
            "Dense_1": np.array([0.2, 6.0, 0.4, 0.05, 5.0])}
  seen, recovered = [], []

  def importance(p, masks, stats):
    seen.append({k: np.asarray(v) for k, v in masks.items()})
    for name, keep in masks.items():  # the removed units are masked
      assert np.all(np.asarray(p[name]["kernel"])[:, ~np.asarray(keep)] == 0)
    return scores

  def recover(p, masks, stats):
    recovered.append({k: np.asarray(v).copy() for k, v in masks.items()})
    return jax.tree.map(lambda v: v + 1.0, p), stats  # "training" regrows units

  budget = 10.0
  cut = jaxprune.opti_cut(params, layers=_LAYERS, table=table, importance=importance,
                          recover=recover, budget=budget, per_round=2)
  removed = [(name, j) for r in cut.history for name in _LAYERS[:-1]
             for j in r.removed[name]]
  order = sorted(((s, i, j) for i, name in enumerate(_LAYERS[:-1])
                  for j, s in enumerate(scores[name])))
  # Ascending order over the whole network (the history lists per layer per round).
  flat = [(_LAYERS[i], j) for _, i, j in order][:len(removed)]
  assert sorted(removed) == sorted(flat)
  assert cut.latency <= budget
  assert cut.latency == table.predict(
      {k: int(v.sum()) for k, v in cut.node_masks.items()})
  last_name, last_unit = flat[-1]
  before = {k: np.asarray(v).copy() for k, v in cut.node_masks.items()}
  before[last_name][last_unit] = True
  assert table.predict({k: int(v.sum()) for k, v in before.items()}) > budget
  assert len(recovered) == len(cut.history) == len(seen)
  for got, r in zip(recovered, cut.history):  # recover sees each round's masks
    assert {k: int(v.sum()) for k, v in got.items()} == {
        k: v for k, v in r.widths.items() if k != "Dense_2"}
  for name, keep in cut.node_masks.items():  # masked again after recovery
    assert np.all(np.asarray(cut.params[name]["kernel"])[:, ~np.asarray(keep)] == 0)
  assert cut.budget == budget and [len(sum(r.removed.values(), ())) for r in
                                   cut.history][:-1] == [2] * (len(cut.history) - 1)


def test_opti_cut_keeps_a_unit_per_layer_and_raises_when_unreachable():
  _, variables = _linen_mlp()
  params = variables["params"]
  table = _unit_table(per_unit=(10.0, 0.1))  # Dense_0 dominates
  l1 = lambda p, masks, stats: {name: jnp.sum(jnp.abs(p[name]["kernel"]), 0)
                                for name in _LAYERS[:-1]}
  smallest = table.predict({"Dense_0": 1, "Dense_1": 1})
  cut = jaxprune.opti_cut(params, layers=_LAYERS, table=table, importance=l1,
                          budget=smallest, per_round=100)
  assert [int(np.sum(m)) for m in cut.node_masks.values()] == [1, 1]
  with pytest.raises(ValueError, match="cannot be met: with one unit in every "
                     "hidden layer the table predicts"):
    jaxprune.opti_cut(params, layers=_LAYERS, table=table, importance=l1,
                      budget=smallest * 0.99)
  cut = jaxprune.opti_cut(params, layers=_LAYERS, table=table, importance=l1,
                          fraction=1.0)
  assert cut.history == () and all(np.all(m) for m in cut.node_masks.values())


def test_shrunk_network_computes_the_masked_one_linen_and_nnx():
  model, variables = _linen_mlp()
  x = _inputs((32, 4))
  table = jaxprune.latency_table(model, x, layers=_LAYERS, variables=variables,
                                 measure=lambda fn, w, x: float(
                                     jax.eval_shape(fn, w, x).shape[-1]))
  ig = lambda p, masks, stats: jaxprune.information_gain(
      model, x, layers=_LAYERS, params=p, node_masks=masks)
  cut = jaxprune.opti_cut(variables["params"], layers=_LAYERS, table=table,
                          importance=ig, fraction=0.6, per_round=3)
  small = jaxprune.shrink(cut.params, cut.node_masks, layers=_LAYERS)
  widths = (small.widths["Dense_0"], small.widths["Dense_1"])
  assert sum(widths) < 11
  np.testing.assert_allclose(
      np.asarray(_MLP(widths=widths).apply({"params": small.params}, x)),
      np.asarray(model.apply({"params": cut.params}, x)), rtol=1e-5, atol=1e-5)

  nnx_model = _NnxMLP(nnx.Rngs(0))
  table = jaxprune.latency_table(nnx_model, x, layers=["hidden", "out"],
                                 measure=lambda fn, w, x: float(
                                     jax.eval_shape(fn, w, x).shape[-1]))
  ig = lambda p, masks, stats: jaxprune.information_gain(
      nnx_model, x, layers=["hidden", "out"], params=p, node_masks=masks)
  cut = jaxprune.opti_cut(nnx_model, layers=["hidden", "out"], table=table,
                          importance=ig, fraction=0.7)
  masked = np.asarray(nnx_model(x))  # updated in place, masked
  small = jaxprune.shrink(nnx_model, cut.node_masks, layers=["hidden", "out"])
  smaller = _NnxMLP(nnx.Rngs(1), hidden=small.widths["hidden"])
  small.load_into(smaller)
  assert small.widths["hidden"] < 6
  np.testing.assert_allclose(np.asarray(smaller(x)), masked, rtol=1e-5, atol=1e-5)


# Bad input.

def test_bad_input_is_named():
  model, variables = _linen_mlp()
  x = _inputs()
  params = variables["params"]
  with pytest.raises(ValueError, match="layer 'nope' is not a top-level entry"):
    jaxprune.latency_table(model, x, layers=["Dense_0", "nope"],
                           variables=variables, measure=_fake)
  with pytest.raises(ValueError, match="the widths of 'Dense_0' must be a non-empty"):
    jaxprune.latency_table(model, x, layers=_LAYERS, variables=variables,
                           widths={"Dense_0": []}, measure=_fake)
  with pytest.raises(ValueError, match="the widths of 'Dense_0' must be ints from 1 to 6"):
    jaxprune.latency_table(model, x, layers=_LAYERS, variables=variables,
                           widths={"Dense_0": [7]}, measure=_fake)
  with pytest.raises(ValueError, match="widths names 'Dense_2', which is not a hidden"):
    jaxprune.latency_table(model, x, layers=_LAYERS, variables=variables,
                           widths={"Dense_2": [1]}, measure=_fake)
  with pytest.raises(ValueError, match="measure returned -1.0 for layer 'Dense_0'"):
    jaxprune.latency_table(model, x, layers=_LAYERS, variables=variables,
                           measure=lambda fn, *a: -1.0)
  with pytest.raises(ValueError, match="a Linen model needs its variables"):
    jaxprune.latency_table(model, x, layers=_LAYERS, measure=_fake)
  with pytest.raises(ValueError, match="repeats must be an int >= 1"):
    jaxprune.median_latency(jnp.sin, x, repeats=0)

  class WithNorm(nnx.Module):
    def __init__(self, rngs):
      self.a = nnx.Linear(4, 3, rngs=rngs)
      self.b = nnx.LayerNorm(3, rngs=rngs)
      self.c = nnx.Linear(3, 2, rngs=rngs)

    def __call__(self, x):
      return self.c(self.b(self.a(x)))

  odd = WithNorm(nnx.Rngs(0))
  odd.b.kernel = nnx.Param(jnp.ones((3, 3)))  # a "layer" with a kernel
  with pytest.raises(ValueError, match=r"cannot rebuild layer 'b' \(LayerNorm\)"):
    jaxprune.latency_table(odd, x, layers=["a", "b", "c"], measure=_fake)

  table = _unit_table()
  with pytest.raises(ValueError, match="'Dense_9' is not a layer of the table"):
    table.predict({"Dense_9": 1})
  with pytest.raises(ValueError, match="the width of 'Dense_0' must be from 1 to 6"):
    table.predict({"Dense_0": 0})
  with pytest.raises(ValueError, match="the last layer 'Dense_2' has a fixed width 3"):
    table.predict({"Dense_2": 2})

  with pytest.raises(ValueError, match=r"node mask of 'Dense_0' must be bool\[6\]"):
    jaxprune.information_gain(model, x, layers=_LAYERS, variables=variables,
                              node_masks={"Dense_0": np.ones(5, bool)})
  with pytest.raises(ValueError, match="node_masks name \\['Dense_2'\\]"):
    jaxprune.information_gain(model, x, layers=_LAYERS, variables=variables,
                              node_masks={"Dense_2": np.ones(3, bool)})
  with pytest.raises(ValueError, match="chunk must be an int >= 1"):
    jaxprune.information_gain(model, x, layers=_LAYERS, variables=variables, chunk=0)

  l1 = lambda p, masks, stats: {n: jnp.ones(p[n]["kernel"].shape[-1]) for n in masks}
  cut = lambda **kw: jaxprune.opti_cut(params, **{
      "layers": _LAYERS, "table": table, "importance": l1, **kw})
  with pytest.raises(ValueError, match="pass exactly one of budget= .seconds. and fraction="):
    cut()
  with pytest.raises(ValueError, match="pass exactly one of budget="):
    cut(budget=1.0, fraction=0.5)
  with pytest.raises(ValueError, match="budget must be a latency in seconds > 0, got 0"):
    cut(budget=0.0)
  with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\] of the dense"):
    cut(fraction=1.5)
  with pytest.raises(ValueError, match="per_round must be an int >= 1"):
    cut(fraction=0.5, per_round=0)
  with pytest.raises(ValueError, match="the table is of the layers"):
    cut(fraction=0.5, layers=["Dense_0", "Dense_2"])
  with pytest.raises(ValueError, match="layer 'Dense_0' has 6 units, the table 7"):
    cut(fraction=0.5, table=_unit_table(units=(7, 5)))
  with pytest.raises(ValueError, match="importance returned no scores for 'Dense_1'"):
    cut(fraction=0.5, importance=lambda p, m, s: {"Dense_0": jnp.ones(6)})
  with pytest.raises(ValueError, match=r"the scores of 'Dense_0' have shape \(5,\)"):
    cut(fraction=0.5, importance=lambda p, m, s: {"Dense_0": jnp.ones(5),
                                                   "Dense_1": jnp.ones(5)})
  with pytest.raises(ValueError, match="the scores of 'Dense_1' have NaN"):
    cut(fraction=0.5, importance=lambda p, m, s: {"Dense_0": jnp.ones(6),
                                                   "Dense_1": jnp.full(5, jnp.nan)})
