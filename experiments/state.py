"""The train state of a run and its creation from the config.

The initial state is a pure function of the config (its seed), and of the
training split for the methods that prune before training: the loop
(:mod:`experiments.train`) starts from it, and :mod:`experiments.checkpoints`
restores into its shapes.
"""

from __future__ import annotations

import functools
import itertools
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

import jaxprune
from experiments import batching
from experiments import data
from experiments import methods
from experiments import networks
from experiments.config import Config

__all__ = ["TrainState", "create_state", "initial_state", "optimizer"]


class TrainState(jaxprune.TrainState):
  """jaxprune's TrainState plus batch-norm statistics (empty if none)."""

  batch_stats: Any = None


def optimizer(config: Config, masks=None) -> optax.GradientTransformation:
  """The plain optimizer of ``config``, wrapped by its method's
  transformation (which starts from ``masks``, if it keeps masks)."""
  if config.lr_schedule == "constant":
    lr = config.learning_rate
  elif config.lr_schedule == "cosine":
    lr = optax.cosine_decay_schedule(config.learning_rate, config.steps)
  elif config.lr_schedule == "step":  # FlipOut's recipe: /10 at 43% and 71%
    lr = optax.piecewise_constant_schedule(
        config.learning_rate,
        {int(0.43 * config.steps): 0.1, int(0.71 * config.steps): 0.1},
    )
  else:
    raise ValueError(f"unknown lr_schedule {config.lr_schedule!r}")
  if config.optimizer == "adam":
    inner = optax.adam(lr)
  elif config.optimizer == "adamw":
    inner = optax.adamw(lr, weight_decay=config.weight_decay)
  elif config.optimizer == "sgd":
    inner = optax.chain(
        optax.add_decayed_weights(config.weight_decay),
        optax.sgd(lr, momentum=config.momentum or None),
    )
  else:
    raise ValueError(f"unknown optimizer {config.optimizer!r}")
  return methods.build(inner, config, masks)


def _init_batches(config: Config, train_split):
  """The batches of a before-training method: a stream of its own (seed + 1),
  so that training sees the same batches whatever the method."""
  for i in itertools.count():
    yield batching.train_batch(train_split, config.init_batch_size,
                               config.seed + 1, i)


def create_state(config: Config, model, sample: np.ndarray,
                 train_split=None) -> TrainState:
  """The initial train state, a pure function of the config's seed.

  A method that prunes at initialisation (``Method.prune_at_init``) prunes
  here, on ``train_split``; without it (a template to restore a checkpoint
  into) its masks keep everything, and a method that shrinks the network
  cannot make one.
  """
  # One compiled program: eagerly, each initializer compiles on its own.
  init = jax.jit(functools.partial(model.init, train=False))
  variables = init(jax.random.key(config.seed), sample)
  method = methods.get(config.method)
  params, masks = variables["params"], None
  if method.prune_at_init and train_split is not None:
    model, params, masks = method.prune_at_init(
        config, model, variables, _init_batches(config, train_split))
  elif method.shrinks:
    raise ValueError(f"{config.method} needs the training split to prune")
  if masks is None:
    masks = methods.all_kept(params)
  return TrainState.create(
      apply_fn=model.apply,
      params=method.init_params(config, params),
      tx=optimizer(config, masks),
      batch_stats=variables.get("batch_stats", {}),
  )


def initial_state(config: Config, train_split=None) -> TrainState:
  """The replicated initial state, from the model's input shape (and, for a
  before-training method, from ``train_split``)."""
  model = networks.get(config)
  shape = data.IMAGE_SHAPES[config.dataset]
  state = create_state(config, model, np.zeros((1, *shape), np.float32),
                       train_split)
  mesh = batching.data_mesh()
  return jax.device_put(state, NamedSharding(mesh, PartitionSpec()))
