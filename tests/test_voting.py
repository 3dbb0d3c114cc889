"""Majority voting: hand-computed and numpy-reference votes, exact removal
counts and ties, the schedule, training with removals (Linen and NNX, dense
and conv), bad input."""

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


def test_hand_computed_votes_of_four_samples_and_five_units():
  a = jnp.array([[1.0, 2.0, 3.0, 4.0, 5.0],   # mean 3: units 3, 4
                 [5.0, 0.0, 0.0, 0.0, 0.0],   # mean 1: unit 0
                 [0.0, 4.0, 4.0, 0.0, 2.0],   # mean 2: units 1, 2
                 [1.0, 1.0, 1.0, 1.0, 1.0]])  # all equal: no vote
  assert jaxprune.neuron_votes({"h": a})["h"].tolist() == [1, 1, 1, 1, 1]
  # Top 2 per sample, ties to the lower index: (4, 3), (0, 1), (1, 2), (0, 1).
  top2 = jaxprune.neuron_votes({"h": a}, rule="top_k", top_k=2)["h"]
  assert top2.dtype == jnp.float32 and top2.tolist() == [2, 3, 1, 1, 1]
  # Unit 1 removed: the means are over units 0, 2, 3, 4 (3.25, 1.25, 1.5, 1).
  keep = {"h": jnp.array([True, False, True, True, True])}
  assert jaxprune.neuron_votes({"h": a}, node_masks=keep)["h"].tolist() == [
      1, 0, 1, 1, 2]
  # 0.5 of the 4 kept units = 2: (4, 3), (0, 2), (2, 4), (0, 2).
  assert jaxprune.neuron_votes({"h": a}, rule="top_k", top_k=0.5,
                               node_masks=keep)["h"].tolist() == [2, 0, 3, 1, 2]


def _reference_votes(a, keep, rule, top_k):
  """Sample by sample, unit by unit, in numpy."""
  votes = np.zeros(a.shape[1])
  live = np.flatnonzero(keep)
  for row in a:
    if rule == "mean":
      mean = row[live].mean()
      for j in live:
        votes[j] += row[j] > mean
    else:
      k = top_k if isinstance(top_k, int) else int(np.ceil(top_k * live.size))
      ranked = sorted(live, key=lambda j: (-row[j], j))
      for j in ranked[:k]:
        votes[j] += 1
  return votes


@pytest.mark.parametrize("rule,top_k", [("mean", None), ("top_k", 3),
                                        ("top_k", 0.3), ("top_k", 50)])
def test_votes_match_a_numpy_reference_under_jit(rule, top_k):
  rng = np.random.default_rng(0)
  # Rounded relus: many ties and zeros.
  a = np.maximum(np.round(rng.normal(size=(40, 12)), 1), 0).astype(np.float32)
  keep = rng.uniform(size=12) < 0.7
  got = jax.jit(lambda a, m: jaxprune.neuron_votes(
      {"h": a}, rule=rule, top_k=top_k, node_masks={"h": m}))(a, keep)["h"]
  np.testing.assert_array_equal(np.asarray(got), _reference_votes(a, keep, rule, top_k))
  assert not np.asarray(got)[~keep].any()


def test_a_conv_channel_votes_with_its_mean_over_positions():
  rng = np.random.default_rng(1)
  a = rng.uniform(size=(6, 3, 3, 4)).astype(np.float32)
  want = _reference_votes(a.mean(axis=(1, 2)), np.ones(4, bool), "mean", None)
  got = jaxprune.neuron_votes({"c": a})["c"]
  np.testing.assert_array_equal(np.asarray(got), want)
  # The rows of unit_activations, sample after sample.
  rows = jaxprune.neuron_votes({"c": a.reshape(-1, 4)}, samples=6)["c"]
  np.testing.assert_array_equal(np.asarray(rows), want)


def test_removal_counts_are_exact_ties_go_to_the_lower_index():
  votes = {"a": jnp.array([3.0, 1.0, 1.0, 1.0, 7.0, 0.0, 2.0, 1.0, 5.0, 4.0]),
           "b": jnp.array([2.0, 2.0, 2.0])}
  found = jaxprune.prune_by_votes(votes, fraction=0.29)  # floor(2.9), floor(0.87)
  assert found.report["a"].removed == (5, 1) and found.report["b"].removed == ()
  found = jaxprune.prune_by_votes(votes, fraction={"a": 0.5})
  assert found.report["a"].removed == (5, 1, 2, 3, 7)
  assert found.report["a"].removed_votes == (0, 1, 1, 1, 1)
  assert found.report["a"].fewest_kept_votes == 2
  assert found.node_masks["b"].all()
  # Targets count the units removed before; a layer keeps one unit.
  again = jaxprune.prune_by_votes(votes, found.node_masks, target=0.7)
  assert again.report["a"].removed == (6, 0) and again.report["a"].kept == 3
  assert again.report["b"].removed == (0, 1) and again.report["b"].kept == 1
  assert str(again.report["b"]) == (
      "removed 2, kept 1 of 3 units (votes 2 to 2); the fewest votes kept 2")
  past = jaxprune.prune_by_votes(votes, again.node_masks, target=0.5)
  assert past.report["a"].removed == () and past.report["a"].kept == 3
  # Removed units stay removed, whatever their votes.
  revived = jaxprune.prune_by_votes({"b": jnp.array([9.0, 9.0, 0.0])},
                                    again.node_masks, fraction=0.9)
  assert revived.node_masks["b"].tolist() == [False, False, True]
  assert jaxprune.add_votes(votes, votes)["a"][4] == 14.0


def test_the_schedule_reaches_its_target_cubically():
  s = jaxprune.vote_schedule(0.9, begin_step=10, frequency=5, events=3)
  assert s.steps == (10, 15, 20)
  np.testing.assert_allclose(s.targets, [0.9 * (1 - (2 / 3) ** 3),
                                         0.9 * (1 - (1 / 3) ** 3), 0.9])
  assert jaxprune.vote_schedule(0.5, begin_step=0, frequency=1, events=4,
                                power=1).targets == (0.125, 0.25, 0.375, 0.5)


_MLP = functools.partial(small_models.MLP, widths=(12, 8))
_LAYERS = small_models.MLP_LAYERS


def _data(n=64, shape=(6,), seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(n, *shape)), jnp.float32)
  y = jnp.asarray(np.argmax(rng.normal(size=(n, 3)) + np.asarray(x).reshape(n, -1)[:, :3],
                            axis=1), jnp.int32)
  return x, y


def _train_with_votes(apply, params, x, y, layers, activations, schedule, steps,
                      samples=None):
  """Adam with majority-voting removals; returns params and node masks."""
  def loss_fn(p):
    return optax.softmax_cross_entropy_with_integer_labels(apply(p, x), y).mean()

  all_kept = jax.tree.map(lambda p: jnp.ones(p.shape, bool) if p.ndim >= 2 else None,
                          params)
  tx = jaxprune.prune(optax.adam(1e-2), masks=all_kept)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state):
    updates, opt_state = tx.update(jax.grad(loss_fn)(params), opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  count = jax.jit(lambda acts, node_masks: jaxprune.neuron_votes(
      acts, node_masks=node_masks, samples=samples))
  node_masks, votes = {}, None
  for i in range(steps):
    votes = jaxprune.add_votes(votes, count(activations(params), node_masks))
    if i in schedule.steps:
      found = jaxprune.prune_by_votes(
          votes, node_masks, target=schedule.targets[schedule.steps.index(i)])
      node_masks, votes = found.node_masks, None
      opt_state = jaxprune.replace_masks(opt_state, jaxprune.node_weight_masks(
          jaxprune.masks_of(opt_state), node_masks, layers=layers))
    params, opt_state = step(params, opt_state)
  return params, node_masks


def test_training_keeps_removed_units_cut_off_and_the_shrunk_mlp_is_equal():
  model = _MLP()
  x, y = _data()
  params = model.init(jax.random.key(0), x[:1])["params"]
  apply = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
  schedule = jaxprune.vote_schedule(0.5, begin_step=5, frequency=10, events=3)
  params, node_masks = _train_with_votes(
      apply, params, x, y, _LAYERS,
      lambda p: jaxprune.unit_activations(model, x, layers=_LAYERS,
                                          variables={"params": p}),
      schedule, 36)
  assert [int(node_masks[n].sum()) for n in _LAYERS[:-1]] == [6, 4]
  for name, following in zip(_LAYERS, _LAYERS[1:]):
    removed = ~np.asarray(node_masks[name])
    # Exactly zero after 11 or more Adam steps: the columns and the rows.
    assert not np.asarray(params[name]["kernel"])[:, removed].any()
    assert not np.asarray(params[following]["kernel"])[removed].any()
  masked = jaxprune.mask_nodes(params, node_masks, layers=_LAYERS)
  small = jaxprune.shrink(params, node_masks, layers=_LAYERS)
  assert small.widths == {"Dense_0": 6, "Dense_1": 4, "Dense_2": 3}
  np.testing.assert_allclose(
      np.asarray(_MLP(widths=(6, 4)).apply({"params": small.params}, x)),
      np.asarray(apply(masked, x)), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(apply(masked, x)),
                             np.asarray(apply(params, x)), rtol=1e-5, atol=1e-5)


class _NnxMLP(nnx.Module):
  def __init__(self, rngs, hidden=10):
    self.hidden = nnx.Linear(6, hidden, rngs=rngs)
    self.out = nnx.Linear(hidden, 3, rngs=rngs)

  def __call__(self, x):
    return self.out(nnx.relu(self.hidden(x)))


def test_nnx_votes_remove_units_and_the_model_shrinks():
  model = _NnxMLP(nnx.Rngs(0))
  x, y = _data()
  layers = ["hidden", "out"]
  all_kept = {"hidden": {"kernel": jnp.ones((6, 10), bool), "bias": None},
              "out": {"kernel": jnp.ones((10, 3), bool), "bias": None}}
  optimizer = nnx.Optimizer(model, jaxprune.prune(optax.adam(1e-2), masks=all_kept),
                            wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer):
    grads = nnx.grad(lambda m: optax.softmax_cross_entropy_with_integer_labels(
        m(x), y).mean())(model)
    optimizer.update(model, grads)

  schedule = jaxprune.vote_schedule(0.6, begin_step=4, frequency=8, events=2)
  node_masks, votes = {}, None
  for i in range(20):
    acts = jaxprune.unit_activations(model, x, layers=layers)
    votes = jaxprune.add_votes(votes, jaxprune.neuron_votes(acts,
                                                            node_masks=node_masks))
    if i in schedule.steps:
      found = jaxprune.prune_by_votes(
          votes, node_masks, target=schedule.targets[schedule.steps.index(i)])
      node_masks, votes = found.node_masks, None
      jaxprune.replace_masks(optimizer, jaxprune.node_weight_masks(
          jaxprune.masks_of(optimizer), node_masks, layers=layers))
    step(model, optimizer)
  assert int(node_masks["hidden"].sum()) == 4
  removed = ~np.asarray(node_masks["hidden"])
  assert not np.asarray(model.hidden.kernel.get_value())[:, removed].any()
  assert not np.asarray(model.out.kernel.get_value())[removed].any()
  want = model(x)
  shrunk = jaxprune.shrink(model, node_masks, layers=layers)
  small = _NnxMLP(nnx.Rngs(1), hidden=shrunk.widths["hidden"])
  shrunk.load_into(small)
  np.testing.assert_allclose(np.asarray(small(x)), np.asarray(want),
                             rtol=1e-5, atol=1e-5)


class _ConvNet(nn.Module):
  widths: Sequence[int] = (6, 5)

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(self.widths[0], (3, 3), padding="VALID")(x))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(self.widths[1])(x))
    return nn.Dense(3)(x)


def test_conv_channels_are_voted_on_removed_and_shrunk():
  model = _ConvNet()
  x, y = _data(32, shape=(5, 5, 2))
  layers = ["Conv_0", "Dense_0", "Dense_1"]
  params = model.init(jax.random.key(0), x[:1])["params"]
  apply = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
  acts = jaxprune.unit_activations(model, x, layers=layers,
                                   variables={"params": params})
  assert acts["Conv_0"].shape == (32 * 9, 6)
  votes = jaxprune.neuron_votes(acts, samples=32)
  channels = np.asarray(acts["Conv_0"]).reshape(32, 9, 6).mean(1)
  np.testing.assert_array_equal(np.asarray(votes["Conv_0"]),
                                _reference_votes(channels, np.ones(6, bool),
                                                 "mean", None))
  schedule = jaxprune.vote_schedule(0.5, begin_step=3, frequency=6, events=2)
  params, node_masks = _train_with_votes(
      apply, params, x, y, layers,
      lambda p: jaxprune.unit_activations(model, x, layers=layers,
                                          variables={"params": p}),
      schedule, 12, samples=32)
  small = jaxprune.shrink(params, node_masks, layers=layers)
  assert small.widths == {"Conv_0": 3, "Dense_0": 3, "Dense_1": 3}
  np.testing.assert_allclose(
      np.asarray(_ConvNet(widths=(3, 3)).apply({"params": small.params}, x)),
      np.asarray(apply(params, x)), rtol=1e-5, atol=1e-5)


def test_bad_input_is_named():
  a = jnp.ones((4, 5))
  with pytest.raises(ValueError, match="neuron_votes: rule must be one of"):
    jaxprune.neuron_votes({"h": a}, rule="median")
  with pytest.raises(ValueError, match="needs top_k"):
    jaxprune.neuron_votes({"h": a}, rule="top_k")
  with pytest.raises(ValueError, match=r"fraction of the kept units, in \(0, 1\)"):
    jaxprune.neuron_votes({"h": a}, rule="top_k", top_k=1.5)
  with pytest.raises(ValueError, match="top_k is for rule='top_k'"):
    jaxprune.neuron_votes({"h": a}, top_k=2)
  with pytest.raises(ValueError, match=r"activations of 'h' have shape \(5,\)"):
    jaxprune.neuron_votes({"h": a[0]})
  with pytest.raises(ValueError, match=r"node mask of 'h' must be bool\[5\]"):
    jaxprune.neuron_votes({"h": a}, node_masks={"h": jnp.ones(4, bool)})
  with pytest.raises(ValueError, match=r"node_masks name \['g'\]"):
    jaxprune.neuron_votes({"h": a}, node_masks={"g": jnp.ones(5, bool)})
  with pytest.raises(ValueError, match="4 rows, which samples=3"):
    jaxprune.neuron_votes({"h": a}, samples=3)
  votes = {"h": jnp.arange(5.0)}
  with pytest.raises(ValueError, match="exactly one of fraction= .* and target="):
    jaxprune.prune_by_votes(votes)
  with pytest.raises(ValueError, match="exactly one"):
    jaxprune.prune_by_votes(votes, fraction=0.1, target=0.1)
  for bad in (1.0, -0.1, float("nan")):
    with pytest.raises(ValueError, match=r"fraction of 'h' must be in \[0, 1\)"):
      jaxprune.prune_by_votes(votes, fraction=bad)
  with pytest.raises(ValueError, match=r"target of 'h' must be in \[0, 1\)"):
    jaxprune.prune_by_votes(votes, target=1.0)
  with pytest.raises(ValueError, match="fraction names 'nope', which has no votes"):
    jaxprune.prune_by_votes(votes, fraction={"nope": 0.5})
  with pytest.raises(ValueError, match=r"votes of 'h' must be \[units\]"):
    jaxprune.prune_by_votes({"h": jnp.ones((2, 2))}, fraction=0.5)
  with pytest.raises(ValueError, match="votes of 'h' are not all finite"):
    jaxprune.prune_by_votes({"h": jnp.array([1.0, jnp.nan])}, fraction=0.5)
  with pytest.raises(ValueError, match=r"node mask of 'h' must be bool\[5\]"):
    jaxprune.prune_by_votes(votes, {"h": jnp.ones(5)}, fraction=0.5)
  with pytest.raises(ValueError, match="node mask of 'h' keeps no unit"):
    jaxprune.prune_by_votes(votes, {"h": jnp.zeros(5, bool)}, fraction=0.5)
  with pytest.raises(ValueError, match="add_votes: the votes are for"):
    jaxprune.add_votes({"h": jnp.ones(4)}, votes)
  with pytest.raises(ValueError, match="vote_schedule: target must be"):
    jaxprune.vote_schedule(1.0, begin_step=0, frequency=1, events=1)
  with pytest.raises(ValueError, match="frequency must be >= 1"):
    jaxprune.vote_schedule(0.5, begin_step=0, frequency=0, events=1)
