"""experiments.models: the literature's parameter counts, working forwards."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import models

pytestmark = pytest.mark.usefixtures("strict_dtypes")

MNIST = (2, 28, 28, 1)
CIFAR = (2, 32, 32, 3)

# name: (input shape, params); the source of each count is noted above it.
TABLE = {
    # LeCun et al. 1998; Han et al. 2015, Table 2.
    "lenet300100": (MNIST, 266_610),
    # Caffe's LeNet; Han et al. 2015, Table 3 (431K).
    "lenet5": (MNIST, 431_080),
    # Frankle & Carbin 2019, Figure 2 (2.3M).
    "conv6": (CIFAR, 2_262_602),
    # pytorch-cifar VGG without the conv biases that precede batch norm.
    "vgg16": (CIFAR, 14_724_042),
    "vgg19": (CIFAR, 20_035_018),
    # pytorch-cifar ResNet-18 (11.17M).
    "resnet18": (CIFAR, 11_173_962),
    # He et al. 2016, Table 6 (0.27M), option A shortcuts.
    "resnet20": (CIFAR, 269_722),
}
WITH_BATCH_NORM = {"vgg16", "vgg19", "resnet18", "resnet20"}


def _abstract_variables(model, shape):
  return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape))


@functools.cache
def _variables(name):
  shape, _ = TABLE[name]
  # rbg keys compile and run far faster than threefry on CPU.
  key = jax.random.key(0, impl="rbg")
  return jax.jit(models.get_model(name).init)(key, jnp.zeros(shape))


def _images(shape):
  return jax.random.normal(jax.random.key(1), shape, jnp.float32)


def test_table_covers_the_registry():
  assert set(TABLE) == set(models.MODELS)
  assert set(WITH_BATCH_NORM) <= set(models.MODELS)


@pytest.mark.parametrize("name", sorted(TABLE))
def test_param_count_matches_the_literature(name):
  shape, expected = TABLE[name]
  variables = _abstract_variables(models.get_model(name), shape)
  assert models.count_params(variables["params"]) == expected
  assert ("batch_stats" in variables) == (name in WITH_BATCH_NORM)


@pytest.mark.parametrize(
    "model, expected",
    [
        # pytorch-cifar / FlipOut keep nn.Conv2d's bias before batch norm.
        (models.VGG16(conv_bias=True), 14_728_266),
        (models.VGG19(conv_bias=True), 20_040_522),
        # Option B: 1x1 conv + BN projections at the two downsamplings.
        (models.ResNet20(shortcut="projection"), 272_474),
    ],
)
def test_variant_param_counts(model, expected):
  variables = _abstract_variables(model, CIFAR)
  assert models.count_params(variables["params"]) == expected


@pytest.mark.parametrize("name", sorted(TABLE))
def test_prunable_leaves_are_the_kernels(name):
  shape, _ = TABLE[name]
  params = _abstract_variables(models.get_model(name), shape)["params"]
  for path, leaf in jax.tree.flatten_with_path(params)[0]:
    is_kernel = path[-1].key == "kernel"
    assert (leaf.ndim >= 2) == is_kernel, jax.tree_util.keystr(path)


@pytest.mark.parametrize("name", sorted(TABLE))
def test_num_classes_sets_the_logits(name):
  shape, _ = TABLE[name]
  model = models.get_model(name, num_classes=100)
  logits, _ = jax.eval_shape(
      model.init_with_output, jax.random.key(0), jnp.zeros(shape)
  )
  assert logits.shape == (2, 100)


@pytest.mark.parametrize("name", sorted(TABLE))
def test_train_forward_gives_finite_logits(name):
  shape, _ = TABLE[name]
  model = models.get_model(name)
  variables = _variables(name)
  apply = jax.jit(functools.partial(model.apply, train=True,
                                    mutable=["batch_stats"]))
  logits, updates = apply(variables, _images(shape))
  assert logits.shape == (2, 10)
  assert logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))
  if name in WITH_BATCH_NORM:
    old, new = variables["batch_stats"], updates["batch_stats"]
    assert jax.tree.structure(old) == jax.tree.structure(new)
    assert not all(
        np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(new))
    )
  else:
    assert not updates


@pytest.mark.parametrize("name", sorted(TABLE))
def test_eval_forward_is_deterministic(name):
  shape, _ = TABLE[name]
  model = models.get_model(name)
  variables = _variables(name)
  x = _images(shape)
  apply = jax.jit(model.apply)
  logits = apply(variables, x)
  np.testing.assert_array_equal(apply(variables, x), logits)
  # Running statistics, not the batch's: a sample's logits stand alone.
  np.testing.assert_allclose(apply(variables, x[:1])[0], logits[0],
                             rtol=1e-4, atol=1e-5)


def test_resnet_rejects_unknown_shortcut():
  with pytest.raises(ValueError, match="shortcut"):
    _abstract_variables(models.ResNet20(shortcut="identity"), CIFAR)


def test_get_model_rejects_unknown_names():
  with pytest.raises(ValueError, match="resnet20"):
    models.get_model("resnet50")
