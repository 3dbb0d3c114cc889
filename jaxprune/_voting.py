"""Majority voting: removing the hidden units that the samples vote for least.

Alqahtani, Xie, Essa and Jones (2020) compare the activation values of the
neurons of a layer and give each neuron a voting score, during training,
then eliminate the least influential ones, with no pre-training and no
fine-tuning.  Only the paper's abstract could be read here; the rules below
are this library's reading of it (docs/guides/voting.md lists the
assumptions):

- Each sample votes, in each hidden layer, for the kept units whose
  activation is above the mean activation of the layer's kept units for
  that sample (``rule="mean"``), or for its ``top_k`` kept units
  (``rule="top_k"``, ties to the lower index).  A unit's votes are the
  number of samples that voted for it (:func:`neuron_votes`); votes add up
  over the batches of a voting period (:func:`add_votes`).
- At each removal event (:func:`vote_schedule`) every layer loses its kept
  units with the fewest votes (:func:`prune_by_votes`): exact counts, ties
  to the lower index, at least one unit kept per layer.

A conv layer's unit is a channel; its activation for a sample is the mean
of the channel over the sample's positions.  The activations of a unit are
what the next layer reads from it, as :func:`jaxprune.unit_activations`
returns them; the removed units become weight masks with
:func:`jaxprune.node_weight_masks`, and :func:`jaxprune.shrink` makes the
smaller network at the end.

Example:
  >>> import jax.numpy as jnp
  >>> import jaxprune
  >>> acts = {'hidden': jnp.array([[3.0, 0.0, 1.0, 0.0],
  ...                              [2.0, 1.0, 0.0, 0.0],
  ...                              [0.0, 2.0, 3.0, 0.0]])}
  >>> votes = jaxprune.neuron_votes(acts)  # per-sample means 1, 0.75, 1.25
  >>> votes['hidden'].tolist()
  [2.0, 2.0, 1.0, 0.0]
  >>> found = jaxprune.prune_by_votes(votes, fraction=0.5)
  >>> found.node_masks['hidden'].tolist(), found.report['hidden'].removed
  ([True, True, False, False], (3, 2))

References:
  Alqahtani, Xie, Essa and Jones, "Neuron-Based Network Pruning Based on
  Majority Voting", ICPR 2020 (abstract:
  https://ailb-web.ing.unimore.it/icpr/author/1262)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

RULES = ("mean", "top_k")


def _check_rule(rule: str, top_k: Any, caller: str) -> None:
  if rule not in RULES:
    raise ValueError(f"{caller}: rule must be one of {RULES}, got {rule!r}")
  if rule == "mean":
    if top_k is not None:
      raise ValueError(f"{caller}: top_k is for rule='top_k'; rule='mean' "
                       "votes for the units above the mean")
    return
  if top_k is None or isinstance(top_k, bool) or not isinstance(top_k, numbers.Real):
    raise ValueError(
        f"{caller}: rule='top_k' needs top_k: a number of units >= 1, or a "
        f"fraction in (0, 1) of the kept units; got {top_k!r}")
  if isinstance(top_k, numbers.Integral):
    if top_k < 1:
      raise ValueError(f"{caller}: top_k must be >= 1 units, got {top_k}")
  elif not 0 < top_k < 1:
    raise ValueError(
        f"{caller}: a float top_k is a fraction of the kept units, in (0, 1); "
        f"got {top_k} (pass an int for a number of units)")


def _per_sample(name: str, value: Any, samples: int | None, caller: str) -> jax.Array:
  """``[samples, units]``: the mean of ``value`` over its positions."""
  shape = jnp.shape(value)
  if len(shape) < 2 or math.prod(shape) == 0:
    raise ValueError(
        f"{caller}: the activations of {name!r} have shape {shape}: expected "
        "[samples, units] (or [samples, ..., units], a conv layer's positions "
        "between) with at least one sample and one unit")
  value = jnp.asarray(value, jnp.float32)
  if samples is not None:
    rows = math.prod(shape[:-1])
    if rows % samples:
      raise ValueError(
          f"{caller}: the activations of {name!r} have {rows} rows, which "
          f"samples={samples} does not divide (unit_activations gives "
          "samples x positions rows)")
    value = value.reshape(samples, -1, shape[-1])
  if value.ndim > 2:
    value = jnp.mean(value.reshape(value.shape[0], -1, value.shape[-1]), axis=1)
  return value


def _node_mask(name: str, node_masks: Mapping[str, Any] | None, units: int,
               caller: str) -> jax.Array:
  if node_masks is None or name not in node_masks:
    return jnp.ones(units, bool)
  keep = node_masks[name]
  if jnp.shape(keep) != (units,) or jnp.result_type(keep) != jnp.bool_:
    raise ValueError(
        f"{caller}: the node mask of {name!r} must be bool[{units}] (True = "
        f"kept), got {jnp.result_type(keep)}{list(jnp.shape(keep))}")
  return jnp.asarray(keep)


def _ballots(a: jax.Array, keep: jax.Array, rule: str, top_k: Any) -> jax.Array:
  """``bool[samples, units]``: which kept units each sample votes for."""
  live = keep[None, :]
  count = jnp.sum(keep).astype(jnp.float32)
  if rule == "mean":
    mean = jnp.sum(jnp.where(live, a, 0.0), axis=1, keepdims=True) / count
    return live & (a > mean)
  # Ranks by activation, the largest first, ties to the lower index; the
  # removed units rank after every kept one.
  order = jnp.argsort(jnp.where(live, -a, jnp.inf), axis=1, stable=True)
  ranks = jnp.argsort(order, axis=1, stable=True)
  k = (jnp.ceil(top_k * count) if isinstance(top_k, float) else
       jnp.asarray(top_k, jnp.float32))
  return live & (ranks.astype(jnp.float32) < k)


def neuron_votes(
    activations: Mapping[str, Any],
    *,
    rule: str = "mean",
    top_k: int | float | None = None,
    node_masks: Mapping[str, Any] | None = None,
    samples: int | None = None,
) -> dict[str, jax.Array]:
  """The votes of a batch of samples for the units of each layer.

  Each sample votes for some of the kept units of each layer: with
  ``rule="mean"``, those whose activation is strictly above the mean of the
  kept units' activations for that sample (a sample whose kept units are
  all equal, all dead say, votes for none); with ``rule="top_k"``, its
  ``top_k`` kept units of largest activation, ties to the lower index.  A
  unit's votes are the number of samples that voted for it; the removed
  units (``node_masks``) receive none and do not count in the mean or the
  ranks.  Pure and jittable (``rule``, ``top_k`` and ``samples`` static).

  Example:
    >>> import jax.numpy as jnp
    >>> import jaxprune
    >>> a = {'h': jnp.array([[0.0, 5.0, 1.0], [4.0, 0.0, 3.0]])}
    >>> jaxprune.neuron_votes(a, rule='top_k', top_k=1)['h'].tolist()
    [1.0, 1.0, 0.0]
    >>> jaxprune.neuron_votes(a, rule='top_k', top_k=1,
    ...                       node_masks={'h': jnp.array([True, False, True])}
    ...                       )['h'].tolist()  # the first sample votes for 2
    [1.0, 0.0, 1.0]

  Args:
    activations: ``{layer: [samples, units]}``, what the next layer reads
      from each unit (:func:`jaxprune.unit_activations`).  A conv layer's
      ``[samples, height, width, units]`` (any axes between the first and
      the last) counts the mean over the positions as the sample's
      activation.
    rule: ``"mean"`` or ``"top_k"``.
    top_k: with ``rule="top_k"``, the units each sample votes for: an int,
      or a float in ``(0, 1)``, that fraction of the layer's kept units
      (rounded up).
    node_masks: ``{layer: bool[units]}``, True = kept; other layers keep
      every unit.
    samples: the number of samples when the activations come as rows
      ``[samples * positions, units]``, as :func:`jaxprune.unit_activations`
      gives a conv layer's: the rows are averaged over each sample's
      positions.

  Returns:
    ``{layer: float32 [units]}``, the votes of each unit.

  Raises:
    ValueError: an unknown rule, a bad ``top_k``, activations that are not
      ``[samples, ..., units]``, a node mask of the wrong shape or dtype,
      rows that ``samples`` does not divide; each message names the layer.
  """
  caller = "jaxprune.neuron_votes"
  _check_rule(rule, top_k, caller)
  if not isinstance(activations, Mapping):
    raise TypeError(f"{caller}: activations must be a dict {{layer: [samples, "
                    f"units]}}, got {type(activations).__name__}")
  if samples is not None and (isinstance(samples, bool) or not isinstance(
      samples, numbers.Integral) or samples < 1):
    raise ValueError(f"{caller}: samples must be None or an int >= 1, got {samples!r}")
  unknown = sorted(set(node_masks or {}) - set(activations))
  if unknown:
    raise ValueError(
        f"{caller}: node_masks name {unknown}, which have no activations; "
        f"the activations have {sorted(activations)}")
  votes = {}
  for name, value in activations.items():
    a = _per_sample(name, value, samples, caller)
    keep = _node_mask(name, node_masks, a.shape[-1], caller)
    votes[name] = jnp.sum(_ballots(a, keep, rule, top_k), axis=0, dtype=jnp.float32)
  return votes


def add_votes(total: Mapping[str, Any] | None,
              votes: Mapping[str, Any]) -> dict[str, jax.Array]:
  """``total + votes``, layer by layer: the votes of a voting period.

  Example:
    >>> import jax.numpy as jnp
    >>> import jaxprune
    >>> total = jaxprune.add_votes(None, {'h': jnp.array([1.0, 0.0])})
    >>> jaxprune.add_votes(total, {'h': jnp.array([2.0, 1.0])})['h'].tolist()
    [3.0, 1.0]

  Args:
    total: the votes so far, or ``None`` at the start of a period.
    votes: the votes of a batch (:func:`neuron_votes`), for the same layers.

  Returns:
    ``{layer: float32 [units]}``.
  """
  votes = {name: jnp.asarray(v, jnp.float32) for name, v in votes.items()}
  if total is None:
    return votes
  if set(total) != set(votes) or any(
      jnp.shape(total[name]) != jnp.shape(v) for name, v in votes.items()):
    raise ValueError(
        "jaxprune.add_votes: the votes are for "
        f"{ {n: jnp.shape(v) for n, v in votes.items()} }, the total for "
        f"{ {n: jnp.shape(v) for n, v in total.items()} }; start a new total "
        "(None) when the layers change")
  return {name: total[name] + v for name, v in votes.items()}


class LayerVotes(NamedTuple):
  """What :func:`prune_by_votes` did to one layer.

  ``str()`` gives one line for logging.

  Attributes:
    units: the layer's units.
    kept: the units kept after this call.
    removed: the units removed by this call, the fewest votes first.
    removed_votes: their votes.
    fewest_kept_votes: the fewest votes of a kept unit: the margin that the
      removal left (every layer keeps at least one unit).
  """

  units: int
  kept: int
  removed: tuple[int, ...]
  removed_votes: tuple[float, ...]
  fewest_kept_votes: float

  def __str__(self) -> str:
    line = f"removed {len(self.removed)}, kept {self.kept} of {self.units} units"
    if self.removed:
      line += (f" (votes {min(self.removed_votes):g} to "
               f"{max(self.removed_votes):g})")
    return line + f"; the fewest votes kept {self.fewest_kept_votes:g}"


class VotePruning(NamedTuple):
  """What :func:`prune_by_votes` returns.

  Attributes:
    node_masks: ``{layer: bool[units]}`` (True = kept), every voted layer
      and the other layers of the ``node_masks`` given, as given.
    report: ``{layer: LayerVotes}`` for every voted layer.
  """

  node_masks: dict[str, jax.Array]
  report: dict[str, LayerVotes]


def _rates(value: Any, what: str, layers: list[str], caller: str) -> dict[str, float]:
  values = (dict(value) if isinstance(value, Mapping)
            else dict.fromkeys(layers, value))
  for name, rate in values.items():
    if name not in layers:
      raise ValueError(
          f"{caller}: {what} names {name!r}, which has no votes; the votes "
          f"have {layers}")
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real):
      raise TypeError(f"{caller}: the {what} of {name!r} must be a real number "
                      f"in [0, 1), got {rate!r}")
    if not 0 <= rate < 1:  # also refuses NaN
      raise ValueError(
          f"{caller}: the {what} of {name!r} must be in [0, 1) (every layer "
          f"keeps at least one unit), got {rate}")
  return {name: float(values.get(name, 0.0)) for name in layers}


def _count(rate: float, n: int) -> int:
  """``floor(rate * n)``, robust to the float error of products such as
  ``0.29 * 100``."""
  return int(math.floor(rate * n + 1e-9))


def prune_by_votes(
    votes: Mapping[str, Any],
    node_masks: Mapping[str, Any] | None = None,
    *,
    fraction: float | Mapping[str, float] | None = None,
    target: float | Mapping[str, float] | None = None,
) -> VotePruning:
  """Removes the kept units with the fewest votes from every voted layer.

  Exactly one of ``fraction`` and ``target``: a layer with ``k`` kept of
  ``n`` units loses ``floor(fraction * k)`` of its kept units, or as many as
  bring it to ``n - floor(target * n)`` kept units (none if it has no more).
  The units with the fewest votes go first, ties to the lower index; a
  layer always keeps at least one unit.  Computed in numpy, outside jit, at
  the removal events.

  Example:
    >>> import jax.numpy as jnp
    >>> import jaxprune
    >>> votes = {'h': jnp.array([5.0, 1.0, 1.0, 3.0, 0.0, 9.0])}
    >>> first = jaxprune.prune_by_votes(votes, target=0.5)
    >>> first.node_masks['h'].tolist()
    [True, False, False, True, False, True]
    >>> print(first.report['h'])
    removed 3, kept 3 of 6 units (votes 0 to 1); the fewest votes kept 3
    >>> jaxprune.prune_by_votes(votes, first.node_masks, fraction=0.5
    ...                         ).report['h'].removed
    (3,)

  Args:
    votes: ``{layer: [units]}``, the votes of a voting period
      (:func:`neuron_votes`, :func:`add_votes`).
    node_masks: the units removed before, ``{layer: bool[units]}`` (True =
      kept); they stay removed.  Layers without votes pass through.
    fraction: the fraction of each layer's kept units to remove, in
      ``[0, 1)``; one for every layer or ``{layer: fraction}`` (others: 0).
    target: the fraction of each layer's units removed in all, this call's
      and the earlier removals, in ``[0, 1)``; one or ``{layer: target}``.

  Returns:
    A :class:`VotePruning`: the node masks and a report per layer.

  Raises:
    ValueError: both or neither of ``fraction`` and ``target``, a rate
      outside ``[0, 1)``, votes that are not 1-D or not finite, a node mask
      of the wrong shape or keeping no unit; each message names the layer.
  """
  caller = "jaxprune.prune_by_votes"
  if not isinstance(votes, Mapping) or not votes:
    raise ValueError(f"{caller}: votes must be a non-empty dict {{layer: "
                     f"[units]}}, got {votes!r}")
  if (fraction is None) == (target is None):
    raise ValueError(f"{caller}: pass exactly one of fraction= (of the kept "
                     "units) and target= (of all the units)")
  layers = list(votes)
  rates = _rates(fraction if target is None else target,
                 "fraction" if target is None else "target", layers, caller)
  masks = {name: jnp.asarray(m) for name, m in (node_masks or {}).items()}
  report = {}
  for name in layers:
    v = np.asarray(votes[name], np.float64)
    if v.ndim != 1 or v.size == 0:
      raise ValueError(f"{caller}: the votes of {name!r} must be [units], got "
                       f"shape {v.shape}")
    if not np.all(np.isfinite(v)):
      raise ValueError(f"{caller}: the votes of {name!r} are not all finite")
    keep = np.asarray(masks.get(name, np.ones(v.size, bool)))
    if keep.shape != v.shape or keep.dtype != np.bool_:
      raise ValueError(
          f"{caller}: the node mask of {name!r} must be bool[{v.size}] like "
          f"its votes, got {keep.dtype}{list(keep.shape)}")
    kept = int(keep.sum())
    if not kept:
      raise ValueError(f"{caller}: the node mask of {name!r} keeps no unit")
    if target is None:
      remove = _count(rates[name], kept)
    else:
      remove = max(0, kept - (v.size - _count(rates[name], v.size)))
    remove = min(remove, kept - 1)
    candidates = np.flatnonzero(keep)
    order = candidates[np.argsort(v[candidates], kind="stable")]
    removed = order[:remove]
    keep = keep.copy()
    keep[removed] = False
    masks[name] = jnp.asarray(keep)
    report[name] = LayerVotes(
        units=int(v.size), kept=int(keep.sum()),
        removed=tuple(int(j) for j in removed),
        removed_votes=tuple(float(v[j]) for j in removed),
        fewest_kept_votes=float(v[keep].min()))
  return VotePruning(masks, report)


class VoteSchedule(NamedTuple):
  """When :func:`prune_by_votes` runs during training, and to what target.

  Attributes:
    steps: the steps of the removal events, increasing.
    targets: the ``target`` (fraction of each layer's units removed in all)
      at each event.
  """

  steps: tuple[int, ...]
  targets: tuple[float, ...]


def vote_schedule(
    target: float, *, begin_step: int, frequency: int, events: int,
    power: float = 3.0,
) -> VoteSchedule:
  """Removal events every ``frequency`` steps, to a final ``target``.

  The target of event ``k`` (from 0) is ``target * (1 - (1 - (k + 1) /
  events) ** power)``: with the default cubic power, most units go at the
  early events (Zhu and Gupta's schedule, in units), the last reaches
  ``target``.  The votes of each event are those of the ``frequency``
  steps before it.

  Example:
    >>> import jaxprune
    >>> s = jaxprune.vote_schedule(0.875, begin_step=100, frequency=100,
    ...                            events=2)
    >>> s.steps, s.targets
    ((100, 200), (0.765625, 0.875))

  Args:
    target: the fraction of each layer's units removed at the end, in
      ``[0, 1)``.
    begin_step: the step of the first event, >= 0.
    frequency: steps between events, >= 1.
    events: the number of events, >= 1.
    power: the schedule's exponent, > 0 (1: the same number of units at
      every event).

  Returns:
    A :class:`VoteSchedule`.
  """
  caller = "jaxprune.vote_schedule"
  for name, value in (("target", target), ("power", power)):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
      raise TypeError(f"{caller}: {name} must be a real number, got {value!r}")
  if not 0 <= target < 1:
    raise ValueError(f"{caller}: target must be a fraction of the units in "
                     f"[0, 1) (every layer keeps one), got {target}")
  if not 0 < power < math.inf:
    raise ValueError(f"{caller}: power must be > 0, got {power}")
  for name, value, minimum in (("begin_step", begin_step, 0),
                               ("frequency", frequency, 1), ("events", events, 1)):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
      raise TypeError(f"{caller}: {name} must be an integer, got {value!r}")
    if value < minimum:
      raise ValueError(f"{caller}: {name} must be >= {minimum}, got {value}")
  targets = [target * (1 - (1 - (k + 1) / events) ** power) for k in range(events)]
  targets[-1] = float(target)
  return VoteSchedule(tuple(int(begin_step + k * frequency) for k in range(events)),
                      tuple(float(t) for t in targets))
