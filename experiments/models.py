"""Flax models of the pruning literature.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from experiments import models
  >>> params = models.LeNet300100().init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
  >>> models.count_params(params)
  266610
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax


def count_params(tree) -> int:
  """The number of scalars in a tree of arrays."""
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


class LeNet300100(nn.Module):
  """LeNet-300-100 (LeCun et al. 1998): 784-300-100-10, ReLU, 266,610 params."""

  num_classes: int = 10

  @nn.compact
  def __call__(self, x):
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(300)(x))
    x = nn.relu(nn.Dense(100)(x))
    return nn.Dense(self.num_classes)(x)
