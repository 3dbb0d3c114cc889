"""Hardware-aware filter pruning: information gain and Opti-Cut to a latency budget.

HFP (Yu et al. 2020) ranks the filters of the whole network by their
information gain (IG), their contribution to the network's output
distribution, and its iterative Opti-Cut removes the filters of least IG
one by one until a latency lookup table (:func:`jaxprune.latency_table`)
predicts that the latency budget is met, with a short recovery between
rounds.  Only the abstract could be read here; docs/guides/hfp.md lists
what is this library's reading of it.

:func:`information_gain` is, for each hidden unit, the mean over the inputs
of ``KL(p(y|x) || p(y|x without the unit))``, ``p`` the softmax of the
outputs, the unit removed as :func:`jaxprune.mask_nodes` removes it.
:func:`opti_cut` runs the loop with any ``importance`` (information gain, or
an L1-norm baseline); :func:`jaxprune.shrink` then makes the smaller dense
network.

Example:
  >>> import jax.numpy as jnp
  >>> import numpy as np
  >>> import jaxprune
  >>> params = {'h': {'kernel': jnp.ones((2, 4)), 'bias': jnp.zeros(4)},
  ...           'o': {'kernel': jnp.ones((4, 3))}}
  >>> table = jaxprune.LatencyTable(  # 1 s per unit of 'h', rest 0
  ...     layers=('h', 'o'), inputs={'h': np.array([2]), 'o': np.array([1, 4])},
  ...     outputs={'h': np.array([1, 4]), 'o': np.array([3])},
  ...     seconds={'h': np.array([[1.0, 4.0]]), 'o': np.zeros((2, 1))},
  ...     total=4.0, rest=0.0, input_shape=(1, 2))
  >>> l1 = lambda p, masks, stats: {'h': jnp.array([4.0, 1.0, 3.0, 2.0])}
  >>> cut = jaxprune.opti_cut(params, layers=['h', 'o'], table=table,
  ...                         importance=l1, fraction=0.5)
  >>> cut.node_masks['h'].tolist(), cut.latency
  ([True, False, True, False], 2.0)

References:
  Yu, Han, Wang, Huang, Huang and Cui, "HFP: Hardware-Aware Filter Pruning
  for Deep Convolutional Neural Networks Acceleration", ICPR 2020.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxprune import _latency
from jaxprune import _nnx
from jaxprune import _recording
from jaxprune import _structured


class _Model:
  """A model's pure apply as a static ``jit`` argument, equal by the
  model's identity: a new :func:`information_gain` call on the same model
  reuses the compiled code.  It holds the model, whose id then stays its."""

  def __init__(self, model: Any, apply: Callable[..., Any]):
    self.model, self.apply = model, apply

  def __hash__(self) -> int:
    return id(self.model)

  def __eq__(self, other: object) -> bool:
    return isinstance(other, _Model) and other.model is self.model


@functools.partial(jax.jit, static_argnames=("model", "name", "layers", "norms"))
def _ablated_kl(params, batch_stats, inputs, log_p, keeps, *, model, name,
                layers, norms):
  """``float32[len(keeps)]``: the mean KL of the outputs with layer
  ``name``'s units masked by each row of ``keeps``."""
  norms = dict(norms)
  others = {n: jnp.ones(jnp.shape(params[n]["kernel"])[-1], bool)
            for n in layers[:-1] if n != name}

  def one(keep):
    masked = _structured.mask_nodes(params, {**others, name: keep},
                                    layers=layers, norms=norms)
    logits = model.apply(masked, batch_stats, inputs).astype(jnp.float32)
    log_q = jax.nn.log_softmax(logits, axis=-1)
    p = jnp.exp(log_p)
    kl = jnp.sum(jnp.where(p > 0, p * (log_p - log_q), 0.0), axis=-1)
    return jnp.mean(kl)

  return jax.vmap(one)(keeps)


def information_gain(
    model: Any,
    inputs: Any,
    *,
    layers: Sequence[str],
    variables: Any = None,
    params: Any = None,
    batch_stats: Any = None,
    node_masks: Mapping[str, Any] | None = None,
    norms: Mapping[str, str] | None = None,
    chunk: int = 16,
) -> dict[str, np.ndarray]:
  """The information gain of every hidden unit: what removing it changes.

  For each kept unit of each hidden layer, the mean over ``inputs`` of
  ``KL(p(y|x) || q(y|x))``, ``p`` the softmax of the network's outputs (the
  last axis) and ``q`` the same with the unit removed: its kernel column,
  bias and normalisation entries zeroed (:func:`jaxprune.mask_nodes`), so
  that it outputs 0 where its activation maps 0 to 0 (relu, max pooling).
  The removals of a layer run under ``jit``, ``chunk`` at a time under
  ``vmap``; each is a forward pass of the whole batch.  The units removed
  before (``node_masks``) are removed in ``p`` too and get ``+inf``.

  Example:
    >>> import flax.linen as nn
    >>> import jax, jax.numpy as jnp
    >>> import jaxprune
    >>> model = nn.Sequential([nn.Dense(4), nn.relu, nn.Dense(3)])
    >>> variables = model.init(jax.random.key(0), jnp.ones((1, 2)))
    >>> x = jax.random.normal(jax.random.key(1), (32, 2))
    >>> ig = jaxprune.information_gain(
    ...     model, x, layers=['layers_0', 'layers_2'], variables=variables,
    ...     node_masks={'layers_0': jnp.array([True, True, True, False])})
    >>> ig['layers_0'].shape, bool((ig['layers_0'][:3] >= 0).all()), float(ig['layers_0'][3])
    ((4,), True, inf)

  Args:
    model: a Flax Linen module (with ``variables``) or a Flax NNX model, in
      evaluation mode (batch norm on its running statistics); called as
      ``model.apply(variables, inputs)`` or ``model(inputs)``, it returns
      logits ``[..., classes]``.
    inputs: one batch of inputs.
    layers: the dense and conv layers, in call order (as for
      :func:`jaxprune.shrink`).
    variables: the Linen model's variables (``{'params': ...}``, with its
      ``batch_stats`` if any); may be left out where ``params`` is given.
    params: the plain params to score instead of the model's (of
      ``variables`` or of the NNX model), as :func:`opti_cut` hands them
      to ``importance``.
    batch_stats: the batch statistics to use instead of the model's.
    node_masks: ``{hidden layer: bool[units]}`` (True = kept), the units
      removed before; others keep every unit.
    norms: ``{layer: its normalisation layer}``.
    chunk: the removals evaluated at once (memory: ``chunk`` forward
      passes of the batch).

  Returns:
    ``{hidden layer: float32[units]}`` (numpy), ``+inf`` for removed units.

  Raises:
    ValueError: unknown layers or norms, a node mask of the wrong shape or
      keeping no unit, a bad ``chunk``, non-finite outputs.
  """
  caller = "jaxprune.information_gain"
  if isinstance(model, nn.Module) and variables is None and params is not None:
    variables = {"params": params}
  apply, own_params, own_stats = _recording.pure_apply(model, variables, caller)
  params = own_params if params is None else _nnx.plain(params)
  batch_stats = own_stats if batch_stats is None else _nnx.plain(batch_stats)
  norms = _structured.check_layers(params, layers, norms, caller)
  if isinstance(chunk, bool) or not isinstance(chunk, numbers.Integral) or chunk < 1:
    raise ValueError(f"{caller}: chunk must be an int >= 1, got {chunk!r}")
  hidden = list(layers[:-1])
  keep = _structured.checked_node_masks(params, node_masks, hidden, caller)
  masks = {name: jnp.asarray(k) for name, k in keep.items()}
  params = _structured.mask_nodes(params, masks, layers=layers, norms=norms)
  logits = jnp.asarray(apply(params, batch_stats, inputs), jnp.float32)
  if not bool(jnp.all(jnp.isfinite(logits))):
    raise ValueError(f"{caller}: the model's outputs are not all finite")
  log_p = jax.nn.log_softmax(logits, axis=-1)
  static = dict(model=_Model(model, apply), layers=tuple(layers),
                norms=tuple(sorted(norms.items())))
  gains = {}
  for name in hidden:
    alive = np.flatnonzero(keep[name])
    rows = np.repeat(keep[name][None], -(-alive.size // chunk) * chunk, axis=0)
    rows[np.arange(alive.size), alive] = False  # padded rows remove nothing
    found = np.concatenate([
        np.asarray(_ablated_kl(params, batch_stats, inputs, log_p,
                               jnp.asarray(rows[start:start + chunk]),
                               name=name, **static))
        for start in range(0, rows.shape[0], chunk)])
    gain = np.full(keep[name].size, np.inf, np.float32)
    gain[alive] = found[:alive.size]
    gains[name] = gain
  return gains


class OptiCutRound(NamedTuple):
  """One round of :func:`opti_cut`.

  ``str()`` gives one line for logging.

  Attributes:
    removed: ``{hidden layer: units removed this round}``, in removal order.
    widths: ``{layer: output width}`` after the round (every layer).
    latency: the table's predicted latency after the round, in seconds.
  """

  removed: dict[str, tuple[int, ...]]
  widths: dict[str, int]
  latency: float

  def __str__(self) -> str:
    count = sum(len(v) for v in self.removed.values())
    widths = ", ".join(f"{k} {v}" for k, v in self.widths.items())
    return (f"removed {count} units, predicted {self.latency * 1e3:.4g} ms; "
            f"widths {widths}")


class OptiCut(NamedTuple):
  """What :func:`opti_cut` returns.

  Attributes:
    node_masks: ``{hidden layer: bool[units]}`` (True = kept), for
      :func:`jaxprune.shrink`.
    params: the params after the last recovery, the removed units masked
      (:func:`jaxprune.mask_nodes`; for Flax NNX, the plain form).
    batch_stats: the batch statistics after the last recovery (``None`` if
      none were given).
    latency: the table's predicted latency at the final widths, seconds.
    budget: the budget, in seconds.
    history: an :class:`OptiCutRound` per round.
  """

  node_masks: dict[str, jax.Array]
  params: Any
  batch_stats: Any
  latency: float
  budget: float
  history: tuple[OptiCutRound, ...]


def _check_budget(table, budget, fraction, caller) -> float:
  if (budget is None) == (fraction is None):
    raise ValueError(f"{caller}: pass exactly one of budget= (seconds) and "
                     "fraction= (of the dense network's measured latency, "
                     "table.total)")
  value = budget if fraction is None else fraction
  what = "budget" if fraction is None else "fraction"
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise TypeError(f"{caller}: {what} must be a real number, got {value!r}")
  if fraction is None:
    if not 0 < budget < math.inf:
      raise ValueError(f"{caller}: budget must be a latency in seconds > 0, got "
                       f"{budget}")
    return float(budget)
  if not 0 < fraction <= 1:
    raise ValueError(f"{caller}: fraction must be in (0, 1] of the dense "
                     f"latency, got {fraction}")
  return float(fraction) * table.total


def _check_table(table, params, layers, caller) -> None:
  if not isinstance(table, _latency.LatencyTable):
    raise TypeError(f"{caller}: table must be a jaxprune.LatencyTable, got "
                    f"{type(table).__name__}")
  if tuple(table.layers) != tuple(layers):
    raise ValueError(f"{caller}: the table is of the layers {list(table.layers)}, "
                     f"not {list(layers)}")
  for name, width in table.full_widths().items():
    units = int(np.shape(params[name]["kernel"])[-1])
    if width != units:
      raise ValueError(f"{caller}: layer {name!r} has {units} units, the table "
                       f"{width}: it was measured on another network")


def _checked_scores(scores, keep, caller) -> dict[str, np.ndarray]:
  if not isinstance(scores, Mapping):
    raise TypeError(f"{caller}: importance must return {{layer: [units]}}, got "
                    f"{type(scores).__name__}")
  checked = {}
  for name, k in keep.items():
    if name not in scores:
      raise ValueError(f"{caller}: importance returned no scores for {name!r}")
    s = np.asarray(scores[name], np.float64)
    if s.shape != k.shape:
      raise ValueError(f"{caller}: the scores of {name!r} have shape {s.shape}, "
                       f"expected {k.shape}")
    if np.isnan(s[k]).any():
      raise ValueError(f"{caller}: the scores of {name!r} have NaN for kept units")
    checked[name] = s
  return checked


def opti_cut(
    params: Any,
    *,
    layers: Sequence[str],
    table: _latency.LatencyTable,
    importance: Callable[[Any, dict[str, jax.Array], Any], Mapping[str, Any]],
    budget: float | None = None,
    fraction: float | None = None,
    recover: Callable[[Any, dict[str, jax.Array], Any], tuple[Any, Any]] | None = None,
    per_round: int = 32,
    norms: Mapping[str, str] | None = None,
    batch_stats: Any = None,
    node_masks: Mapping[str, Any] | None = None,
) -> OptiCut:
  """Opti-Cut: removes the least important units until the latency budget is met.

  Each round scores the kept units with ``importance(params, node_masks,
  batch_stats)`` (the params masked), ranks them over the whole network,
  and removes them in ascending order of score, one at a time, predicting
  the latency of the current widths with ``table`` after each removal, until
  ``per_round`` units are removed or the prediction is at most the budget;
  every hidden layer keeps at least one unit (a layer's last unit is
  passed over and the ranking goes on).  Then
  ``recover(params, node_masks, batch_stats)`` trains briefly (the removed
  units are masked again after it), and the rounds repeat until the
  prediction meets the budget.  The last removal is the one that met it.
  Ties go to the earlier layer, then the lower index.  Computed in numpy,
  outside jit, but for ``importance`` and ``recover``.

  Example:
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> import jaxprune
    >>> params = {'h': {'kernel': jnp.ones((2, 6))}, 'o': {'kernel': jnp.ones((6, 1))}}
    >>> table = jaxprune.LatencyTable(  # 1 ms per unit of 'h'
    ...     layers=('h', 'o'), inputs={'h': np.array([2]), 'o': np.array([1, 6])},
    ...     outputs={'h': np.array([1, 6]), 'o': np.array([1])},
    ...     seconds={'h': np.array([[1e-3, 6e-3]]), 'o': np.zeros((2, 1))},
    ...     total=6e-3, rest=0.0, input_shape=(1, 2))
    >>> l1 = lambda p, masks, stats: {'h': jnp.sum(jnp.abs(p['h']['kernel']), 0)
    ...                               + jnp.arange(6.0)}
    >>> cut = jaxprune.opti_cut(params, layers=['h', 'o'], table=table,
    ...                         importance=l1, budget=2.5e-3, per_round=2)
    >>> for r in cut.history:
    ...   print(r)
    removed 2 units, predicted 4 ms; widths h 4, o 1
    removed 2 units, predicted 2 ms; widths h 2, o 1
    >>> cut.node_masks['h'].tolist()
    [False, False, False, False, True, True]

  Args:
    params: the parameter tree (plain; a Flax NNX model is read as its plain
      params and updated in place at the end).
    layers: the dense and conv layers, in call order (the table's).
    table: the :class:`jaxprune.LatencyTable` of this network.
    importance: ``(params, node_masks, batch_stats) -> {hidden layer:
      [units]}``, higher = more important: :func:`information_gain`
      (through a lambda), or any criterion, such as the L1 norms of the
      kernels' columns for a baseline.  Scores of removed units are ignored.
    budget: the latency budget in seconds, > 0; or
    fraction: the budget as a fraction in ``(0, 1]`` of the dense network's
      measured latency (``table.total``).
    recover: ``(params, node_masks, batch_stats) -> (params, batch_stats)``,
      the short recovery training after each round, the last included,
      holding the removed units at zero; ``None``: none.
    per_round: the most units removed per round, >= 1.
    norms: ``{layer: its normalisation layer}``.
    batch_stats: the batch statistics, handed to ``importance`` and
      ``recover``.
    node_masks: units removed before (``{layer: bool[units]}``); they stay
      removed.

  Returns:
    An :class:`OptiCut`.

  Raises:
    ValueError: both or neither of ``budget`` and ``fraction``, a budget <=
      0 or a fraction outside (0, 1], a table of other layers or widths,
      unknown layers, bad scores (naming the layer), or a budget that
      cannot be met: the table's prediction with one unit in every hidden
      layer is above it.
  """
  caller = "jaxprune.opti_cut"
  module = params if isinstance(params, nnx.Module) else None
  if module is not None and batch_stats is None:
    batch_stats = _nnx.plain(nnx.state(module, nnx.BatchStat)) or None
  params = _nnx.plain(params)
  norms = _structured.check_layers(params, layers, norms, caller)
  _check_table(table, params, layers, caller)
  seconds = _check_budget(table, budget, fraction, caller)
  if not callable(importance):
    raise TypeError(f"{caller}: importance must be a function (params, "
                    "node_masks, batch_stats) -> {layer: scores}")
  if recover is not None and not callable(recover):
    raise TypeError(f"{caller}: recover must be None or a function (params, "
                    "node_masks, batch_stats) -> (params, batch_stats)")
  if isinstance(per_round, bool) or not isinstance(per_round, numbers.Integral) or per_round < 1:
    raise ValueError(f"{caller}: per_round must be an int >= 1, got {per_round!r}")
  hidden = list(layers[:-1])
  keep = _structured.checked_node_masks(params, node_masks, hidden, caller)
  smallest = table.predict(dict.fromkeys(hidden, 1))
  if smallest > seconds:
    raise ValueError(
        f"{caller}: the budget {seconds:.6g} s cannot be met: with one unit in "
        f"every hidden layer the table predicts {smallest:.6g} s (the dense "
        f"network: {table.total:.6g} s)")
  widths = lambda: {name: int(keep[name].sum()) for name in hidden}
  as_arrays = lambda: {name: jnp.asarray(k) for name, k in keep.items()}
  latency = table.predict(widths())
  params = _structured.mask_nodes(params, as_arrays(), layers=layers, norms=norms)
  history = []
  while latency > seconds:
    scores = _checked_scores(importance(params, as_arrays(), batch_stats), keep, caller)
    layer_of = np.concatenate([np.full(k.size, i) for i, k in enumerate(keep.values())])
    unit_of = np.concatenate([np.arange(k.size) for k in keep.values()])
    flat = np.concatenate([scores[name] for name in hidden])
    alive = np.concatenate([keep[name] for name in hidden])
    order = np.lexsort((unit_of, layer_of, flat))  # by score, layer, unit
    removed: dict[str, list[int]] = {name: [] for name in hidden}
    count = 0
    for index in order:
      if count == per_round or latency <= seconds:
        break
      name, unit = hidden[layer_of[index]], int(unit_of[index])
      if not alive[index] or keep[name].sum() == 1:
        continue
      keep[name][unit] = False
      removed[name].append(unit)
      count += 1
      latency = table.predict(widths())
    if not count:  # the table rises somewhere as units go; it cannot happen
      raise ValueError(f"{caller}: no unit could be removed, every hidden layer "
                       f"has one, and the prediction {latency:.6g} s is above "
                       f"the budget {seconds:.6g} s")
    params = _structured.mask_nodes(params, as_arrays(), layers=layers, norms=norms)
    if recover is not None:
      params, batch_stats = recover(params, as_arrays(), batch_stats)
      params = _structured.mask_nodes(_nnx.plain(params), as_arrays(),
                                      layers=layers, norms=norms)
    history.append(OptiCutRound(
        {name: tuple(units) for name, units in removed.items()},
        {**widths(), layers[-1]: table.full_widths()[layers[-1]]}, latency))
  if module is not None:
    nnx.update(module, _nnx.conformed(params, nnx.state(module, nnx.Param),
                                      "the pruned params"))
    if batch_stats is not None:
      nnx.update(module, _nnx.conformed(batch_stats, nnx.state(module, nnx.BatchStat),
                                        "the batch statistics"))
  return OptiCut(as_arrays(), params, batch_stats, latency, seconds, tuple(history))
