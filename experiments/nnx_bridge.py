"""A Flax NNX model behind Linen's ``init`` and ``apply``.

The experiments' training loop is functional: its train state holds plain
``params`` and ``batch_stats`` trees and an ``apply_fn(variables, x,
train=..., mutable=...)``, Linen's ``Module.apply``. :class:`LinenLike`
gives an NNX model that interface, so that the loop, the checkpoints, the
sharding and every pruning method run an NNX model unchanged: the trees are
the plain dicts ``nnx.to_pure_dict(nnx.state(model, nnx.Param))`` (and
``nnx.BatchStat``), in the NNX model's own names.

Each call of ``apply`` merges the model's structure (its ``nnx.GraphDef``,
found once, without computing any array) with the given trees, puts it in
training or evaluation mode (``model.train()`` / ``model.eval()``), and
calls it.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from flax import nnx
  >>> from experiments import nnx_models
  >>> net = LinenLike(lambda rngs: nnx_models.get_model(
  ...     "resnet20", (8, 8, 1), rngs=rngs))
  >>> x = jnp.ones((2, 8, 8, 1))
  >>> variables = net.init(jax.random.key(0), x)
  >>> sorted(variables), sorted(variables["params"])[:2]
  (['batch_stats', 'params'], ['out', 'stage1_block1'])
  >>> logits, updates = net.apply(variables, x, train=True, mutable=["batch_stats"])
  >>> logits.shape, sorted(updates)
  ((2, 10), ['batch_stats'])
  >>> net.apply(variables, x).shape  # evaluation mode: running statistics
  (2, 10)
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import jax
from flax import nnx

__all__ = ["LinenLike"]


def _copy(state: nnx.State) -> nnx.State:
  """A state with new Variables (``replace_by_pure_dict`` sets in place)."""
  return jax.tree.map(lambda leaf: leaf, state)


class LinenLike:
  """The NNX model that ``make(rngs)`` builds, with Linen's ``init`` and
  ``apply``.

  The model may hold ``nnx.Param`` and ``nnx.BatchStat`` variables only
  (no dropout RNG streams, no other state): the variables are
  ``{"params": ...}``, plus ``{"batch_stats": ...}`` if it has batch norm.

  Attributes:
    make: ``rngs -> nnx.Module``, the model initialised from ``nnx.Rngs``.
    graphdef: the model's structure, as ``nnx.split`` gives it.

  Raises:
    ValueError: the model holds other state than params and batch
      statistics.
  """

  def __init__(self, make: Callable[[nnx.Rngs], nnx.Module]):
    self.make = make
    abstract = nnx.eval_shape(lambda: make(nnx.Rngs(0)))
    self.graphdef, self._params, self._stats, rest = nnx.split(
        abstract, nnx.Param, nnx.BatchStat, ...)
    if jax.tree.leaves(rest):
      kinds = sorted({type(v).__name__ for v in jax.tree.leaves(
          rest, is_leaf=lambda x: isinstance(x, nnx.Variable))})
      raise ValueError(
          f"LinenLike: {type(abstract).__name__} holds state other than "
          f"nnx.Param and nnx.BatchStat ({', '.join(kinds)}); the experiments' "
          "train state carries params and batch_stats only")

  @property
  def has_batch_stats(self) -> bool:
    return bool(jax.tree.leaves(self._stats))

  def init(self, rngs: jax.Array, *args, **kwargs) -> dict[str, Any]:
    """The initial variables from the key ``rngs``; like Linen's ``init``
    it accepts the model's inputs, which an NNX model does not need."""
    del args, kwargs
    model = self.make(nnx.Rngs(rngs))
    variables = {"params": nnx.to_pure_dict(nnx.state(model, nnx.Param))}
    if self.has_batch_stats:
      variables["batch_stats"] = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
    return variables

  def merge(self, variables: dict[str, Any], train: bool = False) -> nnx.Module:
    """The NNX model with ``variables``, in training mode if ``train``."""
    if "params" not in variables:
      raise ValueError("LinenLike: the variables have no 'params'")
    params = _copy(self._params)
    nnx.replace_by_pure_dict(params, variables["params"])
    stats = _copy(self._stats)
    if self.has_batch_stats:
      if not variables.get("batch_stats"):
        raise ValueError("LinenLike: the model has batch norm, but the "
                         "variables have no 'batch_stats'")
      nnx.replace_by_pure_dict(stats, variables["batch_stats"])
    model = nnx.merge(self.graphdef, params, stats)
    if train:
      model.train()
    else:
      model.eval()
    return model

  def apply(self, variables: dict[str, Any], x: jax.Array, train: bool = False,
            mutable: bool | Sequence[str] = False):
    """Linen's ``apply``: the outputs, and with ``mutable=["batch_stats"]``
    also ``{"batch_stats": ...}``, the statistics after the call (``{}``
    for a model without batch norm)."""
    model = self.merge(variables, train)
    outputs = model(x)
    if not mutable:
      return outputs
    if mutable is True or "batch_stats" in mutable:
      if self.has_batch_stats:
        return outputs, {"batch_stats": nnx.to_pure_dict(
            nnx.state(model, nnx.BatchStat))}
    return outputs, {}
