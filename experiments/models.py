"""Flax models of the pruning literature.

Every model takes NHWC float32 images (MNIST ``[B, 28, 28, 1]``, CIFAR
``[B, 32, 32, 3]``), has a ``num_classes`` field and is called as
``model.apply(variables, x, train=...)``. Models with batch norm keep their
running statistics in the ``batch_stats`` collection, so a training step
applies them with ``train=True, mutable=["batch_stats"]``; the others ignore
``train``. All weight matrices are ordinary ``kernel`` params (ndim >= 2), the
leaves jaxprune prunes by default.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from experiments import models
  >>> x = jnp.zeros((1, 28, 28, 1))
  >>> variables = models.get_model("lenet300100").init(jax.random.key(0), x)
  >>> models.count_params(variables["params"])
  266610
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def count_params(tree) -> int:
  """The number of scalars in a tree of arrays."""
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _batch_norm(train: bool) -> nn.BatchNorm:
  """PyTorch's BatchNorm2d defaults (momentum 0.1 there is 0.9 here)."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)


class LeNet300100(nn.Module):
  """LeNet-300-100 (LeCun et al. 1998): 784-300-100-10, ReLU, 266,610 params.

  ``widths`` sets the hidden widths (a network shrunk by SNAP-it).
  """

  num_classes: int = 10
  widths: tuple[int, ...] = (300, 100)

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # No batch norm or dropout.
    x = x.reshape((x.shape[0], -1))
    for width in self.widths:
      x = nn.relu(nn.Dense(width)(x))
    return nn.Dense(self.num_classes)(x)


class LeNet5(nn.Module):
  """LeNet-5-Caffe: conv 20, conv 50 (5x5 VALID, each max-pooled), dense 500.

  The Caffe variant of LeNet-5 used by Han et al. (2015), SNIP (Lee et al.
  2019) and others: 431,080 params on 28x28x1 input.
  """

  num_classes: int = 10
  # The filters of the two convolutions and the units of the dense layer
  # (a network whose channels were pruned and cut out).
  widths: tuple[int, ...] = (20, 50, 500)

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # No batch norm or dropout.
    for features in self.widths[:2]:
      x = nn.relu(nn.Conv(features, (5, 5), padding="VALID")(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(self.widths[2])(x))
    return nn.Dense(self.num_classes)(x)


class Conv6(nn.Module):
  """Conv-6 of Frankle & Carbin (2019, Figure 2): 2,262,602 params on CIFAR-10.

  Conv 64, 64, pool, 128, 128, pool, 256, 256, pool (3x3 SAME, ReLU), then
  dense 256, 256, num_classes; no batch norm. The paper rounds to 2.3M.
  """

  num_classes: int = 10
  # Six conv widths then two dense widths (a network shrunk by SNAP-it).
  widths: tuple[int, ...] = (64, 64, 128, 128, 256, 256, 256, 256)

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # No batch norm or dropout.
    convs, dense = self.widths[:6], self.widths[6:]
    for i in range(0, 6, 2):
      x = nn.relu(nn.Conv(convs[i], (3, 3), padding="SAME")(x))
      x = nn.relu(nn.Conv(convs[i + 1], (3, 3), padding="SAME")(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    for width in dense:
      x = nn.relu(nn.Dense(width)(x))
    return nn.Dense(self.num_classes)(x)


VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512),
                (512, 512, 512))
VGG19_STAGES = ((64, 64), (128, 128), (256, 256, 256, 256),
                (512, 512, 512, 512), (512, 512, 512, 512))


class VGG(nn.Module):
  """The CIFAR VGG with batch norm: 3x3 conv-BN-ReLU stages, one dense layer.

  Each stage ends in a 2x2 max pool, so 32x32 input leaves a 1x1x512 map that
  a single dense layer classifies (the pytorch-cifar VGG, also FlipOut's).

  Attributes:
    num_classes: Number of logits.
    stages: Output channels of the convolutions, one tuple per stage.
    conv_bias: Whether convolutions have a bias. It is redundant before batch
      norm, so off by default; PyTorch references keep it (``nn.Conv2d``'s
      default), which adds one param per channel.
  """

  num_classes: int = 10
  stages: Sequence[Sequence[int]] = VGG16_STAGES
  conv_bias: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    for stage in self.stages:
      for features in stage:
        x = nn.Conv(features, (3, 3), padding=1, use_bias=self.conv_bias)(x)
        x = nn.relu(_batch_norm(train)(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    return nn.Dense(self.num_classes)(x)


class VGG16(VGG):
  """CIFAR VGG-16-BN: 14,724,042 params (14,728,266 with ``conv_bias``)."""

  stages: Sequence[Sequence[int]] = VGG16_STAGES


class VGG19(VGG):
  """CIFAR VGG-19-BN: 20,035,018 params (20,040,522 with ``conv_bias``)."""

  stages: Sequence[Sequence[int]] = VGG19_STAGES


class BasicBlock(nn.Module):
  """Two 3x3 conv-BN layers and a shortcut (He et al. 2016).

  Attributes:
    features: Output channels.
    strides: Stride of the first convolution and of the shortcut.
    shortcut: How the shortcut changes shape, when it must: ``"projection"``
      (1x1 conv + BN, option B) or ``"zero_pad"`` (subsample and pad the
      channels with zeros, option A, parameter-free).
  """

  features: int
  strides: int = 1
  shortcut: str = "projection"

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = functools.partial(nn.Conv, self.features, (3, 3), padding=1,
                             use_bias=False)
    y = nn.relu(_batch_norm(train)(conv(strides=self.strides)(x)))
    y = _batch_norm(train)(conv()(y))
    if self.strides != 1 or x.shape[-1] != self.features:
      if self.shortcut == "projection":
        x = nn.Conv(self.features, (1, 1), strides=self.strides,
                    padding="VALID", use_bias=False)(x)
        x = _batch_norm(train)(x)
      elif self.shortcut == "zero_pad":
        x = x[:, ::self.strides, ::self.strides, :]
        extra = self.features - x.shape[-1]
        pad = (extra // 2, extra - extra // 2)
        x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), pad))
      else:
        raise ValueError(f"Unknown shortcut {self.shortcut!r}.")
    return nn.relu(y + x)


class ResNet(nn.Module):
  """A CIFAR ResNet of BasicBlocks: 3x3 stem, no max pool, global average pool.

  The stem has ``widths[0]`` channels; every stage after the first halves the
  resolution in its first block.

  Attributes:
    num_classes: Number of logits.
    stage_sizes: Number of blocks per stage.
    widths: Channels per stage.
    shortcut: ``BasicBlock.shortcut``.
  """

  num_classes: int = 10
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  widths: Sequence[int] = (64, 128, 256, 512)
  shortcut: str = "projection"

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(self.widths[0], (3, 3), padding=1, use_bias=False)(x)
    x = nn.relu(_batch_norm(train)(x))
    for i, (size, width) in enumerate(zip(self.stage_sizes, self.widths)):
      for j in range(size):
        strides = 2 if i > 0 and j == 0 else 1
        x = BasicBlock(width, strides, self.shortcut)(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes)(x)


class ResNet18(ResNet):
  """The CIFAR ResNet-18 of pytorch-cifar: 11,173,962 params.

  Blocks (2, 2, 2, 2) of widths 64-512 with projection shortcuts.
  """

  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  widths: Sequence[int] = (64, 128, 256, 512)
  shortcut: str = "projection"


class ResNet20(ResNet):
  """ResNet-20 of He et al. (2016, Section 4.2): 269,722 params ("0.27M").

  Three stages of three blocks, widths 16, 32, 64. The paper's CIFAR nets use
  zero-padding identity shortcuts (option A), the default here;
  ``shortcut="projection"`` (option B) gives 272,474 params.
  """

  stage_sizes: Sequence[int] = (3, 3, 3)
  widths: Sequence[int] = (16, 32, 64)
  shortcut: str = "zero_pad"


MODELS: dict[str, type[nn.Module]] = {
    "lenet300100": LeNet300100,
    "lenet5": LeNet5,
    "conv6": Conv6,
    "vgg16": VGG16,
    "vgg19": VGG19,
    "resnet18": ResNet18,
    "resnet20": ResNet20,
}


def get_model(name: str, num_classes: int = 10,
              widths: tuple[int, ...] | None = None) -> nn.Module:
  """The model registered as ``name``, with ``num_classes`` logits.

  ``widths`` gives the hidden widths of a model that has them (LeNet-300-100,
  LeNet-5, Conv-6), in call order.

  Raises:
    ValueError: if ``name`` is not a key of ``MODELS``, or has no widths.
  """
  if name not in MODELS:
    raise ValueError(f"Unknown model {name!r}; known: {', '.join(MODELS)}.")
  if widths is None:
    return MODELS[name](num_classes=num_classes)
  if "widths" not in MODELS[name].__dataclass_fields__:
    raise ValueError(f"model {name!r} has no configurable widths")
  return MODELS[name](num_classes=num_classes, widths=tuple(widths))
