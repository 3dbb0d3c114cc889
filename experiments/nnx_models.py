"""Flax NNX twins of the models of :mod:`experiments.models`.

Each twin has the layers, widths and parameter count of its Linen model and
takes the same NHWC float32 images, but, being NNX, is built for one input
shape (``image_shape``, without the batch) and called as ``model(x)``. Batch
norm is ``nnx.BatchNorm`` (PyTorch's defaults, as in the Linen models): it
uses the batch statistics after ``model.train()`` and the running ones after
``model.eval()``.

Layer names are NNX attribute names (``hidden1``, ``conv1``, ``out``); in the
sequential models (LeNet-300-100, LeNet-5, Conv-6, VGG) they sort in call
order, as Linen's ``Dense_0``, ``Dense_1``... do, which is the order the
experiments' structured methods and reports read the layers in.

Example:
  >>> from flax import nnx
  >>> from experiments import models, nnx_models
  >>> model = nnx_models.get_model("lenet300100", (28, 28, 1), rngs=nnx.Rngs(0))
  >>> params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  >>> sorted(params), models.count_params(params)
  (['hidden1', 'hidden2', 'out'], 266610)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax.numpy as jnp
from flax import nnx

from experiments import models

__all__ = [
    "MODELS",
    "VGG",
    "BasicBlock",
    "Conv6",
    "LeNet300100",
    "LeNet5",
    "ResNet",
    "get_model",
]


def _batch_norm(features: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
  """PyTorch's BatchNorm2d defaults (momentum 0.1 there is 0.9 here)."""
  return nnx.BatchNorm(features, momentum=0.9, epsilon=1e-5, rngs=rngs)


def _pool(x):
  return nnx.max_pool(x, (2, 2), strides=(2, 2))


class LeNet300100(nnx.Module):
  """LeNet-300-100: 784-300-100-10, ReLU, 266,610 params on MNIST.

  Layers ``hidden1``, ``hidden2``... (one per entry of ``widths``), ``out``.
  """

  def __init__(self, image_shape: Sequence[int], num_classes: int = 10,
               widths: Sequence[int] = (300, 100), *, rngs: nnx.Rngs):
    self.depth = len(widths)
    inputs = math.prod(image_shape)
    for i, width in enumerate(widths, start=1):
      setattr(self, f"hidden{i}", nnx.Linear(inputs, width, rngs=rngs))
      inputs = width
    self.out = nnx.Linear(inputs, num_classes, rngs=rngs)

  def __call__(self, x):
    x = x.reshape((x.shape[0], -1))
    for i in range(1, self.depth + 1):
      x = nnx.relu(getattr(self, f"hidden{i}")(x))
    return self.out(x)


class LeNet5(nnx.Module):
  """LeNet-5-Caffe: ``conv1`` 20, ``conv2`` 50 (5x5 VALID, each max-pooled),
  ``hidden`` 500, ``out``: 431,080 params on 28x28x1 input."""

  def __init__(self, image_shape: Sequence[int], num_classes: int = 10, *,
               rngs: nnx.Rngs):
    height, width, channels = image_shape
    self.conv1 = nnx.Conv(channels, 20, (5, 5), padding="VALID", rngs=rngs)
    self.conv2 = nnx.Conv(20, 50, (5, 5), padding="VALID", rngs=rngs)
    side = lambda n: ((n - 4) // 2 - 4) // 2
    self.hidden = nnx.Linear(side(height) * side(width) * 50, 500, rngs=rngs)
    self.out = nnx.Linear(500, num_classes, rngs=rngs)

  def __call__(self, x):
    x = _pool(nnx.relu(self.conv1(x)))
    x = _pool(nnx.relu(self.conv2(x)))
    x = nnx.relu(self.hidden(x.reshape((x.shape[0], -1))))
    return self.out(x)


class Conv6(nnx.Module):
  """Conv-6 of Frankle & Carbin (2019): 2,262,602 params on CIFAR-10.

  ``conv1`` to ``conv6`` (3x3 SAME, ReLU, a max pool after every second),
  then ``hidden1``, ``hidden2`` and ``out``; no batch norm. ``widths``: six
  conv widths then two dense widths, as in :class:`experiments.models.Conv6`.
  """

  def __init__(self, image_shape: Sequence[int], num_classes: int = 10,
               widths: Sequence[int] = (64, 64, 128, 128, 256, 256, 256, 256),
               *, rngs: nnx.Rngs):
    height, width, channels = image_shape
    for i, features in enumerate(widths[:6], start=1):
      setattr(self, f"conv{i}", nnx.Conv(channels, features, (3, 3),
                                         padding="SAME", rngs=rngs))
      channels = features
    inputs = (height // 8) * (width // 8) * channels
    self.hidden1 = nnx.Linear(inputs, widths[6], rngs=rngs)
    self.hidden2 = nnx.Linear(widths[6], widths[7], rngs=rngs)
    self.out = nnx.Linear(widths[7], num_classes, rngs=rngs)

  def __call__(self, x):
    for i in range(1, 7):
      x = nnx.relu(getattr(self, f"conv{i}")(x))
      if i % 2 == 0:
        x = _pool(x)
    x = x.reshape((x.shape[0], -1))
    x = nnx.relu(self.hidden2(nnx.relu(self.hidden1(x))))
    return self.out(x)


class VGG(nnx.Module):
  """The CIFAR VGG with batch norm (:class:`experiments.models.VGG`).

  Convolutions ``conv01``, ``conv02``... each followed by batch norm
  ``norm01``, ``norm02``..., a max pool after each stage, then ``out``.
  """

  def __init__(self, image_shape: Sequence[int], num_classes: int = 10,
               stages: Sequence[Sequence[int]] = models.VGG16_STAGES,
               conv_bias: bool = False, *, rngs: nnx.Rngs):
    height, width, channels = image_shape
    self.stage_sizes = tuple(len(stage) for stage in stages)
    features = [f for stage in stages for f in stage]
    for i, out in enumerate(features, start=1):
      setattr(self, f"conv{i:02d}", nnx.Conv(channels, out, (3, 3), padding=1,
                                             use_bias=conv_bias, rngs=rngs))
      setattr(self, f"norm{i:02d}", _batch_norm(out, rngs))
      channels = out
    shrink = 2 ** len(stages)
    self.out = nnx.Linear((height // shrink) * (width // shrink) * channels,
                          num_classes, rngs=rngs)

  def __call__(self, x):
    i = 0
    for size in self.stage_sizes:
      for _ in range(size):
        i += 1
        x = getattr(self, f"norm{i:02d}")(getattr(self, f"conv{i:02d}")(x))
        x = nnx.relu(x)
      x = _pool(x)
    return self.out(x.reshape((x.shape[0], -1)))


class BasicBlock(nnx.Module):
  """Two 3x3 conv-BN layers and a shortcut (:class:`experiments.models.BasicBlock`):
  ``conv1``, ``norm1``, ``conv2``, ``norm2``, and with a projection shortcut
  that changes the shape ``shortcut_conv`` and ``shortcut_norm``."""

  def __init__(self, in_features: int, features: int, strides: int = 1,
               shortcut: str = "projection", *, rngs: nnx.Rngs):
    if shortcut not in ("projection", "zero_pad"):
      raise ValueError(f"Unknown shortcut {shortcut!r}.")
    conv = functools.partial(nnx.Conv, out_features=features, kernel_size=(3, 3),
                             padding=1, use_bias=False, rngs=rngs)
    self.conv1 = conv(in_features, strides=strides)
    self.norm1 = _batch_norm(features, rngs)
    self.conv2 = conv(features)
    self.norm2 = _batch_norm(features, rngs)
    self.strides, self.features = strides, features
    self.reshapes = strides != 1 or in_features != features
    self.project = self.reshapes and shortcut == "projection"
    if self.project:
      self.shortcut_conv = nnx.Conv(in_features, features, (1, 1), strides=strides,
                                    padding="VALID", use_bias=False, rngs=rngs)
      self.shortcut_norm = _batch_norm(features, rngs)

  def __call__(self, x):
    y = nnx.relu(self.norm1(self.conv1(x)))
    y = self.norm2(self.conv2(y))
    if self.project:
      x = self.shortcut_norm(self.shortcut_conv(x))
    elif self.reshapes:  # option A: subsample, pad the channels with zeros
      x = x[:, ::self.strides, ::self.strides, :]
      extra = self.features - x.shape[-1]
      x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
    return nnx.relu(y + x)


class ResNet(nnx.Module):
  """A CIFAR ResNet of BasicBlocks (:class:`experiments.models.ResNet`):
  ``stem_conv``, ``stem_norm``, blocks ``stage1_block1``... and ``out``.
  The defaults are ResNet-18's; ResNet-20 is ``stage_sizes=(3, 3, 3)``,
  ``widths=(16, 32, 64)``, ``shortcut="zero_pad"``."""

  def __init__(self, image_shape: Sequence[int], num_classes: int = 10,
               stage_sizes: Sequence[int] = (2, 2, 2, 2),
               widths: Sequence[int] = (64, 128, 256, 512),
               shortcut: str = "projection", *, rngs: nnx.Rngs):
    channels = image_shape[-1]
    self.stem_conv = nnx.Conv(channels, widths[0], (3, 3), padding=1,
                              use_bias=False, rngs=rngs)
    self.stem_norm = _batch_norm(widths[0], rngs)
    blocks = []  # attribute names, in call order
    channels = widths[0]
    for i, (size, width) in enumerate(zip(stage_sizes, widths), start=1):
      for j in range(1, size + 1):
        strides = 2 if i > 1 and j == 1 else 1
        name = f"stage{i}_block{j}"
        setattr(self, name, BasicBlock(channels, width, strides, shortcut,
                                       rngs=rngs))
        blocks.append(name)
        channels = width
    self.blocks = tuple(blocks)
    self.out = nnx.Linear(channels, num_classes, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.stem_norm(self.stem_conv(x)))
    for name in self.blocks:
      x = getattr(self, name)(x)
    return self.out(jnp.mean(x, axis=(1, 2)))


MODELS = {
    "lenet300100": LeNet300100,
    "lenet5": LeNet5,
    "conv6": Conv6,
    "vgg16": functools.partial(VGG, stages=models.VGG16_STAGES),
    "vgg19": functools.partial(VGG, stages=models.VGG19_STAGES),
    "resnet18": functools.partial(ResNet, stage_sizes=(2, 2, 2, 2),
                                  widths=(64, 128, 256, 512),
                                  shortcut="projection"),
    "resnet20": functools.partial(ResNet, stage_sizes=(3, 3, 3),
                                  widths=(16, 32, 64), shortcut="zero_pad"),
}
"""The NNX twin of every model of :data:`experiments.models.MODELS`."""

_WITH_WIDTHS = ("lenet300100", "conv6")


def get_model(name: str, image_shape: Sequence[int], num_classes: int = 10,
              widths: Sequence[int] | None = None, *,
              rngs: nnx.Rngs) -> nnx.Module:
  """The NNX twin of the model ``name`` for images of ``image_shape``
  (``(height, width, channels)``), initialised from ``rngs``.

  ``widths`` gives the hidden widths of a model that has them
  (LeNet-300-100, Conv-6), in call order, as in
  :func:`experiments.models.get_model`.

  Raises:
    ValueError: if ``name`` is not a key of ``MODELS``, or has no widths.
  """
  if name not in MODELS:
    raise ValueError(f"Unknown model {name!r}; known: {', '.join(MODELS)}.")
  if widths is None:
    return MODELS[name](tuple(image_shape), num_classes, rngs=rngs)
  if name not in _WITH_WIDTHS:
    raise ValueError(f"model {name!r} has no configurable widths")
  return MODELS[name](tuple(image_shape), num_classes, tuple(widths), rngs=rngs)
