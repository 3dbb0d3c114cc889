"""Iterative magnitude pruning (lottery tickets) around the user's training.

``imp`` alternates the user's training function with :func:`prune_once`:
train with the masks fixed, prune a fraction of the survivors, rewind, and
train again.  Three rewinding rules:

- ``rewind="init"``: back to the initial weights (Frankle & Carbin 2019);
- ``rewind=k``: back to the weights of step ``k`` of the first, dense run,
  each later round training steps ``k`` to ``steps`` (Frankle et al. 2020);
- ``rewind="lr"``: keep the trained weights and restart the schedule
  (learning-rate rewinding, Renda, Frankle & Carbin 2020).

Accelerated IMP (Zullich et al. 2020) trains every round but the last for
fewer steps: ``short_steps``.  Rounds are saved to ``workdir`` as they end,
so a killed run continues at its round.

Example:
  >>> import jax, jax.numpy as jnp
  >>> import jaxprune
  >>> params = {'w': jnp.arange(1.0, 11.0).reshape(2, 5)}
  >>> def train(params, round):  # stands in for training with fixed masks
  ...   return jaxprune.Trained(jaxprune.apply_masks(params, round.masks))
  >>> result = jaxprune.imp(train, params, rounds=2, rate=0.5, steps=100)
  >>> [r.sparsity for r in result.rounds]
  [0.0, 0.5, 0.8]
  >>> result.masks['w'].astype(int).tolist()
  [[0, 0, 0, 0, 0], [0, 0, 0, 1, 1]]
"""

from __future__ import annotations

import json
import numbers
import os
import pathlib
import time
from collections.abc import Callable
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune import _checks
from jaxprune import _masks
from jaxprune import _nnx
from jaxprune import _plans
from jaxprune import _prune_once
from jaxprune import _trees

_CALLER = "jaxprune.imp"

Rate = float | Callable[[_trees.Path, Any], float]


class Round(NamedTuple):
  """What one call of the training function is asked to do.

  Attributes:
    index: 0 for the dense run, then 1, 2, ... for the pruned rounds.
    masks: the masks to train with, fixed (``prune(inner, masks=masks)``);
      every weight kept in round 0.
    sparsity: the overall sparsity of ``masks`` over the prunable weights.
    start_step: the step of the schedule to start at (``k`` after rewinding
      to step ``k``, else 0).
    steps: how many steps to train from there.
    save_step: in round 0 with ``rewind=k``: also return the weights at step
      ``k`` (``Trained.saved``); else ``None``.
    final: whether this is the last round.
  """

  index: int
  masks: Any
  sparsity: float
  start_step: int
  steps: int
  save_step: int | None
  final: bool


class Trained(NamedTuple):
  """What the training function returns.

  Attributes:
    params: the trained params (or the trained ``nnx.Module``).
    metrics: anything to record for the round, JSON-serialisable (test
      accuracy, early-stopping step...).
    saved: the params at ``Round.save_step`` when it is set.
  """

  params: Any
  metrics: dict = {}
  saved: Any = None


class RoundRecord(NamedTuple):
  """One finished round.

  Attributes:
    index: the round (0 = dense).
    sparsity: the overall sparsity it trained at.
    remaining: the fraction of the prunable weights it kept.
    steps: the steps it trained.
    metrics: what the training function returned for it.
    seconds: its wall time (training only).
    masks: the masks it trained with.
  """

  index: int
  sparsity: float
  remaining: float
  steps: int
  metrics: dict
  seconds: float
  masks: Any


class ImpResult(NamedTuple):
  """What :func:`imp` returns.

  Attributes:
    rounds: a :class:`RoundRecord` per round, the dense run first.
    params: the last round's trained params.
    masks: the last round's masks.
    rewind_params: the weights the rounds started from (the initial
      weights, step ``k``'s, or for ``"lr"`` the last round's start).
  """

  rounds: list[RoundRecord]
  params: Any
  masks: Any
  rewind_params: Any


def _check_rewind(rewind: Any, steps: int) -> None:
  if rewind in ("init", "lr"):
    return
  if isinstance(rewind, bool) or not isinstance(rewind, numbers.Integral):
    raise TypeError(
        f"{_CALLER}: rewind must be 'init', 'lr' or a step number, got {rewind!r}")
  if not 0 <= rewind < steps:
    raise ValueError(
        f"{_CALLER}: rewind step {rewind} must be in [0, steps={steps})")


def _round_sparsity(rate: Rate, rounds_done: int) -> Any:
  """The per-leaf (or overall) sparsity after ``rounds_done`` rounds of
  pruning ``rate`` of the survivors."""
  if callable(rate):
    return lambda path, leaf: 1.0 - (1.0 - rate(path, leaf)) ** rounds_done
  return 1.0 - (1.0 - rate) ** rounds_done


def imp(
    train: Callable[[Any, Round], Trained],
    params: Any,
    *,
    rounds: int,
    rate: Rate,
    steps: int,
    rewind: str | int = "init",
    short_steps: int | None = None,
    allocation: str = "layerwise",
    prunable: _trees.PrunablePredicate | None = None,
    workdir: str | os.PathLike | None = None,
    log: Callable[[RoundRecord], None] | None = None,
) -> ImpResult:
  """Iterative magnitude pruning: ``rounds`` prunings after a dense run.

  Round 0 trains the dense network.  After each round, :func:`prune_once`
  removes ``rate`` of the surviving weights by magnitude (of each tensor's
  survivors with ``allocation="layerwise"``), and the next round trains
  from the rewound weights with the new masks fixed.  After ``r`` prunings
  a leaf is at sparsity ``1 - (1 - rate) ** r``, counted exactly.

  The training function is the user's: ``train(params, round) -> Trained``,
  where ``round`` (a :class:`Round`) holds the masks, where to start in the
  schedule and how many steps to train.  It trains with the masks fixed,
  e.g. with ``jaxprune.prune(inner, masks=round.masks)``, and returns the
  trained params and its metrics.

  The example below prunes at the lottery-ticket rates, 20% of the hidden
  layers' survivors and 10% of the output layer's a round, rewinding to
  step 2.

  Example:
    >>> import jax.numpy as jnp
    >>> import jaxprune
    >>> params = {'hidden': {'kernel': jnp.arange(1.0, 41.0).reshape(8, 5)},
    ...           'out': {'kernel': jnp.arange(1.0, 11.0).reshape(5, 2)}}
    >>> def train(params, round):
    ...   trained = jax.tree.map(lambda p: p * 1.01, params)
    ...   saved = params if round.save_step is not None else None
    ...   return jaxprune.Trained(jaxprune.apply_masks(trained, round.masks),
    ...                           {'steps': round.steps}, saved)
    >>> rate = lambda path, leaf: 0.1 if path[0] == 'out' else 0.2
    >>> result = jaxprune.imp(train, params, rounds=3, rate=rate, steps=10,
    ...                       rewind=2)
    >>> [int(r.masks['hidden']['kernel'].sum()) for r in result.rounds]
    [40, 32, 26, 20]
    >>> [r.metrics['steps'] for r in result.rounds]
    [10, 8, 8, 8]

  Args:
    train: ``(params, round) -> Trained``, the user's training.
    params: the initial params (Linen params, or an ``nnx.Module``, which
      ``train`` then receives with the round's weights loaded and may
      return).
    rounds: the number of prunings (the dense run comes first).
    rate: the fraction of the survivors pruned each round, in ``(0, 1)``,
      or ``(path, leaf) -> rate`` per leaf (``allocation="layerwise"``).
    steps: the training length of a round from step 0.
    rewind: ``"init"``, a step ``k`` of the first run, or ``"lr"``.
    short_steps: Accelerated IMP: the steps of every round but the last
      (from the start step); the last trains for the full length.
    allocation: how the pruned weights are ranked (``"layerwise"`` as the
      lottery-ticket paper, or ``"global"``...).
    prunable: which leaves are pruned, ``(path, leaf) -> bool``.
    workdir: a directory where each round is saved as it ends; a later call
      with the same arguments continues after the last saved round.
    log: called with each :class:`RoundRecord` as it ends.

  Returns:
    An :class:`ImpResult`.

  Raises:
    ValueError, TypeError: bad counts, rates or rewind; a training function
      that returns no params, or no ``saved`` weights when asked; a workdir
      saved by a run with other arguments.
  """
  _checks.check_int("rounds", rounds, 0)
  _checks.check_int("steps", steps, 1)
  _check_rewind(rewind, steps)
  if short_steps is not None:
    _checks.check_int("short_steps", short_steps, 1, steps)
  if not callable(rate):
    rate = _checks.check_sparsity(rate, "rate")
    if not 0.0 < rate < 1.0:
      raise ValueError(f"{_CALLER}: rate must be in (0, 1), got {rate}")
  if not callable(train):
    raise TypeError(f"{_CALLER}: train must be callable, got {train!r}")
  module = params if _nnx.is_module(params) else None
  initial = _nnx.plain(params)
  plan = _plans.leveled_plan(initial, prunable, "layerwise", [0.0], _CALLER)
  masks = _masks.all_kept(plan, initial)
  store = _RoundStore(workdir, dict(
      rounds=rounds, rate=None if callable(rate) else rate, steps=steps,
      rewind=rewind, short_steps=short_steps, allocation=allocation))
  start_from, records = initial, []
  rewind_point = initial
  for index in range(rounds + 1):
    final = index == rounds
    start = rewind if isinstance(rewind, int) and index > 0 else 0
    length = steps - start
    if short_steps is not None and not final:
      length = min(short_steps, length)
    restored = store.load(index, initial)
    if restored is not None:
      record, trained, saved = restored
    else:
      plan_round = Round(
          index=index, masks=masks, sparsity=_sparsity(masks), start_step=start,
          steps=length, save_step=rewind if isinstance(rewind, int) and index == 0
          and rewind > 0 else None, final=final)
      began = time.perf_counter()
      outcome = train(_nnx.loaded(module, _masks.apply_masks(start_from, masks)),
                      plan_round)
      seconds = time.perf_counter() - began
      trained, saved = _check_outcome(outcome, plan_round, initial)
      record = RoundRecord(index, plan_round.sparsity, 1.0 - plan_round.sparsity,
                           length, dict(outcome.metrics), seconds, masks)
      store.save(record, trained, saved)
    records.append(record)
    if log is not None:
      log(record)
    if index == 0 and isinstance(rewind, int) and rewind > 0:
      rewind_point = saved
    if final:
      break
    masks = _prune_once.prune_once(
        trained, sparsity=_round_sparsity(rate, index + 1), masks=masks,
        allocation=allocation, prunable=prunable)
    start_from = trained if rewind == "lr" else rewind_point
  return ImpResult(records, trained, masks,
                   start_from if rewind == "lr" else rewind_point)


def _sparsity(masks: Any) -> float:
  leaves = _masks.mask_leaves(masks)
  total = sum(int(np.size(m)) for m in leaves)
  return 1.0 - sum(int(np.sum(np.asarray(m))) for m in leaves) / total


def _check_outcome(outcome: Any, round: Round, initial: Any) -> tuple[Any, Any]:
  if not isinstance(outcome, Trained):
    raise TypeError(
        f"{_CALLER}: train must return a jaxprune.Trained, got "
        f"{type(outcome).__name__} in round {round.index}")
  trained = _nnx.plain(outcome.params)
  _trees.check_same_shapes(initial, trained, "the trained params")
  saved = None
  if round.save_step is not None:
    if outcome.saved is None:
      raise ValueError(
          f"{_CALLER}: round 0 was asked for the weights at step "
          f"{round.save_step} (rewind={round.save_step}), but train returned "
          "Trained.saved=None")
    saved = _nnx.plain(outcome.saved)
    _trees.check_same_shapes(initial, saved, "the saved params")
  if not isinstance(outcome.metrics, dict):
    raise TypeError(f"{_CALLER}: Trained.metrics must be a dict, got "
                    f"{type(outcome.metrics).__name__}")
  return trained, saved


class _RoundStore:
  """Rounds saved as ``round_N.npz`` (masks, trained and saved weights)
  and ``round_N.json`` (the record) in a work directory."""

  def __init__(self, workdir, arguments: dict):
    self.root = None if workdir is None else pathlib.Path(workdir)
    if self.root is None:
      return
    self.root.mkdir(parents=True, exist_ok=True)
    settings = self.root / "imp.json"
    if settings.exists():
      before = json.loads(settings.read_text())
      changed = sorted(k for k in arguments if before.get(k) != arguments[k])
      if changed:
        differences = ", ".join(
            f"{k}: {before.get(k)!r} -> {arguments[k]!r}" for k in changed)
        raise ValueError(
            f"{_CALLER}: {self.root} holds rounds of a run with other "
            f"arguments ({differences}); use another workdir")
    else:
      _write_atomically(settings, json.dumps(arguments).encode())

  def save(self, record: RoundRecord, trained: Any, saved: Any) -> None:
    if self.root is None:
      return
    arrays = {}
    for prefix, tree in (("masks", record.masks), ("trained", trained),
                         ("saved", saved)):
      if tree is None:
        continue
      for path, leaf in _trees.leaves_with_paths(tree):
        arrays[f"{prefix}:{_trees.path_string(path)}"] = np.asarray(leaf)
    base = self.root / f"round_{record.index}"
    with open(f"{base}.npz.tmp", "wb") as f:
      np.savez(f, **arrays)
    os.replace(f"{base}.npz.tmp", f"{base}.npz")
    _write_atomically(pathlib.Path(f"{base}.json"), json.dumps(dict(
        sparsity=record.sparsity, remaining=record.remaining,
        steps=record.steps, metrics=record.metrics,
        seconds=record.seconds)).encode())

  def load(self, index: int, like: Any):
    if self.root is None:
      return None
    base = self.root / f"round_{index}"
    if not (pathlib.Path(f"{base}.json").exists()
            and pathlib.Path(f"{base}.npz").exists()):
      return None
    info = json.loads(pathlib.Path(f"{base}.json").read_text())
    with np.load(f"{base}.npz") as arrays:
      stored = dict(arrays)

    def tree(prefix, masks=False):
      keys = [f"{prefix}:{_trees.path_string(p)}"
              for p, _ in _trees.leaves_with_paths(like)]
      if not any(k in stored for k in keys):
        return None
      return jax.tree_util.tree_map_with_path(
          lambda path, leaf: (jnp.asarray(stored[k]) if (
              k := f"{prefix}:{_trees.path_string(_trees.readable_path(path))}")
              in stored else (None if masks else leaf)), like)

    masks = tree("masks", masks=True)
    record = RoundRecord(index, info["sparsity"], info["remaining"],
                         info["steps"], info["metrics"], info["seconds"], masks)
    return record, tree("trained"), tree("saved")


def _write_atomically(path: pathlib.Path, data: bytes) -> None:
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_bytes(data)
  os.replace(tmp, path)
