"""experiments.nnx_models and nnx_bridge: the Linen models' twins in Flax NNX."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments import config
from experiments import models
from experiments import networks
from experiments import nnx_bridge
from experiments import nnx_models

pytestmark = pytest.mark.usefixtures("strict_dtypes")

MNIST = (28, 28, 1)
CIFAR = (32, 32, 3)
SHAPES = {"lenet300100": MNIST, "lenet5": MNIST, "conv6": CIFAR,
          "vgg16": CIFAR, "vgg19": CIFAR, "resnet18": CIFAR, "resnet20": CIFAR}
SEQUENTIAL = {  # call order of the layers with a kernel
    "lenet300100": ["hidden1", "hidden2", "out"],
    "lenet5": ["conv1", "conv2", "hidden", "out"],
    "conv6": [f"conv{i}" for i in range(1, 7)] + ["hidden1", "hidden2", "out"],
}


def _abstract(name, shape, widths=None):
  model = nnx.eval_shape(lambda: nnx_models.get_model(
      name, shape, widths=widths, rngs=nnx.Rngs(0)))
  return (nnx.to_pure_dict(nnx.state(model, nnx.Param)),
          nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)))


def test_every_linen_model_has_a_twin():
  assert set(nnx_models.MODELS) == set(models.MODELS) == set(SHAPES)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_the_twin_has_the_linen_models_params_and_batch_stats(name):
  shape = SHAPES[name]
  linen = jax.eval_shape(models.get_model(name).init, jax.random.key(0),
                         jnp.zeros((1, *shape)))
  params, stats = _abstract(name, shape)
  assert models.count_params(params) == models.count_params(linen["params"])
  assert models.count_params(stats) == models.count_params(
      linen.get("batch_stats", {}))
  # Same kernel shapes, in the same (call) order.
  kernels = lambda tree: [leaf.shape for path, leaf in jax.tree.leaves_with_path(
      tree) if path[-1].key == "kernel"]
  if name in SEQUENTIAL:
    assert sorted(params) == SEQUENTIAL[name]
    assert kernels(params) == kernels(linen["params"])


@pytest.mark.parametrize("name, widths", [
    ("lenet300100", (17, 5)),
    ("conv6", (3, 4, 5, 6, 7, 8, 9, 10)),
])
def test_widths_give_the_shrunk_linen_models_shapes(name, widths):
  linen = jax.eval_shape(models.get_model(name, widths=widths).init,
                         jax.random.key(0), jnp.zeros((1, *MNIST)))["params"]
  params, _ = _abstract(name, MNIST, widths)
  assert jax.tree.map(jnp.shape, list(params.values())) == jax.tree.map(
      jnp.shape, list(linen.values()))


def test_unknown_names_and_widths_are_refused():
  with pytest.raises(ValueError, match="Unknown model 'resnet50'"):
    nnx_models.get_model("resnet50", CIFAR, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="'lenet5' has no configurable widths"):
    nnx_models.get_model("lenet5", MNIST, widths=(1, 2), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="unknown flax_api 'haiku'"):
    networks.get(config.resolve("smoke", ["flax_api=haiku"]))


def test_linen_like_apply_is_the_merged_module_called():
  net = nnx_bridge.LinenLike(lambda rngs: nnx_models.get_model(
      "lenet5", MNIST, rngs=rngs))
  x = jax.random.normal(jax.random.key(1), (3, *MNIST))
  variables = jax.jit(net.init)(jax.random.key(0), x)
  assert sorted(variables) == ["params"]
  model = nnx_models.get_model("lenet5", MNIST, rngs=nnx.Rngs(jax.random.key(0)))
  np.testing.assert_allclose(net.apply(variables, x), model(x), rtol=1e-5)
  logits, updates = jax.jit(
      lambda v, x: net.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)
  assert updates == {}
  np.testing.assert_allclose(logits, model(x), rtol=1e-5, atol=1e-6)


def test_linen_like_batch_norm_updates_statistics_in_training_mode_only():
  net = nnx_bridge.LinenLike(lambda rngs: nnx_models.get_model(
      "resnet20", (8, 8, 1), rngs=rngs))
  x = 3.0 + jax.random.normal(jax.random.key(1), (4, 8, 8, 1))
  variables = net.init(jax.random.key(0), x)
  before = variables["batch_stats"]
  eval_fn = jax.jit(lambda v, x: net.apply(v, x, train=False,
                                           mutable=["batch_stats"]))
  eval_logits, kept = eval_fn(variables, x)
  jax.tree.map(np.testing.assert_array_equal, kept["batch_stats"], before)
  np.testing.assert_allclose(eval_logits, net.apply(variables, x), rtol=1e-5)
  train_logits, updated = net.apply(variables, x, train=True,
                                    mutable=["batch_stats"])
  stem = updated["batch_stats"]["stem_norm"]
  assert not np.allclose(stem["mean"], before["stem_norm"]["mean"])
  assert not np.allclose(train_logits, eval_logits)
  # The given variables are not changed in place.
  assert np.all(np.asarray(variables["batch_stats"]["stem_norm"]["mean"]) == 0)
  with pytest.raises(ValueError, match="no 'batch_stats'"):
    net.apply({"params": variables["params"]}, x)


def test_linen_like_refuses_a_model_with_other_state():
  class Dropping(nnx.Module):

    def __init__(self, rngs):
      self.dense = nnx.Linear(2, 2, rngs=rngs)
      self.dropout = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x):
      return self.dropout(self.dense(x))

  with pytest.raises(ValueError, match="state other than nnx.Param"):
    nnx_bridge.LinenLike(Dropping)
