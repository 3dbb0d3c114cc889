"""Argument checks shared by the public functions.

Each check raises ``TypeError`` or ``ValueError`` with a message that names
the argument (and the caller where that helps); each returns nothing, or the
value normalised.

Example:
  >>> from jaxprune import _checks
  >>> _checks.check_sparsity(0.9, "sparsity")
  0.9
  >>> _checks.check_int("prune_every", 0, minimum=1)
  Traceback (most recent call last):
  ...
  ValueError: prune_every must be >= 1, got 0
"""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def counted(n: int, singular: str, plural: str | None = None) -> str:
  """``n`` followed by the noun in the number ``n`` takes (``plural``
  defaults to ``singular + "s"``), for messages.

  Example:
    >>> from jaxprune import _checks
    >>> _checks.counted(1, "batch", "batches"), _checks.counted(3, "step")
    ('1 batch', '3 steps')
  """
  return f"{n} {singular if n == 1 else plural or singular + 's'}"


def check_sparsity(value: Any, name: str) -> float:
  """``value`` as a float in ``[0, 1]``; ``name`` is used in the message."""
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise TypeError(f"{name} must be a real number, got {value!r}")
  value = float(value)
  if not 0.0 <= value <= 1.0:  # also rejects NaN
    raise ValueError(f"{name} must be in [0, 1], got {value}")
  return value


def check_int(name: str, value: Any, minimum: int,
              maximum: int | None = None) -> None:
  """``value`` is an integer (not a bool) in ``[minimum, maximum]``."""
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise TypeError(f"{name} must be an integer, got {value!r}")
  if value < minimum or (maximum is not None and value > maximum):
    bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
    raise ValueError(f"{name} must be {bound}, got {value}")


def check_seed(seed: Any) -> None:
  """``seed`` is an integer (not a bool)."""
  if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
    raise TypeError(f"seed must be an integer, got {seed!r}")


def check_flag(name: str, value: Any) -> None:
  """``value`` is True or False."""
  if not isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{name} must be True or False, got {value!r}")


def check_prunable(prunable: Any) -> None:
  """``prunable`` is None or a ``(path, leaf) -> bool`` function."""
  if prunable is not None and not callable(prunable):
    raise TypeError(
        f"prunable must be a (path, leaf) -> bool function, got {prunable!r}")


def check_scalar_hyperparameter(name: str, value: Any, positive: bool) -> None:
  """A scalar hyperparameter that may be traced (``inject_hyperparams``):
  a real number, > 0 if ``positive`` else >= 0 (checked unless traced)."""
  if isinstance(value, bool) or not (
      isinstance(value, numbers.Real)
      or jnp.issubdtype(getattr(value, "dtype", np.dtype(object)), jnp.number)
  ):
    raise TypeError(f"{name} must be a number, got {value!r}")
  if jnp.ndim(value) != 0:
    raise ValueError(f"{name} must be a scalar, got shape {jnp.shape(value)}")
  if isinstance(value, jax.core.Tracer):
    return
  number = float(np.asarray(value))
  valid = number > 0 if positive else number >= 0
  if not valid:
    bound = "> 0" if positive else ">= 0"
    raise ValueError(f"{name} must be {bound}, got {number}")


def check_batches(batches: Any, caller: str) -> None:
  """``batches`` is a sequence or iterator of batches, not one array (whose
  rows would be read as one batch each)."""
  if isinstance(batches, (jax.Array, np.ndarray)):
    rows = len(batches) if np.ndim(batches) else 0
    raise TypeError(
        f"{caller}: batches must be a sequence or an iterator of batches, got "
        f"one array of shape {np.shape(batches)}, which would be read as "
        f"{counted(rows, 'batch', 'batches')} of one row"
        f"{'' if rows == 1 else ' each'}; pass [batch] for a single batch")


def require_params(params: Any, caller: str) -> None:
  """``update`` was given the params (``caller`` as ``"jaxprune.prune"``)."""
  if params is None:
    raise ValueError(
        f"{caller} needs the current params: call "
        "tx.update(grads, opt_state, params)"
    )
