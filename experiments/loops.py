"""Short training and evaluation loops for the scripts that work on a trained
run in their own process (fine-tuning centroids, quantization-aware
training): batches of a split in a seeded order, and the test error.

Example:
  >>> import numpy as np, optax, jax.numpy as jnp
  >>> from experiments import data, loops
  >>> split = data.Split(np.zeros((8, 28, 28, 1), np.uint8),
  ...                    np.arange(8, dtype=np.int32) % 2, "mnist")
  >>> apply = lambda p, x: x.reshape(len(x), -1)[:, :2] @ p
  >>> params = jnp.zeros((2, 2))
  >>> tuned, _ = loops.train_steps(apply, optax.sgd(0.1), params, split,
  ...                              steps=2, seed=0, batch=4)
  >>> round(loops.error_percent(apply, tuned, split), 1)
  50.0
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import data

__all__ = ["error_percent", "train_steps"]

Apply = Callable[[Any, jax.Array], jax.Array]  # (params, images) -> logits


def error_percent(apply: Apply, params: Any, split: data.Split,
               batch: int = 1000) -> float:
  """The error of ``apply``'s argmax on ``split``, in percent."""
  predict = jax.jit(lambda p, x: jnp.argmax(apply(p, x), -1))
  images = np.asarray(split.images)  # normalised a batch at a time
  correct = sum(int(jnp.sum(
      predict(params, data.normalise(images[i:i + batch], split.name))
      == jnp.asarray(split.labels[i:i + batch])))
                for i in range(0, len(images), batch))
  return 100.0 * (1 - correct / len(images))


def train_steps(apply: Apply, tx: optax.GradientTransformation, params: Any,
                split: data.Split, *, steps: int, seed: int, batch: int,
                state: Any = None) -> tuple[Any, Any]:
  """``steps`` of ``tx`` on the cross-entropy of ``apply``, over batches of
  ``split`` in an order drawn from ``seed`` (wrapping around); returns the
  params and the optimizer state."""
  state = tx.init(params) if state is None else state

  @jax.jit
  def step(params, state, x, y):
    def loss(p):
      return optax.softmax_cross_entropy_with_integer_labels(apply(p, x), y).mean()
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    return optax.apply_updates(params, updates), state

  # Normalised a batch at a time: the same values, without a float copy of
  # the whole split at every call.
  images, labels = np.asarray(split.images), np.asarray(split.labels)
  order = np.random.default_rng(seed).permutation(len(images))
  for i in range(steps):
    start = (i * batch) % (len(images) - batch + 1)
    rows = order[start:start + batch]
    params, state = step(params, state,
                         jnp.asarray(data.normalise(images[rows], split.name)),
                         jnp.asarray(labels[rows]))
  return params, state
