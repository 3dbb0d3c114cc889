"""SNAP-it: structured pruning of neurons and filters, and physical shrinking.

SNAP-it (Verdenius et al. 2020) gates every hidden unit (a dense layer's
output neuron, a conv filter) with a scalar ``c = 1`` after its bias and
before its normalisation, scores the unit by ``|dL/dc|`` over a few batches,
and removes the lowest-scoring units in geometric rounds, ranked over the
whole network.  The pruned units are then removed physically: a smaller
dense network computes what the masked one did.

The gate needs no change to the model: for a layer ``y = x W + b`` (or a
convolution), gating output ``j`` by ``c_j`` is the same as scaling column
``j`` of ``W`` and entry ``j`` of ``b``, so at ``c = 1``

    dL/dc_j = sum_i W[..., i, j] * dL/dW[..., i, j] + b[j] * dL/db[j],

which :func:`node_sensitivity` computes from the ordinary gradients.

The functions here are for sequential networks, described by ``layers``: the
names of their dense and conv layers (top-level entries of the params, each
with a channels-last ``kernel`` and optionally a ``bias``) in call order.
The last layer's outputs and the first layer's inputs are never pruned, and
every hidden layer keeps at least one unit.  A layer's normalisation (batch
or layer norm with ``scale`` and ``bias``) is named in ``norms``; a pruned
unit's normalisation scale and bias are zeroed too, so the masked unit
outputs exactly 0 (the unit gate acts after the normalisation when the
network is masked, which is what removing the unit does).  A dense layer
after a conv layer reads the conv output flattened from ``(h, w, c)``.

Example:
  >>> import jax, jax.numpy as jnp
  >>> import jaxprune
  >>> params = {'hidden': {'kernel': jax.random.normal(jax.random.key(0), (4, 8)),
  ...                      'bias': jnp.zeros(8)},
  ...           'out': {'kernel': jax.random.normal(jax.random.key(1), (8, 2)),
  ...                   'bias': jnp.zeros(2)}}
  >>> def forward(p, x):
  ...   h = jax.nn.relu(x @ p['hidden']['kernel'] + p['hidden']['bias'][None])
  ...   return h @ p['out']['kernel'] + p['out']['bias'][None]
  >>> x = jax.random.normal(jax.random.key(2), (16, 4))
  >>> loss_fn = lambda p, x: jnp.mean(forward(p, x) ** 2)
  >>> nodes = jaxprune.snap_it(loss_fn, params, [x], sparsity=0.75,
  ...                          layers=['hidden', 'out'])
  >>> int(nodes['hidden'].sum())  # 2 of 8 hidden units kept
  2
  >>> small = jaxprune.shrink(params, nodes, layers=['hidden', 'out'])
  >>> small.params['hidden']['kernel'].shape, small.widths
  ((4, 2), {'hidden': 2, 'out': 2})
  >>> masked = jaxprune.mask_nodes(params, nodes, layers=['hidden', 'out'])
  >>> bool(jnp.allclose(forward(masked, x), forward(small.params, x), atol=1e-6))
  True

References:
  Verdenius, Stol and Forre, "Pruning via Iterative Ranking of Sensitivity
  Statistics", 2020, https://arxiv.org/abs/2006.00896
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxprune import _allocation
from jaxprune import _checks
from jaxprune import _masked
from jaxprune import _nnx
from jaxprune import _plans
from jaxprune import _scoring
from jaxprune import _snip
from jaxprune import _trees
from jaxprune import schedules

_CALLER = "jaxprune.snap_it"


def check_layers(params: Any, layers: Sequence[str],
                 norms: Mapping[str, str] | None, caller: str) -> dict:
  """``norms`` as a dict, after checking that ``layers`` name at least two
  top-level layers with kernels, in call order, and that ``norms`` maps
  hidden layers to layers of the params; raises ``ValueError`` naming the
  layer otherwise."""
  if isinstance(layers, str) or len(layers) < 2:
    raise ValueError(
        f"{caller}: layers must name at least two layers in call order, got "
        f"{layers!r}")
  for name in layers:
    if name not in params or "kernel" not in params[name]:
      raise ValueError(
          f"{caller}: layer {name!r} is not a top-level entry of the params "
          f"with a 'kernel'; the params have {sorted(params)}")
    if jnp.ndim(params[name]["kernel"]) < 2:
      raise ValueError(f"{caller}: the kernel of layer {name!r} is not 2-D or more")
  norms = dict(norms or {})
  for layer, norm in norms.items():
    if layer not in layers[:-1]:
      raise ValueError(
          f"{caller}: norms maps {layer!r}, which is not a hidden layer of "
          f"{list(layers[:-1])}")
    if norm not in params:
      raise ValueError(f"{caller}: norm layer {norm!r} is not in the params")
  return norms


def _hidden(layers: Sequence[str]) -> list[str]:
  return list(layers[:-1])


def node_sensitivity(
    loss_fn: _snip.LossFn, params: Any, batches: Sequence[Any],
    layers: Sequence[str],
) -> dict[str, jax.Array]:
  """``|dL/dc|`` of every hidden unit's gate, summed over ``batches``.

  In a linear network ``dL/dc_j`` is hidden unit ``j``'s output times its
  outgoing weight.

  Example:
    >>> import jax.numpy as jnp
    >>> import jaxprune
    >>> params = {'hidden': {'kernel': jnp.array([[1.0, 2.0]]),
    ...                      'bias': jnp.zeros(2)},
    ...           'out': {'kernel': jnp.array([[3.0], [1.0]])}}
    >>> def loss_fn(p, x):
    ...   h = x @ p['hidden']['kernel'] + p['hidden']['bias'][None, :]
    ...   return jnp.sum(h @ p['out']['kernel'])
    >>> jaxprune.scores.node_sensitivity(loss_fn, params, [jnp.ones((1, 1))],
    ...                                  layers=['hidden', 'out'])
    {'hidden': Array([3., 2.], dtype=float32)}

  Args:
    loss_fn: ``(params, batch) -> scalar loss``, the model in evaluation mode.
    params: the parameter tree.
    batches: a non-empty sequence of batches.
    layers: the dense and conv layers, in call order (see the module
      docstring).

  Returns:
    ``{layer: float32 scores of its output units}`` for every layer but the
    last.
  """
  loss_fn, params = _nnx.as_functional(loss_fn, params)
  check_layers(params, layers, None, "jaxprune.scores.node_sensitivity")
  _checks.check_batches(batches, "jaxprune.scores.node_sensitivity")
  batches = list(batches)
  if not batches:
    raise ValueError(
        "jaxprune.scores.node_sensitivity needs at least one batch, got none")
  grads = functools.reduce(
      lambda a, b: jax.tree.map(jnp.add, a, b),
      (_scoring.jitted_gradient(loss_fn)(params, batch) for batch in batches))
  scores = {}
  for name in _hidden(layers):
    kernel = params[name]["kernel"].astype(jnp.float32)
    gate = jnp.sum(kernel * grads[name]["kernel"].astype(jnp.float32),
                   axis=tuple(range(kernel.ndim - 1)))
    if "bias" in params[name]:
      gate = gate + (params[name]["bias"].astype(jnp.float32)
                     * grads[name]["bias"].astype(jnp.float32))
    scores[name] = jnp.abs(gate)
  return scores


def mask_nodes(
    params: Any, node_masks: Mapping[str, Any], *, layers: Sequence[str],
    norms: Mapping[str, str] | None = None,
) -> Any:
  """``params`` with the pruned units' outputs zeroed.

  Zeroes each pruned unit's kernel column, bias entry and, through
  ``norms``, its normalisation scale and bias, so that it outputs 0.

  Args:
    params: the parameter tree.
    node_masks: ``{layer: bool[units]}`` (True = kept) for hidden layers, as
      :func:`snap_it` returns.
    layers: the dense and conv layers, in call order.
    norms: ``{layer: its normalisation layer}``.

  Returns:
    The masked params (same shapes).
  """
  if isinstance(params, nnx.Module):
    nnx.update(params, _nnx.conformed(
        mask_nodes(_nnx.plain(params), node_masks, layers=layers, norms=norms),
        nnx.state(params, nnx.Param), "the masked params"))
    return None
  norms = check_layers(params, layers, norms, "jaxprune.mask_nodes")
  _check_node_masks(params, node_masks, layers, "jaxprune.mask_nodes")
  params = jax.tree.map(lambda x: x, params)  # a copy of the containers
  for name, keep in node_masks.items():
    keep = jnp.asarray(keep)
    params[name] = {
        k: jnp.where(keep, v, jnp.zeros_like(v)) if k in ("kernel", "bias") else v
        for k, v in params[name].items()
    }
    if name in norms:
      norm = norms[name]
      params[norm] = {k: jnp.where(keep, v, jnp.zeros_like(v))
                      for k, v in params[norm].items()}
  return params


def checked_node_masks(params, node_masks, hidden, caller) -> dict[str, np.ndarray]:
  """``node_masks`` (``None`` or ``{hidden layer: bool[units]}``, absent
  layers all kept) as a numpy copy per hidden layer; raises naming
  ``caller`` and the layer for an unknown layer, a wrong shape or dtype, or
  a layer with no unit kept."""
  if node_masks is not None and not isinstance(node_masks, Mapping):
    raise TypeError(f"{caller}: node_masks must be a dict {{layer: bool[units]}}, "
                    f"got {type(node_masks).__name__}")
  node_masks = dict(node_masks or {})
  unknown = sorted(set(node_masks) - set(hidden))
  if unknown:
    raise ValueError(f"{caller}: node_masks name {unknown}, which are not hidden "
                     f"layers of {list(hidden)}")
  checked = {}
  for name in hidden:
    units = np.shape(params[name]["kernel"])[-1]
    keep = np.asarray(node_masks.get(name, np.ones(units, bool)))
    if keep.shape != (units,) or keep.dtype != np.bool_:
      raise ValueError(f"{caller}: the node mask of {name!r} must be bool[{units}] "
                       f"(True = kept), got {keep.dtype}{list(keep.shape)}")
    if not keep.any():
      raise ValueError(f"{caller}: the node mask of {name!r} keeps no unit")
    checked[name] = keep.copy()
  return checked


def _check_node_masks(params, node_masks, layers, caller) -> None:
  hidden = _hidden(layers)
  if set(node_masks) != set(hidden):
    raise ValueError(
        f"{caller}: node masks are needed for exactly the hidden layers "
        f"{hidden}, got {sorted(node_masks)}")
  for name in hidden:
    units = jnp.shape(params[name]["kernel"])[-1]
    if jnp.shape(node_masks[name]) != (units,):
      raise ValueError(
          f"{caller}: the node mask of {name!r} has shape "
          f"{jnp.shape(node_masks[name])}, expected ({units},)")
    if jnp.result_type(node_masks[name]) != jnp.bool_:
      raise TypeError(f"{caller}: the node mask of {name!r} is not boolean")


def snap_it(
    loss_fn: _snip.LossFn,
    params: Any,
    batches: Iterable[Any],
    *,
    sparsity: float,
    layers: Sequence[str],
    norms: Mapping[str, str] | None = None,
    steps: int = 5,
    batches_per_round: int = 5,
) -> dict[str, jax.Array]:
  """SNAP-it before training: the hidden units to keep, at ``sparsity``.

  Rounds of :func:`jaxprune.schedules.geometric_rounds` ``(sparsity,
  steps)``, counted in units: each round masks the pruned units
  (:func:`mask_nodes`), recomputes :func:`node_sensitivity` over the
  round's batches and keeps exactly ``n - round(k * n)`` of the ``n`` hidden
  units, the best-scoring survivors ranked over all layers; every layer
  keeps at least its best unit.

  Args:
    loss_fn: ``(params, batch) -> scalar loss``, the model in evaluation mode.
    params: the parameter tree (at initialisation).
    batches: a sequence (used whole each round) or an iterator (giving
      ``batches_per_round`` fresh batches per round).
    sparsity: the fraction of hidden units removed, in ``[0, 1)``.
    layers: the dense and conv layers, in call order (see the module
      docstring); the last one's outputs are not pruned.
    norms: ``{layer: its normalisation layer}``.
    steps: the number of halvings after the first round (5 in the paper).
    batches_per_round: batches per round from an iterator.

  Returns:
    ``{layer: bool[units]}`` (True = kept) for every layer but the last.

  Raises:
    ValueError: bad sparsity or layers, no batches, a sparsity that would
      leave fewer units than hidden layers, non-finite scores.
    TypeError: a leaf of the params that is not floating-point.
  """
  loss_fn, params = _nnx.as_functional(loss_fn, params)
  norms = check_layers(params, layers, norms, _CALLER)
  _trees.check_differentiable(params, _CALLER)
  sparsity = _checks.check_sparsity(sparsity, "sparsity")
  rounds = schedules.geometric_rounds(sparsity, steps)
  if sparsity >= 1:
    raise ValueError(f"{_CALLER}: a node sparsity of 1 removes every unit; "
                     "ask for less than 1")
  hidden = _hidden(layers)
  units = {name: jnp.shape(params[name]["kernel"])[-1] for name in hidden}
  total = sum(units.values())
  kept = _allocation.kept_in_group(sparsity, total)
  if kept < len(hidden):
    raise ValueError(
        f"{_CALLER}: node sparsity {sparsity} keeps {kept} of {total} hidden "
        f"units, fewer than the {len(hidden)} hidden layers, each of which "
        "keeps one")
  template = {name: jnp.zeros((n,), jnp.float32) for name, n in units.items()}
  plan = _plans.make_plan(
      template, lambda path, leaf: True, "global",
      lambda shapes, units: [
          _allocation.kept_counts(s, shapes, "global") for s in rounds],
      caller=_CALLER)
  round_batches = _scoring.round_batches(batches, batches_per_round, _CALLER)
  select = jax.jit(functools.partial(
      _masked.selected_masks, plan=plan, allocation="global"))
  node_masks = {name: jnp.ones((n,), bool) for name, n in units.items()}
  for level in range(len(rounds)):
    masked = mask_nodes(params, node_masks, layers=layers, norms=norms)
    scores = node_sensitivity(loss_fn, masked, round_batches(), layers)
    _scoring.check_scores(scores, plan, _CALLER)
    node_masks, _ = select(scores, node_masks,
                           kept=jnp.asarray(plan.kept[level]))
  return node_masks


class Shrunk(NamedTuple):
  """What :func:`shrink` returns.

  Attributes:
    params: the smaller network's params (for Flax NNX, in the plain form of
      ``nnx.state(model, nnx.Param)``).
    batch_stats: its batch statistics (``None`` if none were given; for
      NNX, the plain form of ``nnx.state(model, nnx.BatchStat)``).
    widths: ``{layer: output units}`` of every layer, for building the
      smaller model.
  """

  params: Any
  batch_stats: Any
  widths: dict[str, int]

  def load_into(self, module: nnx.Module) -> None:
    """Puts the params (and batch statistics) into ``module``, a Flax NNX
    model built with :attr:`widths`, in place.

    Raises:
      ValueError: naming the leaf, where ``module`` lacks a leaf or has one
        of another shape (a model not built with these widths).
    """
    if not isinstance(module, nnx.Module):
      raise TypeError(
          f"Shrunk.load_into takes a Flax NNX module, got {type(module).__name__}")
    for kind, values in ((nnx.Param, self.params),
                         (nnx.BatchStat, self.batch_stats)):
      if values is None:
        continue
      state = nnx.state(module, kind)
      new = _nnx.conformed(values, state, "the shrunk network's leaves")
      for path, old, leaf in zip(
          (p for p, _ in _trees.leaves_with_paths(state)),
          jax.tree.leaves(state), jax.tree.leaves(new), strict=True):
        if jnp.shape(old) != jnp.shape(leaf):
          raise ValueError(
              f"Shrunk.load_into: {_trees.path_string(path)} has shape "
              f"{jnp.shape(old)} in the module but {jnp.shape(leaf)} in the "
              "shrunk network; build the module with Shrunk.widths")
      nnx.update(module, new)


def _input_rows(channels: int, kept_channels: np.ndarray,
                inputs: int) -> np.ndarray:
  """The input indices of a layer that read the kept ones of the previous
  layer's ``channels`` units (a flattened ``(h, w, c)`` conv output when the
  sizes differ)."""
  if inputs == channels:
    return kept_channels
  if inputs % channels:
    raise ValueError(
        f"a layer with {_checks.counted(inputs, 'input')} cannot read a "
        f"layer of {_checks.counted(channels, 'unit')} (neither equal nor a "
        "flattened channels-last map)")
  keep = np.zeros(channels, bool)
  keep[kept_channels] = True
  return np.flatnonzero(np.tile(keep, inputs // channels))


def shrink(
    params: Any,
    node_masks: Mapping[str, Any],
    *,
    layers: Sequence[str],
    norms: Mapping[str, str] | None = None,
    batch_stats: Any = None,
) -> Shrunk:
  """The smaller dense network without the pruned units.

  Removes each pruned unit's kernel column, bias entry and normalisation
  entries (scale, bias, and the running mean and variance in
  ``batch_stats``), and the next layer's kernel rows that read it.  The
  result computes what :func:`mask_nodes` params compute (to float
  rounding), with the widths in :attr:`Shrunk.widths`.  Layers not named in
  ``layers`` or ``norms`` are copied unchanged.

  Args:
    params: the parameter tree.
    node_masks: ``{layer: bool[units]}`` for the hidden layers.
    layers: the dense and conv layers, in call order.
    norms: ``{layer: its normalisation layer}``.
    batch_stats: the batch statistics collection, if the model has one.

  Returns:
    A :class:`Shrunk`.
  """
  if isinstance(params, nnx.Module):
    if norms and batch_stats is None:
      batch_stats = _nnx.plain(nnx.state(params, nnx.BatchStat)) or None
    params = _nnx.plain(params)
  norms = check_layers(params, layers, norms, "jaxprune.shrink")
  _check_node_masks(params, node_masks, layers, "jaxprune.shrink")
  original = params
  params = dict(params)
  batch_stats = None if batch_stats is None else dict(batch_stats)
  widths, read = {}, None  # read: (units of the previous layer, kept ones)
  for name in layers:
    layer = dict(params[name])
    if read is not None:
      rows = _input_rows(*read, np.shape(layer["kernel"])[-2])
      layer["kernel"] = jnp.take(layer["kernel"], rows, axis=-2)
    if name in node_masks:
      kept = np.flatnonzero(np.asarray(node_masks[name]))
      layer["kernel"] = jnp.take(layer["kernel"], kept, axis=-1)
      if "bias" in layer:
        layer["bias"] = jnp.take(layer["bias"], kept, axis=0)
      if name in norms:
        norm = norms[name]
        params[norm] = {k: jnp.take(v, kept, axis=0)
                        for k, v in params[norm].items()}
        if batch_stats is not None and norm in batch_stats:
          batch_stats[norm] = {k: jnp.take(v, kept, axis=0)
                               for k, v in batch_stats[norm].items()}
      read = (np.shape(original[name]["kernel"])[-1], kept)
    params[name] = layer
    widths[name] = int(np.shape(layer["kernel"])[-1])
  return Shrunk(params, batch_stats, widths)
