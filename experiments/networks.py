"""The network of a run: its Linen model, or the NNX twin (``flax_api``).

Both come with Linen's ``init`` and ``apply``, which the train state and
the methods use: a Linen module as it is, an NNX twin of
:mod:`experiments.nnx_models` behind :class:`experiments.nnx_bridge.LinenLike`.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from experiments import config, networks
  >>> c = config.resolve("smoke", ["flax_api=nnx"])
  >>> variables = networks.get(c).init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
  >>> sorted(variables["params"])
  ['hidden1', 'hidden2', 'out']
"""

from __future__ import annotations

from collections.abc import Sequence

from experiments import data
from experiments import models
from experiments import nnx_bridge
from experiments import nnx_models
from experiments.config import Config

__all__ = ["CLASSES", "FLAX_APIS", "get"]

FLAX_APIS = ("linen", "nnx")
CLASSES = 10  # every data set here has 10 classes


def get(config: Config, widths: Sequence[int] | None = None):
  """The model of ``config`` (10 classes), with hidden ``widths`` if given
  (a network shrunk by SNAP-it): a Linen module, or with
  ``config.flax_api == "nnx"`` its NNX twin for the data set's images.

  Raises:
    ValueError: an unknown ``flax_api`` or model, or widths for a model
      without them.
  """
  if config.flax_api == "linen":
    return models.get_model(config.model, num_classes=CLASSES, widths=widths)
  if config.flax_api == "nnx":
    shape = data.IMAGE_SHAPES[config.dataset]
    # LinenLike builds it abstractly at once: a bad name or widths raise here.
    return nnx_bridge.LinenLike(lambda rngs: nnx_models.get_model(
        config.model, shape, 10, widths, rngs=rngs))
  raise ValueError(f"unknown flax_api {config.flax_api!r}; expected one of "
                   f"{', '.join(FLAX_APIS)}")
