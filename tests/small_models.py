"""Small Flax models that several tests of the neuron methods share."""

from collections.abc import Sequence

import flax.linen as nn

# The params of MLP with two hidden layers, in call order.
MLP_LAYERS = ["Dense_0", "Dense_1", "Dense_2"]


class MLP(nn.Module):
  """Dense layers of ``widths`` units with ReLU, then ``outputs`` outputs."""

  widths: Sequence[int] = (6, 5)
  outputs: int = 3

  @nn.compact
  def __call__(self, x):
    for w in self.widths:
      x = nn.relu(nn.Dense(w)(x))
    return nn.Dense(self.outputs)(x)
