"""Which units of a masked sequential network can be removed, and what is left.

A unit (a dense layer's output neuron, a conv filter) is removable when no
kept weight reaches it or no kept weight of the next layer reads it; an input
of the first layer is removable when no kept weight reads it.  Removing the
units leaves a smaller dense network; :func:`kept_params` counts its
parameters, the "params kept" column of Gallego-Posada et al. (2022).

Layers are the top-level entries of the params, in order (``Conv_0``,
``Conv_1``, ``Dense_0``, ...: Flax's names sort in call order for the
sequential models of :mod:`experiments.models`), each with a ``kernel``
(``(in, out)`` dense or ``(kh, kw, in, out)`` conv, channels last) and
optionally a ``bias``.  A dense layer after a conv layer reads its input
flattened from ``(h, w, c)``, so its input ``i`` is channel ``i % c``.

Example:
  >>> import numpy as np
  >>> params = {'Dense_0': {'kernel': np.ones((3, 2)), 'bias': np.ones(2)},
  ...           'Dense_1': {'kernel': np.ones((2, 2)), 'bias': np.ones(2)}}
  >>> masks = {'Dense_0': {'kernel': np.array([[1, 1], [0, 0], [1, 1]], bool),
  ...                      'bias': None},
  ...          'Dense_1': {'kernel': np.array([[1, 1], [0, 0]], bool),
  ...                      'bias': None}}
  >>> report = kept_params(params, masks)  # input 1 and hidden unit 1 go
  >>> report.kept, report.total, report.units
  (7, 14, {'Dense_0': [2, 1], 'Dense_1': [1, 2]})
"""

from __future__ import annotations

import math
from typing import Any
from typing import NamedTuple

import jax
import numpy as np


class KeptParams(NamedTuple):
  """Attributes: kept (params of the shrunk network), total (of the original),
  units (per layer, ``[inputs kept, outputs kept]``)."""

  kept: int
  total: int
  units: dict[str, list[int]]

  @property
  def fraction(self) -> float:
    return self.kept / self.total


def _kernel_mask(layer: dict, masks: dict | None) -> np.ndarray:
  kernel = np.asarray(layer["kernel"])
  mask = None if masks is None else masks.get("kernel")
  if mask is None:
    return np.ones(kernel.shape, bool)
  return np.asarray(mask, bool)


def _to_inputs(channels_alive: np.ndarray, fan_in: int) -> np.ndarray:
  """A dense layer's inputs that read the alive channels (flattened h, w, c)."""
  return np.tile(channels_alive, fan_in // channels_alive.size)


def _to_channels(inputs_alive: np.ndarray, channels: int) -> np.ndarray:
  return inputs_alive.reshape(-1, channels).any(axis=0)


def kept_params(params: Any, masks: Any) -> KeptParams:
  """The parameters left after removing every unit that the masks cut off.

  Args:
    params: the model's params (no gates), sequential layers at the top level.
    masks: a tree like the params with a boolean array (True = kept) or None
      (all kept) per leaf, e.g. ``jaxprune.hard_masks``.

  Returns:
    A :class:`KeptParams`.
  """
  names = list(params)
  kernels = [_kernel_mask(params[n], (masks or {}).get(n)) for n in names]
  # A unit's own weights: inputs that read something, outputs reached.
  reduce_in = [tuple(a for a in range(k.ndim) if a != k.ndim - 2) for k in kernels]
  reduce_out = [tuple(range(k.ndim - 1)) for k in kernels]
  inputs = [k.any(axis=r) for k, r in zip(kernels, reduce_in)]
  outputs = [k.any(axis=r) for k, r in zip(kernels, reduce_out)]
  outputs[-1] = np.ones_like(outputs[-1])  # the network's outputs stay
  changed = True
  while changed:  # a unit lives iff both sides of it do
    changed = False
    for i in range(len(names) - 1):
      nxt = inputs[i + 1]
      if outputs[i].size == nxt.size:
        both = outputs[i] & nxt
        new_out, new_in = both, both
      else:  # conv -> dense through a flatten
        new_out = outputs[i] & _to_channels(nxt, outputs[i].size)
        new_in = nxt & _to_inputs(outputs[i], nxt.size)
      if not (np.array_equal(new_out, outputs[i]) and np.array_equal(new_in, nxt)):
        outputs[i], inputs[i + 1], changed = new_out, new_in, True

  kept, units = 0, {}
  for name, kernel, ins, outs in zip(names, kernels, inputs, outputs):
    shape = kernel.shape
    alive = kernel & ins.reshape(shape[-2:-1] + (1,)) & outs
    kept += int(alive.sum())
    if params[name].get("bias") is not None:
      kept += int(outs.sum())
    units[name] = [int(ins.sum()), int(outs.sum())]
  total = sum(math.prod(np.shape(x)) for x in jax.tree.leaves(params))
  return KeptParams(kept, total, units)
