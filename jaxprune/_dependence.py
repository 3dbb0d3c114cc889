"""Removing linearly dependent units, their contribution folded forward.

Shah, Olivier and Raj (2020) remove a hidden unit whose activations, over a
calibration set, are a linear combination of the other units' activations in
the same layer: if ``a_j = sum_{i != j} c_i a_i + c_0`` then the next layer,
which computes ``sum_i a_i W[i] + b``, computes the same with

    W[i] += c_i W[j]  (i != j),   b += c_0 W[j],   row j removed,

and unit ``j`` (its kernel column, bias and normalisation entries) is removed
too.  The network's outputs on the calibration set are unchanged where the
dependence is exact; a unit is removed when its relative residual
``||a_j - A c - c_0|| / ||a_j||`` (least squares) is at most ``tolerance``.

The *activations* of a unit are what the next layer reads from it: after
the nonlinearity, normalisation and pooling.  A conv layer's unit is a
channel, seen at every position of every sample (rows ``samples x
positions``); the fold then goes into every tap of the next conv's kernel,
or, for a dense layer reading the flattened ``(h, w, c)`` map, into the
``h * w`` rows of each channel.  :func:`unit_activations` collects them from
Flax Linen and NNX models.  ``layers`` and ``norms`` are those of
:func:`jaxprune.shrink`, which makes the smaller network.

Example:
  >>> import jax.numpy as jnp
  >>> import numpy as np
  >>> import jaxprune
  >>> params = {'hidden': {'kernel': jnp.array([[1.0, 0.0, 1.0],
  ...                                            [0.0, 1.0, 1.0]]),
  ...                      'bias': jnp.zeros(3)},
  ...           'out': {'kernel': jnp.array([[1.0], [2.0], [3.0]]),
  ...                   'bias': jnp.zeros(1)}}
  >>> def forward(p, x):
  ...   h = jnp.maximum(x @ p['hidden']['kernel'] + p['hidden']['bias'][None], 0)
  ...   return h @ p['out']['kernel'] + p['out']['bias'][None]
  >>> x = jnp.array([[0.5, 1.0], [2.0, 0.3], [1.0, 1.0], [0.2, 3.0]])
  >>> hidden = jnp.maximum(x @ params['hidden']['kernel'], 0.0)  # unit 2 = 0 + 1
  >>> found = jaxprune.linear_dependence(
  ...     params, {'hidden': hidden}, layers=['hidden', 'out'], tolerance=1e-4)
  >>> found.node_masks['hidden'].tolist(), found.report['hidden'].removed
  ([True, True, False], (2,))
  >>> jnp.round(found.params['out']['kernel'][:, 0], 4).tolist()  # 1 + 3, 2 + 3
  [4.0, 5.0, 0.0]
  >>> small = jaxprune.shrink(found.params, found.node_masks,
  ...                         layers=['hidden', 'out'])
  >>> small.widths
  {'hidden': 2, 'out': 1}
  >>> bool(jnp.allclose(forward(small.params, x), forward(params, x), atol=1e-5))
  True

References:
  Shah, Olivier and Raj, "Exploiting Non-Linear Redundancy for Neural Model
  Compression", ICPR 2020, https://arxiv.org/abs/2005.14070
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxprune import _nnx
from jaxprune import _recording
from jaxprune import _structured

_CALLER = "jaxprune.linear_dependence"

# Added to the diagonal of the normalised Gram matrix (unit diagonal), in
# float64, so that exactly dependent units leave it invertible.  It only
# ranks the candidates: the residual compared with the tolerance, and the
# coefficients, come from np.linalg.lstsq of the chosen unit.
_RIDGE = 1e-10
_TIE = 1e-9  # squared relative residuals closer than this are tied


class LayerDependence(NamedTuple):
  """What :func:`linear_dependence` did to one hidden layer.

  ``str()`` gives one line for logging.

  Attributes:
    units: the layer's units (its kernel's last axis).
    kept: the units kept after this call.
    removed: the units removed by this call, in removal order (indices
      into the layer's ``units``).
    residuals: each removed unit's relative residual when it was removed.
    coefficients: each removed unit's ``c``, float64 ``[units]`` (0 for
      itself and for units that were not its predictors).
    intercepts: each removed unit's ``c_0`` (0 without ``intercept``).
    next_residual: the smallest relative residual among the kept units when
      the search stopped, the one that ``tolerance`` refused; ``None`` where
      the search stopped for another reason (``max_removed``, one unit
      left) or did not run (no activations given for the layer).
  """

  units: int
  kept: int
  removed: tuple[int, ...]
  residuals: tuple[float, ...]
  coefficients: tuple[np.ndarray, ...]
  intercepts: tuple[float, ...]
  next_residual: float | None

  def __str__(self) -> str:
    line = f"removed {len(self.removed)}, kept {self.kept} of {self.units} units"
    if self.residuals:
      line += f" (residuals {min(self.residuals):.2g} to {max(self.residuals):.2g})"
    if self.next_residual is not None:
      line += f"; the next would have been at {self.next_residual:.2g}"
    return line


class Dependence(NamedTuple):
  """What :func:`linear_dependence` returns.

  Attributes:
    params: the params (same shapes; for Flax NNX, the plain form) with each
      removed unit's contribution folded into the next layer, its kernel
      column, bias and normalisation entries zeroed and the next layer's
      rows that read it zeroed: :func:`jaxprune.shrink` with
      :attr:`node_masks` makes the smaller network, which computes the same.
    node_masks: ``{layer: bool[units]}`` (True = kept) for every hidden
      layer, including the units removed before (``node_masks=``).
    report: ``{layer: LayerDependence}`` for every hidden layer.
  """

  params: Any
  node_masks: dict[str, jax.Array]
  report: dict[str, LayerDependence]


def _check_tolerance(tolerance: Any, hidden: Sequence[str]) -> dict[str, float]:
  values = (dict(tolerance) if isinstance(tolerance, Mapping)
            else dict.fromkeys(hidden, tolerance))
  for name, value in values.items():
    if name not in hidden:
      raise ValueError(
          f"{_CALLER}: tolerance names {name!r}, which is not a hidden layer "
          f"of {list(hidden)}")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
      raise TypeError(
          f"{_CALLER}: the tolerance of {name!r} must be a real number (a "
          f"relative residual, e.g. 1e-3), got {value!r}")
    if not 0 <= value < math.inf:  # also refuses NaN
      raise ValueError(
          f"{_CALLER}: the tolerance of {name!r} must be a relative residual "
          f">= 0 (0 removes exactly dependent units only), got {value}")
  return {name: float(values.get(name, 0.0)) for name in hidden}


def _checked_activations(params, activations, hidden) -> dict[str, np.ndarray]:
  if not isinstance(activations, Mapping):
    raise TypeError(
        f"{_CALLER}: activations must be a dict {{layer: [samples, units]}}, "
        f"got {type(activations).__name__}")
  checked = {}
  for name, value in activations.items():
    if name not in hidden:
      raise ValueError(
          f"{_CALLER}: activations are given for {name!r}, which is not a "
          f"hidden layer of {list(hidden)} (the last layer's outputs are "
          "never removed)")
    units = np.shape(params[name]["kernel"])[-1]
    shape = np.shape(value)
    if len(shape) < 2 or shape[-1] != units or math.prod(shape[:-1]) == 0:
      raise ValueError(
          f"{_CALLER}: the activations of {name!r} have shape {shape}, but "
          f"the layer has {units} units: expected [samples, {units}] (or "
          f"[samples, height, width, {units}]) with at least one sample; for a "
          "dense layer that reads a flattened conv output, "
          "jaxprune.unit_activations reshapes its inputs per channel")
    array = np.asarray(value, np.float64).reshape(-1, units)
    if not np.all(np.isfinite(array)):
      raise ValueError(
          f"{_CALLER}: the activations of {name!r} are not all finite")
    checked[name] = array
  return checked


def _next_rows(next_kernel: Any, units: int, layer: str, following: str) -> np.ndarray:
  """The next layer's kernel as float64 ``[taps, units, outputs]``: its
  ``taps`` rows that read each unit (conv taps or flattened positions)."""
  kernel = np.asarray(next_kernel, np.float64)
  inputs = kernel.shape[-2]
  if inputs % units:
    raise ValueError(
        f"{_CALLER}: layer {following!r} has {inputs} inputs, which cannot "
        f"read the {units} units of {layer!r} (neither equal nor a flattened "
        "channels-last map); list the layers in call order")
  if kernel.ndim == 2:  # dense: a flattened (h, w, c) map has c fastest
    return kernel.reshape(inputs // units, units, kernel.shape[-1])
  return kernel.reshape(-1, units, kernel.shape[-1])


def _greedy(a: np.ndarray, active: np.ndarray, tolerance: float,
            max_removed: int | None, intercept: bool):
  """Removes units of ``a`` ([rows, units] float64) one at a time, the best
  predicted by the other ``active`` units first, while the relative
  residual is at most ``tolerance``.  Returns the removals as
  ``(unit, residual, coefficients, intercept)`` and the residual that
  stopped the search (or None)."""
  rows, units = a.shape
  norms = np.linalg.norm(a, axis=0)
  scaled = a / np.where(norms > 0, norms, 1.0)[None]
  if intercept:
    scaled = np.concatenate([scaled, np.full((rows, 1), 1 / math.sqrt(rows))], 1)
  gram = scaled.T @ scaled
  active = active.copy()
  removals, stopped = [], None
  while active.sum() > 1 and (max_removed is None or len(removals) < max_removed):
    candidates = np.flatnonzero(active)
    dead = candidates[norms[candidates] == 0]
    if dead.size:  # outputs 0 on every row: predicted exactly by nothing
      j, residual = int(dead[0]), 0.0
      coefficients, constant = np.zeros(units), 0.0
    else:
      index = np.concatenate([candidates, [units]]) if intercept else candidates
      sub = gram[np.ix_(index, index)] + _RIDGE * np.eye(index.size)
      # 1 / inv(G)_jj is the residual sum of squares of column j regressed
      # on the others: the squared relative residual, the columns being unit.
      squared = 1 / np.diag(np.linalg.inv(sub))[:candidates.size]
      # Units tied to within the ridge's resolution go last first, so that
      # of an exactly dependent set the last unit is removed.
      j = int(candidates[squared <= squared.min() + _TIE].max())
      others = candidates[candidates != j]
      design = a[:, others]
      if intercept:
        design = np.concatenate([design, np.ones((rows, 1))], 1)
      solution = np.linalg.lstsq(design, a[:, j], rcond=None)[0]
      residual = float(np.linalg.norm(a[:, j] - design @ solution) / norms[j])
      if residual > tolerance:
        stopped = residual
        break
      coefficients = np.zeros(units)
      coefficients[others] = solution[:others.size]
      constant = float(solution[-1]) if intercept else 0.0
    active[j] = False
    removals.append((j, residual, coefficients, constant))
  return removals, stopped


def _fold(rows: np.ndarray, bias: np.ndarray | None, j: int,
          coefficients: np.ndarray, constant: float):
  """The next layer's rows and bias with unit ``j`` replaced by its
  combination of the others."""
  rows = rows + coefficients[None, :, None] * rows[:, j:j + 1, :]
  if bias is not None:
    bias = bias + constant * rows[:, j, :].sum(0)
  rows[:, j, :] = 0.0
  return rows, bias


def linear_dependence(
    params: Any,
    activations: Mapping[str, Any],
    *,
    layers: Sequence[str],
    tolerance: float | Mapping[str, float],
    max_removed: int | None = None,
    norms: Mapping[str, str] | None = None,
    node_masks: Mapping[str, Any] | None = None,
    intercept: bool = True,
) -> Dependence:
  """Removes the hidden units that the others of their layer predict linearly.

  For each hidden layer with activations, greedily: fits every kept unit's
  activations on the other kept units' (least squares, with a constant
  column if ``intercept``), removes the unit with the smallest relative
  residual ``||a_j - A c - c_0|| / ||a_j||`` if it is at most the layer's
  ``tolerance``, folds it into the next layer (``W[i] += c_i W[j]``, ``b +=
  c_0 W[j]``), and repeats on the units left.  A unit whose activations are
  all 0 has residual 0.  Every layer keeps at least one unit.  The
  computation is in float64 numpy, outside jit; the params keep their
  dtypes.

  Example:
    >>> import jax.numpy as jnp
    >>> import jaxprune
    >>> params = {'hidden': {'kernel': jnp.ones((2, 3)), 'bias': jnp.zeros(3)},
    ...           'out': {'kernel': jnp.ones((3, 1)), 'bias': jnp.zeros(1)}}
    >>> a = jnp.array([[1.0, 0.0, 2.0], [0.0, 1.0, 3.0], [1.0, 1.0, 5.0],
    ...                [2.0, 1.0, 7.0]])  # unit 2 = 2 a_0 + 3 a_1
    >>> found = jaxprune.linear_dependence(params, {'hidden': a},
    ...                                    layers=['hidden', 'out'],
    ...                                    tolerance=1e-3, intercept=False)
    >>> report = found.report['hidden']
    >>> report.removed, report.kept, report.coefficients[0].round(4).tolist()
    ((2,), 2, [2.0, 3.0, 0.0])
    >>> jnp.round(found.params['out']['kernel'][:, 0], 4).tolist()
    [3.0, 4.0, 0.0]

  Args:
    params: the parameter tree, or a Flax NNX model (then folded in place).
    activations: ``{hidden layer: [samples, units]}``, what the next layer
      reads from each unit (``[samples, height, width, units]`` and other
      shapes ending in ``units`` are flattened to rows; see
      :func:`unit_activations`).  Layers without activations keep their
      units.
    layers: the dense and conv layers, in call order (as for
      :func:`jaxprune.shrink`); the last one's outputs are not removed.
    tolerance: the largest relative residual of a removed unit, ``>= 0``;
      one for every layer or ``{layer: tolerance}`` (others: 0).
    max_removed: the most units removed from each layer by this call.
    norms: ``{layer: its normalisation layer}``, whose removed units'
      entries are zeroed.
    node_masks: units removed before (``{layer: bool[units]}``, True =
      kept), say by an earlier call during training: they neither are
      removed again nor predict.
    intercept: fit a constant ``c_0`` too, folded into the next layer's
      bias.  A next conv layer receives ``c_0`` summed over its kernel
      taps, exact where no tap reads zero padding; ``False`` for exactness
      at the border of a ``'SAME'`` padded conv.

  Returns:
    A :class:`Dependence`: the folded params, node masks, and a report per
    layer.

  Raises:
    ValueError: unknown layers, activations of the wrong shape or not
      finite, a negative tolerance, a next layer without a bias while
      ``intercept`` is on; each message names the layer.
  """
  module = params if isinstance(params, nnx.Module) else None
  plain = _nnx.plain(params)
  norms = _structured.check_layers(plain, layers, norms, _CALLER)
  hidden = list(layers[:-1])
  tolerances = _check_tolerance(tolerance, hidden)
  if max_removed is not None and (isinstance(max_removed, bool) or not isinstance(
      max_removed, numbers.Integral) or max_removed < 0):
    raise ValueError(f"{_CALLER}: max_removed must be None or an integer >= 0, "
                     f"got {max_removed!r}")
  acts = _checked_activations(plain, activations, hidden)
  keep = _structured.checked_node_masks(plain, node_masks, hidden, _CALLER)
  params = jax.tree.map(lambda x: x, plain)  # a copy of the containers
  report = {}
  for position, name in enumerate(hidden):
    following = layers[position + 1]
    units = np.shape(plain[name]["kernel"])[-1]
    kernel = plain[following]["kernel"]
    rows = _next_rows(kernel, units, name, following)
    bias = plain[following].get("bias")
    if intercept and name in acts and bias is None:
      raise ValueError(
          f"{_CALLER}: layer {following!r} has no bias to take the constant "
          f"of {name!r}'s removed units; pass intercept=False")
    bias = None if bias is None else np.asarray(bias, np.float64)
    removals, stopped = [], None
    if name in acts:
      removals, stopped = _greedy(acts[name], keep[name], tolerances[name],
                                  max_removed, intercept)
    for j, _, coefficients, constant in removals:
      rows, bias = _fold(rows, bias, j, coefficients, constant)
      keep[name][j] = False
    rows[:, ~keep[name], :] = 0.0  # also the units removed before
    layer = dict(params[following])
    layer["kernel"] = jnp.asarray(rows.reshape(np.shape(kernel)), jnp.result_type(kernel))
    if bias is not None:
      layer["bias"] = jnp.asarray(bias, jnp.result_type(plain[following]["bias"]))
    params[following] = layer
    report[name] = LayerDependence(
        units=units, kept=int(keep[name].sum()),
        removed=tuple(r[0] for r in removals),
        residuals=tuple(r[1] for r in removals),
        coefficients=tuple(r[2] for r in removals),
        intercepts=tuple(r[3] for r in removals), next_residual=stopped)
  node_masks = {name: jnp.asarray(k) for name, k in keep.items()}
  params = _structured.mask_nodes(params, node_masks, layers=layers, norms=norms)
  if module is not None:
    nnx.update(module, _nnx.conformed(params, nnx.state(module, nnx.Param),
                                      "the folded params"))
  return Dependence(params, node_masks, report)


def unit_activations(
    model: Any,
    inputs: Any,
    *,
    layers: Sequence[str],
    variables: Any = None,
) -> dict[str, np.ndarray]:
  """The activations of every hidden layer's units, as the next layer reads them.

  Runs ``model`` on ``inputs`` and records the input of each layer of
  ``layers[1:]`` (after the previous layer's nonlinearity, normalisation
  and pooling), intercepting the calls of Linen submodules
  (``nn.intercept_methods``) or of NNX layer attributes: the model needs no
  change.  The layers are top-level submodules named as in the params
  (``Dense_1``, or an NNX attribute such as ``out``), each called once.
  A conv layer's inputs ``[samples, h, w, c]`` and a dense layer's
  flattened ``[samples, h * w * c]`` become ``[samples * h * w, c]``: one
  row per position.  Put the model in evaluation mode (batch norm on its
  running statistics, no dropout) first; for more samples than one call
  holds, concatenate the results of several calls.

  Example:
    >>> import flax.linen as nn
    >>> import jax, jax.numpy as jnp
    >>> import jaxprune
    >>> class MLP(nn.Module):
    ...   @nn.compact
    ...   def __call__(self, x):
    ...     hidden = nn.relu(nn.Dense(5)(x))
    ...     return nn.Dense(2)(hidden)
    >>> variables = MLP().init(jax.random.key(0), jnp.ones((1, 3)))
    >>> acts = jaxprune.unit_activations(MLP(), jnp.ones((7, 3)),
    ...                                  layers=['Dense_0', 'Dense_1'],
    ...                                  variables=variables)
    >>> {k: v.shape for k, v in acts.items()}
    {'Dense_0': (7, 5)}

  Args:
    model: a Flax Linen module (with ``variables``) or a Flax NNX model.
    inputs: one batch of calibration inputs, passed to the model.
    layers: the dense and conv layers, in call order.
    variables: the Linen model's variables (``{'params': ...}``, with its
      ``batch_stats`` if any).

  Returns:
    ``{hidden layer: float32 [rows, units]}``, for
    :func:`linear_dependence`.

  Raises:
    ValueError: a layer that was not called, or whose inputs do not hold
      the previous layer's units.
  """
  caller = "jaxprune.unit_activations"
  params = _recording.model_params(model, variables, caller)
  _structured.check_layers(params, layers, None, caller)
  store = {name: call.inputs for name, call in _recording.layer_calls(
      model, inputs, layers[1:], variables, caller).items()}
  found = {}
  for name, following in zip(layers[:-1], layers[1:]):
    if following not in store:
      raise ValueError(
          f"{caller}: layer {following!r} was not called by the model (the "
          "layers must be top-level submodules named as in the params)")
    units = np.shape(params[name]["kernel"])[-1]
    x = np.asarray(store[following], np.float32)
    if x.shape[-1] % units:
      raise ValueError(
          f"{caller}: layer {following!r} reads {x.shape[-1]} inputs, not the "
          f"{units} units of {name!r} or a flattened map of them; list the "
          "layers in call order")
    found[name] = x.reshape(-1, units)
  return found


class DependenceSchedule(NamedTuple):
  """When :func:`linear_dependence` runs during training, and how tolerant.

  Attributes:
    steps: the steps of the events, increasing.
    tolerances: the tolerance at each event.
  """

  steps: tuple[int, ...]
  tolerances: tuple[float, ...]


def dependence_schedule(
    initial: float, final: float, *, begin_step: int, frequency: int,
    events: int,
) -> DependenceSchedule:
  """Events every ``frequency`` steps whose tolerance anneals geometrically.

  The tolerance goes from ``initial`` at ``begin_step`` to ``final`` at the
  last of ``events`` events, by a constant factor per event.

  Example:
    >>> import jaxprune
    >>> s = jaxprune.dependence_schedule(1e-3, 1e-1, begin_step=100,
    ...                                  frequency=50, events=3)
    >>> s.steps, [round(t, 6) for t in s.tolerances]
    ((100, 150, 200), [0.001, 0.01, 0.1])

  Args:
    initial: the first event's tolerance, > 0.
    final: the last event's tolerance, > 0.
    begin_step: the step of the first event, >= 0.
    frequency: steps between events, >= 1.
    events: the number of events, >= 1 (one event has ``final``).

  Returns:
    A :class:`DependenceSchedule`.
  """
  caller = "jaxprune.dependence_schedule"
  for name, value in (("initial", initial), ("final", final)):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
      raise TypeError(f"{caller}: {name} must be a real number, got {value!r}")
    if not 0 < value < math.inf:
      raise ValueError(f"{caller}: {name} must be a tolerance > 0 (the "
                       f"schedule is geometric), got {value}")
  for name, value, minimum in (("begin_step", begin_step, 0),
                               ("frequency", frequency, 1), ("events", events, 1)):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
      raise TypeError(f"{caller}: {name} must be an integer, got {value!r}")
    if value < minimum:
      raise ValueError(f"{caller}: {name} must be >= {minimum}, got {value}")
  if events == 1:
    return DependenceSchedule((int(begin_step),), (float(final),))
  ratio = (final / initial) ** (1 / (events - 1))
  tolerances = [initial * ratio ** k for k in range(events - 1)] + [float(final)]
  return DependenceSchedule(
      tuple(int(begin_step + k * frequency) for k in range(events)),
      tuple(float(t) for t in tolerances))


def node_weight_masks(
    masks: Any, node_masks: Mapping[str, Any], *, layers: Sequence[str],
) -> Any:
  """``masks`` with the kernel weights of the removed units set to False.

  Each removed unit's kernel column, and the rows of the next layer's kernel
  that read it, become False: given to ``jaxprune.prune`` (through
  :func:`jaxprune.replace_masks` during training), they keep the removed
  units cut off whatever the optimizer's momentum does, while the shapes
  stay as they are until :func:`jaxprune.shrink`.

  Example:
    >>> import jax.numpy as jnp
    >>> import jaxprune
    >>> masks = {'hidden': {'kernel': jnp.ones((2, 3), bool), 'bias': None},
    ...          'out': {'kernel': jnp.ones((3, 1), bool), 'bias': None}}
    >>> new = jaxprune.node_weight_masks(
    ...     masks, {'hidden': jnp.array([True, False, True])},
    ...     layers=['hidden', 'out'])
    >>> new['hidden']['kernel'].tolist(), new['out']['kernel'][:, 0].tolist()
    ([[True, False, True], [True, False, True]], [True, False, True])

  Args:
    masks: the masks of ``jaxprune.prune`` (:func:`jaxprune.masks_of`), with
      a boolean mask for the kernel of every layer of ``layers``.
    node_masks: ``{hidden layer: bool[units]}``, True = kept.
    layers: the dense and conv layers, in call order.

  Returns:
    The new masks (the other leaves as given).
  """
  caller = "jaxprune.node_weight_masks"
  masks = jax.tree.map(lambda x: x, masks, is_leaf=lambda x: x is None)
  for position, name in enumerate(layers[:-1]):
    if name not in node_masks:
      continue
    following = layers[position + 1]
    for layer in (name, following):
      if (layer not in masks or not isinstance(masks[layer], Mapping)
          or masks[layer].get("kernel") is None):
        raise ValueError(
            f"{caller}: the masks have no kernel mask for layer {layer!r}; "
            "prune it (its kernel must be prunable) or leave it out of layers")
    keep = np.asarray(node_masks[name], bool)
    column = masks[name]["kernel"]
    if np.shape(column)[-1] != keep.size:
      raise ValueError(
          f"{caller}: the node mask of {name!r} has {keep.size} units, its "
          f"kernel mask {np.shape(column)[-1]}")
    row = masks[following]["kernel"]
    inputs = np.shape(row)[-2]
    if inputs % keep.size:
      raise ValueError(
          f"{caller}: layer {following!r} has {inputs} inputs, which cannot "
          f"read the {keep.size} units of {name!r}")
    if np.ndim(row) == 2:
      reads = np.tile(keep, inputs // keep.size)
    else:
      reads = keep
    masks[name] = {**masks[name], "kernel": jnp.logical_and(
        column, jnp.asarray(keep).reshape((1,) * (np.ndim(column) - 1) + (-1,)))}
    masks[following] = {**masks[following], "kernel": jnp.logical_and(
        row, jnp.asarray(reads).reshape((1,) * (np.ndim(row) - 2) + (-1, 1)))}
  return masks
