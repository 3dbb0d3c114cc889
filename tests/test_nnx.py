"""Flax NNX at every boundary: the same paths, masks and results as Linen."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxprune
from jaxprune import criteria
from jaxprune import schedules


class _Mlp(nnx.Module):

  def __init__(self, rngs):
    self.layers = nnx.List([nnx.Linear(4, 8, rngs=rngs), nnx.Linear(8, 3, rngs=rngs)])
    self.norm = nnx.BatchNorm(8, rngs=rngs)

  def __call__(self, x):
    return self.layers[1](self.norm(nnx.relu(self.layers[0](x))))


class _LinenMlp(nn.Module):

  @nn.compact
  def __call__(self, x):
    return nn.Dense(3)(nn.BatchNorm(use_running_average=True)(nn.relu(nn.Dense(8)(x))))


def _data():
  x = jax.random.normal(jax.random.key(0), (16, 4))
  return x, jnp.arange(16) % 3


@nnx.jit
def _step(model, optimizer, x, y):
  def loss_fn(model):
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

  optimizer.update(model, nnx.grad(loss_fn)(model))


def _kernels_zero_where_pruned(model, masks):
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  for i in (0, 1):
    kernel = np.asarray(params["layers"][i]["kernel"])
    assert np.all(kernel[~np.asarray(masks["layers"][i]["kernel"])] == 0)


def test_the_prunable_predicate_sees_the_same_paths_as_with_linen():
  seen_nnx, seen_linen = [], []
  tx = lambda seen: jaxprune.prune(
      optax.sgd(0.1), criterion=criteria.magnitude,
      schedule=schedules.one_shot(0.5, 0),
      prunable=lambda path, leaf: seen.append(path) or path[-1] == "kernel")
  nnx.Optimizer(_Mlp(nnx.Rngs(0)), tx(seen_nnx), wrt=nnx.Param)
  linen = _LinenMlp().init(jax.random.key(0), jnp.ones((1, 4)))["params"]
  tx(seen_linen).init(linen)
  assert seen_nnx == [("layers", 0, "bias"), ("layers", 0, "kernel"),
                      ("layers", 1, "bias"), ("layers", 1, "kernel"),
                      ("norm", "bias"), ("norm", "scale")]
  assert seen_linen == [("BatchNorm_0", "bias"), ("BatchNorm_0", "scale"),
                        ("Dense_0", "bias"), ("Dense_0", "kernel"),
                        ("Dense_1", "bias"), ("Dense_1", "kernel")]


def test_masks_of_an_nnx_optimizer_are_plain_booleans_and_prune_the_model():
  model = _Mlp(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, jaxprune.prune(
      optax.adam(1e-2), criterion=criteria.magnitude,
      schedule=schedules.one_shot(0.75, 2)), wrt=nnx.Param)
  x, y = _data()
  for _ in range(4):
    _step(model, optimizer, x, y)
  masks = jaxprune.masks_of(optimizer)
  assert masks["norm"] == {"bias": None, "scale": None}
  assert masks["layers"][0]["bias"] is None
  kept = [int(masks["layers"][i]["kernel"].sum()) for i in (0, 1)]
  assert sum(kept) == 56 - round(0.75 * 56)
  assert all(type(m) is type(jnp.zeros(1)) for m in jax.tree.leaves(masks))
  _kernels_zero_where_pruned(model, masks)
  report = jaxprune.sparsity(model)
  assert list(report.per_leaf) == ["layers/0/kernel", "layers/1/kernel"]
  assert float(report.global_sparsity) == pytest.approx(
      float(jaxprune.sparsity(masks).global_sparsity))


def test_fixed_masks_in_plain_form_train_an_nnx_model():
  model = _Mlp(nnx.Rngs(1))
  masks = jax.tree.map(
      lambda p: jnp.arange(p.size).reshape(p.shape) % 3 == 0 if p.ndim == 2 else None,
      nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  optimizer = nnx.Optimizer(model, jaxprune.prune(optax.sgd(0.1), masks=masks),
                            wrt=nnx.Param)
  x, y = _data()
  _step(model, optimizer, x, y)
  _kernels_zero_where_pruned(model, masks)
  for got, want in zip(jax.tree.leaves(jaxprune.masks_of(optimizer)),
                       jax.tree.leaves(masks), strict=True):
    np.testing.assert_array_equal(got, want)


def test_replace_masks_on_an_nnx_optimizer_keeps_training():
  model = _Mlp(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, jaxprune.prune(
      optax.adam(1e-2), criterion=criteria.magnitude,
      schedule=schedules.one_shot(0.5, 0), packed_masks=True), wrt=nnx.Param)
  x, y = _data()
  _step(model, optimizer, x, y)
  masks = jax.tree.map(lambda m: m.at[0].set(False), jaxprune.masks_of(optimizer))
  assert jaxprune.replace_masks(optimizer, masks) is None
  _step(model, optimizer, x, y)
  for got, want in zip(jax.tree.leaves(jaxprune.masks_of(optimizer)),
                       jax.tree.leaves(masks), strict=True):
    np.testing.assert_array_equal(got, want)
  _kernels_zero_where_pruned(model, masks)


def test_apply_masks_to_a_state_and_to_a_module():
  model = _Mlp(nnx.Rngs(0))
  state = nnx.state(model, nnx.Param)
  masks = jax.tree.map(lambda p: p < 0 if p.ndim == 2 else None,
                       nnx.to_pure_dict(state))
  masked = jaxprune.apply_masks(state, masks)
  assert isinstance(masked, nnx.State)
  want = jax.tree.map(lambda p, m: p if m is None else jnp.where(m, p, 0),
                      nnx.to_pure_dict(state), masks)
  for a, b in zip(jax.tree.leaves(nnx.to_pure_dict(masked)), jax.tree.leaves(want),
                  strict=True):
    np.testing.assert_array_equal(a, b)
  assert jaxprune.apply_masks(model, masks) is None
  for a, b in zip(jax.tree.leaves(nnx.to_pure_dict(nnx.state(model, nnx.Param))),
                  jax.tree.leaves(want), strict=True):
    np.testing.assert_array_equal(a, b)


def test_masks_missing_a_leaf_are_refused_naming_it():
  model = _Mlp(nnx.Rngs(0))
  masks = jax.tree.map(lambda p: p > 0 if p.ndim == 2 else None,
                       nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  del masks["norm"]
  with pytest.raises(ValueError, match="missing norm/bias, norm/scale"):
    jaxprune.apply_masks(model, masks)
  with pytest.raises(ValueError, match="given to jaxprune.prune .*missing norm/bias"):
    nnx.Optimizer(model, jaxprune.prune(optax.sgd(0.1), masks=masks), wrt=nnx.Param)


# --- before training, on the module itself -----------------------------------

class _Twin(nnx.Module):
  """Attributes named as Linen names its layers, so that its plain state is
  the params dict of ``_LinenTwin``."""

  def __init__(self, rngs, hidden=16):
    self.Dense_0 = nnx.Linear(6, hidden, rngs=rngs)
    self.Dense_1 = nnx.Linear(hidden, 3, rngs=rngs)

  def __call__(self, x):
    return self.Dense_1(nnx.relu(self.Dense_0(x)))


class _LinenTwin(nn.Module):

  @nn.compact
  def __call__(self, x):
    hidden = nn.relu(nn.Dense(16)(x))
    return nn.Dense(3)(hidden)


def _twins():
  model = _Twin(nnx.Rngs(3))
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  x = jax.random.normal(jax.random.key(4), (8, 6))
  batches = [(x, jnp.arange(8) % 3)]
  return model, params, batches


def _cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _assert_same_trees(a, b):
  is_none = lambda x: x is None
  assert jax.tree.structure(a, is_leaf=is_none) == jax.tree.structure(b, is_leaf=is_none)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("method", ["snip", "snip_it", "grasp"])
def test_data_driven_masks_of_a_module_equal_the_linen_twins(method):
  model, params, batches = _twins()
  fn = getattr(jaxprune, method)
  linen_loss = lambda p, b: _cross_entropy(_LinenTwin().apply({"params": p}, b[0]), b[1])
  nnx_loss = lambda m, b: _cross_entropy(m(b[0]), b[1])
  want = fn(linen_loss, params, batches, sparsity=0.8)
  got = fn(nnx_loss, model, batches, sparsity=0.8)
  _assert_same_trees(got, want)
  assert got["Dense_0"]["bias"] is None
  assert not isinstance(got, nnx.State)


def test_scores_synflow_and_connectivity_of_a_module_equal_the_linen_twins():
  model, params, batches = _twins()
  linen_apply = lambda p, x: _LinenTwin().apply({"params": p}, x)
  linen_loss = lambda p, b: _cross_entropy(linen_apply(p, b[0]), b[1])
  nnx_loss = lambda m, b: _cross_entropy(m(b[0]), b[1])
  _assert_same_trees(jaxprune.scores.sensitivity(nnx_loss, model, batches),
                     jaxprune.scores.sensitivity(linen_loss, params, batches))
  masks = jaxprune.synflow(lambda m, x: m(x), model, (6,), sparsity=0.9, rounds=5)
  _assert_same_trees(masks, jaxprune.synflow(linen_apply, params, (6,), sparsity=0.9,
                                             rounds=5))
  got = jaxprune.connectivity(lambda m, x: m(x), model, masks, (6,))
  want = jaxprune.connectivity(linen_apply, params, masks, (6,))
  assert got == want
  assert list(got.kept) == ["Dense_0/kernel", "Dense_1/kernel"]


class _Normed(nnx.Module):

  def __init__(self, rngs, hidden=12):
    self.dense = nnx.Linear(5, hidden, rngs=rngs)
    self.norm = nnx.BatchNorm(hidden, use_running_average=True, rngs=rngs)
    self.out = nnx.Linear(hidden, 2, rngs=rngs)

  def __call__(self, x):
    return self.out(nnx.relu(self.norm(self.dense(x))))


def test_snap_it_and_shrink_give_a_smaller_module_computing_the_same():
  model = _Normed(nnx.Rngs(0))
  model.norm.mean[...] = jnp.linspace(-0.5, 0.5, 12)
  model.norm.var[...] = jnp.linspace(0.5, 2.0, 12)
  x = jax.random.normal(jax.random.key(1), (16, 5))
  batches = [(x, jnp.arange(16) % 2)]
  loss = lambda m, b: _cross_entropy(m(b[0]), b[1])
  layers, norms = ["dense", "out"], {"dense": "norm"}
  node_masks = jaxprune.snap_it(loss, model, batches, sparsity=0.5,
                                layers=layers, norms=norms)
  assert int(node_masks["dense"].sum()) == 6
  shrunk = jaxprune.shrink(model, node_masks, layers=layers, norms=norms)
  assert shrunk.widths == {"dense": 6, "out": 2}
  assert shrunk.batch_stats["norm"]["mean"].shape == (6,)
  small = _Normed(nnx.Rngs(9), hidden=shrunk.widths["dense"])
  shrunk.load_into(small)
  assert jaxprune.mask_nodes(model, node_masks, layers=layers, norms=norms) is None
  np.testing.assert_allclose(small(x), model(x), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="dense/bias has shape \\(12,\\) in the module but \\(6,\\)"):
    shrunk.load_into(_Normed(nnx.Rngs(0)))


# --- L0 gates on the module --------------------------------------------------

def test_gates_on_a_module_equal_the_gates_on_its_params():
  model, params, (batch,) = _twins()
  key = jax.random.key(5)
  gated = jaxprune.add_gates(params, key, granularity="unit", rescale_weights=True)
  assert jaxprune.add_gates(model, key, granularity="unit", rescale_weights=True) is None
  assert isinstance(model.Dense_0.log_alpha, nnx.Param)
  _assert_same_trees(nnx.to_pure_dict(nnx.state(model, nnx.Param)), gated)
  sample = jax.random.key(6)
  gated_model = jaxprune.apply_gates(model, sample)
  want = _LinenTwin().apply({"params": jaxprune.apply_gates(gated, sample)}, batch[0])
  np.testing.assert_allclose(gated_model(batch[0]), want, rtol=1e-6)
  _assert_same_trees(jaxprune.hard_masks(model), jaxprune.hard_masks(gated))
  assert jaxprune.gate_labels(model) == jaxprune.gate_labels(gated)
  assert float(jaxprune.expected_l0(model)) == float(jaxprune.expected_l0(gated))


def test_the_gated_copy_updates_the_models_batch_statistics():
  model = _Normed(nnx.Rngs(0))
  model.norm.use_running_average = False
  jaxprune.add_gates(model, jax.random.key(0), granularity="unit")
  before = np.asarray(model.norm.mean[...])
  jaxprune.apply_gates(model, jax.random.key(1))(jnp.ones((4, 5)))
  assert not np.array_equal(np.asarray(model.norm.mean[...]), before)


def test_gates_trained_by_partition_under_nnx_optimizer():
  model, _, (batch,) = _twins()
  jaxprune.add_gates(model, jax.random.key(0), granularity="unit")
  tx = optax.partition({"weights": optax.adam(1e-3), "gates": optax.sgd(0.0)},
                       jaxprune.gate_labels)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  gates_before = np.asarray(model.Dense_0.log_alpha[...])
  kernel_before = np.asarray(model.Dense_0.kernel[...])

  @nnx.jit
  def step(model, optimizer, key):
    loss = lambda m: _cross_entropy(jaxprune.apply_gates(m, key)(batch[0]), batch[1])
    optimizer.update(model, nnx.grad(loss)(model))

  step(model, optimizer, jax.random.key(1))
  np.testing.assert_array_equal(model.Dense_0.log_alpha[...], gates_before)
  assert not np.array_equal(np.asarray(model.Dense_0.kernel[...]), kernel_before)


def test_replace_masks_names_the_leaf_of_a_wrong_mask():
  model = _Mlp(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, jaxprune.prune(
      optax.sgd(0.1), criterion=criteria.magnitude,
      schedule=schedules.one_shot(0.5, 0)), wrt=nnx.Param)
  masks = jaxprune.masks_of(optimizer)
  masks["layers"][1]["kernel"] = masks["layers"][1]["kernel"].astype(jnp.float32)
  with pytest.raises(TypeError, match="the mask of layers/1/kernel has dtype float32"):
    jaxprune.replace_masks(optimizer, masks)
  masks["layers"][1]["kernel"] = jnp.ones((3, 8), bool)
  with pytest.raises(ValueError, match=r"layers/1/kernel has shape \(3, 8\), but the state's "
                                       r"has \(8, 3\)"):
    jaxprune.replace_masks(optimizer, masks)
