"""SNAP-it: unit gate gradients, exact unit counts, shrink equivalence."""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import small_models

import jaxprune


class _ConvNet(nn.Module):
  """conv (BN) - conv (BN) - flatten - dense - dense, widths configurable."""

  widths: Sequence[int] = (6, 8, 12)
  batch_norm: bool = True
  gates: bool = False  # multiply each unit by a gate input (for references)

  @nn.compact
  def __call__(self, x, gates=None):
    for i, features in enumerate(self.widths[:2]):
      x = nn.Conv(features, (3, 3), padding="SAME")(x)
      if gates is not None:
        x = x * gates[i][None, None, None]
      if self.batch_norm:
        x = nn.BatchNorm(use_running_average=True)(x)
      x = nn.relu(x)
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    x = nn.Dense(self.widths[2])(x)
    if gates is not None:
      x = x * gates[2][None]
    return nn.Dense(3)(nn.relu(x))


_LAYERS = ["Conv_0", "Conv_1", "Dense_0", "Dense_1"]
_NORMS = {"Conv_0": "BatchNorm_0", "Conv_1": "BatchNorm_1"}


def _variables(model, seed=0):
  x = jnp.zeros((1, 8, 8, 2))
  variables = model.init(jax.random.key(seed), x)
  rng = np.random.default_rng(seed)
  # Non-trivial norm parameters and running statistics.
  variables = jax.tree_util.tree_map_with_path(
      lambda path, v: (jnp.asarray(rng.uniform(0.5, 2.0, v.shape), v.dtype)
                       if path[-1].key in ("var", "scale") else
                       jnp.asarray(rng.normal(size=v.shape) * 0.3, v.dtype)
                       if path[-1].key in ("mean", "bias") else v),
      variables)
  return variables


def _batches(count=2):
  rng = np.random.default_rng(5)
  return [(jnp.asarray(rng.normal(size=(8, 8, 8, 2)), jnp.float32),
           jnp.asarray(rng.integers(0, 3, 8), jnp.int32)) for _ in range(count)]


def _loss_fn(model, batch_stats):
  def loss(params, batch):
    x, y = batch
    logits = model.apply({"params": params, "batch_stats": batch_stats}, x)
    return -jnp.mean(jnp.take_along_axis(
        jax.nn.log_softmax(logits), y[:, None], axis=1))
  return loss


def test_node_sensitivity_is_the_gradient_of_explicit_gates():
  model = _ConvNet()
  variables = _variables(model)
  batches = _batches()
  got = jaxprune.scores.node_sensitivity(
      _loss_fn(model, variables["batch_stats"]), variables["params"], batches,
      _LAYERS)

  def gated_loss(gates, batch):
    x, y = batch
    logits = model.apply(variables, x, gates=gates)
    return -jnp.mean(jnp.take_along_axis(
        jax.nn.log_softmax(logits), y[:, None], axis=1))

  ones = [jnp.ones(w) for w in model.widths]
  want = [sum(np.asarray(g) for g in gs) for gs in zip(
      *(jax.grad(gated_loss)(ones, b) for b in batches))]
  for name, w in zip(_LAYERS[:3], want):
    np.testing.assert_allclose(np.asarray(got[name]), np.abs(w), rtol=1e-4,
                               atol=1e-7)
  assert set(got) == set(_LAYERS[:3])


@pytest.mark.parametrize("batch_norm", [True, False])
def test_shrunk_network_computes_the_masked_one(batch_norm):
  model = _ConvNet(batch_norm=batch_norm)
  variables = _variables(model)
  norms = _NORMS if batch_norm else None
  stats = variables.get("batch_stats", {})
  nodes = jaxprune.snap_it(_loss_fn(model, stats), variables["params"],
                           _batches(), sparsity=0.6, layers=_LAYERS,
                           norms=norms, steps=2)
  masked = jaxprune.mask_nodes(variables["params"], nodes, layers=_LAYERS,
                               norms=norms)
  small = jaxprune.shrink(variables["params"], nodes, layers=_LAYERS,
                          norms=norms, batch_stats=stats)
  widths = tuple(small.widths[n] for n in _LAYERS[:3])
  assert widths == tuple(int(nodes[n].sum()) for n in _LAYERS[:3])
  assert small.widths["Dense_1"] == 3  # the outputs are never pruned
  assert small.params["Conv_0"]["kernel"].shape[2] == 2  # nor the inputs
  x = _batches(1)[0][0]
  want = model.apply({"params": masked, "batch_stats": stats}, x)
  smaller = _ConvNet(widths=widths, batch_norm=batch_norm)
  got = smaller.apply({"params": small.params, "batch_stats": small.batch_stats}, x)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5,
                             atol=1e-5)
  # And masking changed something (the test would be void otherwise).
  full = model.apply({"params": variables["params"], "batch_stats": stats}, x)
  assert not np.allclose(np.asarray(full), np.asarray(want), atol=1e-3)


def test_shrunk_mlp_equals_the_masked_mlp():
  model = small_models.MLP(widths=(10, 7), outputs=4)
  params = model.init(jax.random.key(0), jnp.zeros((1, 5)))["params"]
  layers = small_models.MLP_LAYERS
  nodes = {"Dense_0": np.arange(10) % 3 == 0, "Dense_1": np.arange(7) < 2}
  small = jaxprune.shrink(params, nodes, layers=layers)
  x = jax.random.normal(jax.random.key(1), (6, 5))
  want = model.apply({"params": jaxprune.mask_nodes(params, nodes, layers=layers)}, x)
  got = small_models.MLP(widths=(4, 2), outputs=4).apply(
      {"params": small.params}, x)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
  assert small.params["Dense_1"]["kernel"].shape == (4, 2)


def test_snap_it_counts_units_exactly_and_keeps_every_layer():
  model = _ConvNet()
  variables = _variables(model)
  loss = _loss_fn(model, variables["batch_stats"])
  for sparsity in (0.5, 0.8, 0.88):
    nodes = jaxprune.snap_it(loss, variables["params"], _batches(1),
                             sparsity=sparsity, layers=_LAYERS, norms=_NORMS)
    kept = [int(nodes[n].sum()) for n in _LAYERS[:3]]
    assert sum(kept) == 26 - round(sparsity * 26)
    assert min(kept) >= 1
  with pytest.raises(ValueError, match="fewer than the 3 hidden layers"):
    jaxprune.snap_it(loss, variables["params"], _batches(1), sparsity=0.95,
                     layers=_LAYERS, norms=_NORMS)


def test_bad_input_is_named():
  model = _ConvNet()
  variables = _variables(model)
  params = variables["params"]
  loss = _loss_fn(model, variables["batch_stats"])
  with pytest.raises(ValueError, match="Conv_9"):
    jaxprune.snap_it(loss, params, _batches(1), sparsity=0.5,
                     layers=["Conv_0", "Conv_9"])
  with pytest.raises(ValueError, match="removes every unit"):
    jaxprune.snap_it(loss, params, _batches(1), sparsity=1.0, layers=_LAYERS)
  with pytest.raises(ValueError, match="empty"):
    jaxprune.snap_it(loss, params, [], sparsity=0.5, layers=_LAYERS)
  with pytest.raises(ValueError, match="shape"):
    jaxprune.shrink(params, {"Conv_0": np.ones(5, bool),
                             "Conv_1": np.ones(8, bool),
                             "Dense_0": np.ones(12, bool)}, layers=_LAYERS)
  with pytest.raises(ValueError, match="hidden layers"):
    jaxprune.shrink(params, {"Conv_0": np.ones(6, bool)}, layers=_LAYERS)
  with pytest.raises(ValueError, match="norms maps"):
    jaxprune.mask_nodes(params, {}, layers=_LAYERS, norms={"Dense_1": "BatchNorm_0"})
