"""The models the benchmarks time, behind one lookup: :func:`get_model`.

Besides the models of ``experiments.models`` (LeNet-300-100, LeNet-5-Caffe,
ResNet-20 with batch norm), two families exist only for benchmarking:

- :class:`Transformer`: a small vision transformer on 28x28x1 images (4x4
  patches, pre-LN blocks of multi-head self-attention and an MLP, mean-pooled
  tokens, a dense head). Every weight matrix is a 2-D ``kernel`` and the
  patch embedding a conv kernel, so jaxprune's default predicate prunes them.
- :class:`MLP`: the 4-layer MLP of the mask-update benchmark
  (``width -> width`` three times, then ``width -> 10``) on ``width``-long
  input vectors, at widths giving about 1M, 4M, 26M and 100M parameters.

Example:
  >>> from benchmarks import models
  >>> bench = models.get_model("mlp4m")
  >>> bench.input_shape, bench.module.width
  ((1155,), 1155)
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax.numpy as jnp

from experiments import models as experiment_models

# Hidden widths of the 4-layer MLP: 3 * (w * w + w) + 10 * w + 10 params.
MLP_WIDTHS = {"mlp1m": 577, "mlp4m": 1155, "mlp26m": 2944, "mlp100m": 5773}


class MLP(nn.Module):
  """Three ``Dense(width)`` + ReLU layers and a dense head, on ``[B, width]``.

  Attributes:
    width: the input size and the hidden width.
    num_classes: number of logits.
  """

  width: int
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # No batch norm or dropout.
    for _ in range(3):
      x = nn.relu(nn.Dense(self.width)(x))
    return nn.Dense(self.num_classes)(x)


def sinusoidal_positions(length: int, width: int) -> jnp.ndarray:
  """The fixed sine/cosine position codes of Vaswani et al. (2017).

  Returns:
    A ``[length, width]`` array.
  """
  positions = jnp.arange(length, dtype=jnp.float32)[:, None]
  frequencies = jnp.exp(
      -math.log(10000.0) * jnp.arange(0, width, 2, dtype=jnp.float32) / width
  )
  angles = positions * frequencies[None, :]
  codes = jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1)
  return codes.reshape(length, -1)[:, :width]


class SelfAttention(nn.Module):
  """Multi-head self-attention with one ``Dense(3 * width)`` for q, k and v."""

  heads: int

  @nn.compact
  def __call__(self, x):
    batch, length, width = x.shape
    qkv = nn.Dense(3 * width)(x).reshape(
        batch, length, 3, self.heads, width // self.heads
    )
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    attended = nn.dot_product_attention(q, k, v)
    return nn.Dense(width)(attended.reshape(batch, length, width))


class TransformerBlock(nn.Module):
  """A pre-LN block: ``x + attention(LN(x))``, then ``x + MLP(LN(x))``."""

  heads: int
  mlp_ratio: int = 4

  @nn.compact
  def __call__(self, x):
    width = x.shape[-1]
    x = x + SelfAttention(self.heads)(nn.LayerNorm()(x))
    hidden = nn.gelu(nn.Dense(self.mlp_ratio * width)(nn.LayerNorm()(x)))
    return x + nn.Dense(width)(hidden)


class Transformer(nn.Module):
  """A small vision transformer for ``[B, 28, 28, 1]`` images.

  Attributes:
    depth: number of blocks.
    width: token width.
    heads: attention heads per block; must divide ``width``.
    patch: side of the square patches the conv embedding cuts.
    num_classes: number of logits.
  """

  depth: int = 4
  width: int = 128
  heads: int = 4
  patch: int = 4
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # No batch norm or dropout.
    x = nn.Conv(self.width, (self.patch, self.patch), strides=self.patch,
                padding="VALID")(x)
    x = x.reshape(x.shape[0], -1, self.width)
    x = x + sinusoidal_positions(x.shape[1], self.width)[None]
    for _ in range(self.depth):
      x = TransformerBlock(self.heads)(x)
    x = nn.LayerNorm()(x).mean(axis=1)
    return nn.Dense(self.num_classes)(x)


@dataclasses.dataclass(frozen=True)
class BenchModel:
  """A model and the shape of one input example.

  Attributes:
    name: the name :func:`get_model` knows it by.
    module: the Flax module, called as ``module.apply(variables, x,
      train=...)``; batch statistics, if any, live in ``batch_stats``.
    input_shape: the shape of one example, without the batch axis.
  """

  name: str
  module: nn.Module
  input_shape: tuple[int, ...]


MNIST_SHAPE = (28, 28, 1)
CIFAR_SHAPE = (32, 32, 3)

_BUILDERS = {
    "lenet300100": lambda: (experiment_models.get_model("lenet300100"), MNIST_SHAPE),
    "lenet5": lambda: (experiment_models.get_model("lenet5"), MNIST_SHAPE),
    "resnet20": lambda: (experiment_models.get_model("resnet20"), CIFAR_SHAPE),
    "transformer": lambda: (Transformer(), MNIST_SHAPE),
    "transformer_small": lambda: (Transformer(depth=2, width=64), MNIST_SHAPE),
    **{
        name: (lambda width=width: (MLP(width), (width,)))
        for name, width in MLP_WIDTHS.items()
    },
}

MODEL_NAMES = tuple(_BUILDERS)


def get_model(name: str) -> BenchModel:
  """The benchmark model called ``name`` (one of ``MODEL_NAMES``).

  Raises:
    ValueError: if ``name`` is unknown.
  """
  if name not in _BUILDERS:
    raise ValueError(f"unknown model {name!r}; known: {', '.join(MODEL_NAMES)}")
  module, input_shape = _BUILDERS[name]()
  return BenchModel(name, module, input_shape)
