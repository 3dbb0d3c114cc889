"""Running a Flax model as given: its layers' calls recorded, or as a pure function.

A Linen model's top-level submodules are intercepted with
``nn.intercept_methods``; an NNX model is copied and the copy's layer
attributes are wrapped by a recorder.  Either way the model needs no change
and is left as it is.  :func:`layer_calls` records each named layer's module
and first argument; :func:`pure_apply` gives ``apply(params, batch_stats,
inputs)`` over plain trees, for ``jit`` and ``vmap``.

Example:
  >>> import flax.linen as nn
  >>> import jax, jax.numpy as jnp
  >>> from jaxprune import _recording
  >>> model = nn.Sequential([nn.Dense(4), nn.relu, nn.Dense(2)])
  >>> variables = model.init(jax.random.key(0), jnp.ones((1, 3)))
  >>> calls = _recording.layer_calls(model, jnp.ones((5, 3)), ['layers_2'],
  ...                                variables, 'example')
  >>> calls['layers_2'].inputs.shape
  (5, 4)
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
from typing import Any
from typing import NamedTuple

import flax.linen as nn
from flax import nnx

from jaxprune import _nnx


class Call(NamedTuple):
  """One recorded call of a layer.

  Attributes:
    module: the layer: a bound Linen module or the NNX layer of a copy of
      the model.
    inputs: its first argument.
  """

  module: Any
  inputs: Any


def model_params(model: Any, variables: Any, caller: str) -> Any:
  """The plain params of a Linen model's ``variables`` or of an NNX model."""
  if isinstance(model, nnx.Module):
    return _nnx.plain(model)
  if isinstance(model, nn.Module):
    if variables is None or "params" not in variables:
      raise ValueError(
          f"{caller}: a Linen model needs its variables ({{'params': ...}}), "
          "passed as variables=")
    return variables["params"]
  raise TypeError(f"{caller}: model must be a Flax Linen or NNX module, got "
                  f"{type(model).__name__}")


class _Recorder:
  """Stands in for an NNX layer: records its first argument, then calls it."""

  def __init__(self, layer, name, store):
    self.layer, self.name, self.store = layer, name, store

  def __call__(self, x, *args, **kwargs):
    self.store[self.name] = Call(self.layer, x)
    return self.layer(x, *args, **kwargs)


def layer_calls(model: Any, inputs: Any, names: Sequence[str], variables: Any,
                caller: str) -> dict[str, Call]:
  """Runs ``model`` on ``inputs`` once and records the call of each layer of
  ``names`` (top-level submodules, or NNX layer attributes) that it makes;
  the last call of a layer called several times."""
  model_params(model, variables, caller)  # checks the model and variables
  store: dict[str, Call] = {}
  if isinstance(model, nnx.Module):
    copy = nnx.merge(*nnx.split(model))  # the model itself is left as it is
    for name in names:
      if not isinstance(getattr(copy, name, None), nnx.Module):
        raise ValueError(f"{caller}: the model has no layer attribute {name!r}")
      setattr(copy, name, _Recorder(getattr(copy, name), name, store))
    copy(inputs)
    return store
  wanted = set(names)

  def record(next_fun, args, kwargs, context):
    module = context.module
    if (context.method_name == "__call__" and len(module.path) == 1
        and module.name in wanted and args):
      store[module.name] = Call(module, args[0])
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    model.apply(variables, inputs)
  return store


def pure_apply(model: Any, variables: Any, caller: str
               ) -> tuple[Callable[[Any, Any, Any], Any], Any, Any]:
  """``(apply, params, batch_stats)``: ``apply(params, batch_stats, inputs)``
  runs the model on plain trees (``batch_stats`` ``None`` when the model has
  none), and the model's own params and batch statistics."""
  params = model_params(model, variables, caller)
  if isinstance(model, nnx.Module):
    graphdef, param_state, stat_state, rest = nnx.split(
        model, nnx.Param, nnx.BatchStat, ...)
    stats = _nnx.plain(stat_state) or None

    def apply_nnx(params, batch_stats, inputs):
      values = nnx.merge(
          graphdef, _nnx.conformed(params, param_state, "the params"),
          stat_state if batch_stats is None else _nnx.conformed(
              batch_stats, stat_state, "the batch statistics"), rest)
      return values(inputs)

    return apply_nnx, params, stats
  others = {k: v for k, v in variables.items() if k not in ("params", "batch_stats")}

  def apply_linen(params, batch_stats, inputs):
    stats = {} if batch_stats is None else {"batch_stats": batch_stats}
    return model.apply({**others, "params": params, **stats}, inputs)

  return apply_linen, params, variables.get("batch_stats")
