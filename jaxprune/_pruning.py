"""``prune``: wraps any optax optimizer into one that prunes as it trains.

Example:
  >>> import jax, jax.numpy as jnp, optax
  >>> import jaxprune
  >>> params = {'w': jnp.array([[0.1, -2.0], [0.3, 1.0]]), 'b': jnp.ones(2)}
  >>> tx = jaxprune.prune(
  ...     optax.sgd(0.1),
  ...     criterion=jaxprune.criteria.magnitude,
  ...     schedule=jaxprune.schedules.one_shot(0.5, at_step=0))
  >>> state = tx.init(params)
  >>> grads = jax.tree.map(jnp.ones_like, params)
  >>> updates, state = jax.jit(tx.update)(grads, state, params)
  >>> params = optax.apply_updates(params, updates)
  >>> jaxprune.masks_of(state)['w'].tolist()
  [[False, True], [False, True]]
  >>> params['w']  # pruned weights are exactly zero after apply_updates
  Array([[ 0. , -2.1],
         [ 0. ,  0.9]], dtype=float32)
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from jaxprune import _allocation
from jaxprune import _inspect
from jaxprune import _packing
from jaxprune import _selection
from jaxprune import _sharding
from jaxprune import _trees
from jaxprune import criteria as criteria_lib
from jaxprune import schedules as schedules_lib


@_inspect.register_mask_state
class PruneState(NamedTuple):
  """State of :func:`prune`.

  Attributes:
    step: int32, the number of updates applied so far.
    level: int32, the index of the schedule level the masks realise; -1
      while no level has been applied.
    masks: the masks, a tree with the structure of the params: a boolean
      array (True = kept) for every prunable leaf, ``None`` for the others;
      a :class:`jaxprune.PackedMask` instead of the array with
      ``prune(..., packed_masks=True)`` (read them with
      :func:`jaxprune.masks_of`).
    key: uint32 key data; the criterion gets ``fold_in(key, step)``.
    nan_scores: int32, how many surviving weights had a NaN score at the
      last mask update (they ranked below every real score).
    inner_state: the state of the wrapped optimizer.
  """

  step: jax.Array
  level: jax.Array
  masks: Any
  key: jax.Array
  nan_scores: jax.Array
  inner_state: optax.OptState


@dataclasses.dataclass(frozen=True)
class _Plan:
  """What is pruned and how many weights each group keeps, per level."""

  prunable: Any  # tree of Python bools with the structure of the params
  paths: tuple[_trees.Path, ...]  # of the prunable leaves, in tree order
  group_ids: tuple[int, ...]
  group_sizes: tuple[int, ...]
  kept: np.ndarray  # int32 [levels, groups]


def _make_plan(params, prunable, schedule, allocation) -> _Plan:
  return _plan_with(
      params,
      prunable,
      allocation,
      lambda shapes: [
          _allocation.kept_counts(s, shapes, allocation)
          for s in schedule.sparsities
      ],
  )


def _plan_with(params, prunable, allocation, kept_counts,
               caller: str = "jaxprune.prune") -> _Plan:
  """The plan for ``params``, checking the prunable leaves.

  Args:
    params: the parameter tree.
    prunable: the user's predicate, or ``None`` for the default.
    allocation: how the prunable tensors are grouped for ranking.
    kept_counts: ``shapes -> rows``, the prunable tensors' shapes to one row
      of per-group kept counts for every level.
    caller: the public function, for error messages.
  """
  flags, selected = _trees.selected_leaves(params, prunable, caller, "pruned")
  shapes = [tuple(np.shape(leaf)) for _, leaf in selected]
  group_ids, group_sizes = _allocation.group_layout(shapes, allocation)
  too_big = [n for n in group_sizes if n >= 2**31]
  if too_big:
    raise ValueError(
        f"a ranked group holds {too_big[0]} weights; at most 2**31 - 1 are "
        "supported"
    )
  kept = kept_counts(shapes)
  kept = np.asarray(kept, np.int32).reshape(len(kept), len(group_sizes))
  return _Plan(
      flags, tuple(p for p, _ in selected), group_ids, group_sizes, kept
  )


def _check_finite(params, plan: _Plan, caller: str = "jaxprune.prune") -> None:
  """Raises ``ValueError`` naming the first prunable leaf with NaN or inf.

  Traced leaves (under jit) cannot be checked and are skipped.
  """
  for (path, leaf), flag in zip(
      _trees.leaves_with_paths(params), jax.tree.leaves(plan.prunable)
  ):
    if flag and not isinstance(leaf, jax.core.Tracer):
      if not bool(jnp.all(jnp.isfinite(leaf))):
        raise ValueError(
            f"{caller}: prunable leaf {_trees.path_string(path)} holds NaN or "
            "inf values; pruning scores computed from it would be meaningless"
        )


def _prunable_leaves(tree, plan: _Plan) -> list[Any]:
  return [
      leaf
      for leaf, flag in zip(jax.tree.leaves(tree), jax.tree.leaves(plan.prunable))
      if flag
  ]


def _mask_leaves(masks) -> list[jax.Array]:
  return jax.tree.leaves(masks)  # None leaves are dropped


def _apply_if(predicate: jax.Array, fn, operand):
  """``fn(operand)`` if ``predicate`` else ``operand``, updating in place.

  A while loop of zero or one trip: XLA keeps a loop's carry in the buffers
  it came in, so a step that does not update the masks touches nothing,
  where ``lax.cond`` would copy the masks into fresh buffers at every step.
  """

  def body(carry):
    pending, value = carry
    del pending
    return jnp.zeros((), jnp.bool_), fn(value)

  _, result = lax.while_loop(lambda carry: carry[0], body, (predicate, operand))
  return result


def selected_masks(scores, masks, plan: _Plan, allocation: str, kept: jax.Array):
  """The masks that keep the ``kept[g]`` best-scoring surviving weights.

  Args:
    scores: the criterion's scores, a tree with the structure of the params.
    masks: the current masks (the survivors); the new ones are a subset.
    plan: what is pruned and how it is grouped.
    allocation: the plan's allocation; under ``"global"`` every tensor's best
      survivor is kept.
    kept: int32, the number of weights each group keeps.

  Returns:
    The new masks and the number of survivors whose score was NaN.
  """
  _trees.check_same_structure(plan.prunable, scores, "the criterion's scores")
  old = _mask_leaves(masks)
  new_scores = _prunable_leaves(scores, plan)
  for path, score, mask in zip(plan.paths, new_scores, old):
    if jnp.shape(score) != mask.shape:
      raise ValueError(
          f"the criterion's score for {_trees.path_string(path)} has shape "
          f"{jnp.shape(score)}, expected {mask.shape}"
      )
  keys = [_selection.LazyKeys(_selection.ranking_keys, (s, m))
          for s, m in zip(new_scores, old)]
  return _ranked_masks(keys, masks, plan, allocation, kept)


def _ranked_masks(keys, masks, plan: _Plan, allocation: str, kept: jax.Array):
  """The masks that keep the ``kept[g]`` highest ``keys`` (one per prunable
  leaf, arrays or :class:`_selection.LazyKeys`) of each group, and the
  number of survivors whose score was NaN (see :func:`selected_masks`)."""
  old = _mask_leaves(masks)
  selection = _selection.keep_top_k(keys, plan.group_ids, plan.group_sizes,
                                    kept, keep_best=allocation == "global")
  new = [k & m for k, m in zip(selection.kept, old)]
  nan_scores = jnp.sum(selection.nan_counts)
  return jax.tree.unflatten(jax.tree.structure(masks), new), nan_scores


def _per_weight_keys(per_weight, params, grads, masks, plan: _Plan):
  """Ranking keys of ``per_weight(param, grad)``, computed where they are
  ranked (see :class:`jaxprune.criteria.Criterion`)."""
  def keys_of(w, g, m):
    return _selection.ranking_keys(per_weight(w, g), m)

  return [
      _selection.LazyKeys(keys_of, (w, g, m)) for w, g, m in zip(
          _prunable_leaves(params, plan), _prunable_leaves(grads, plan),
          _mask_leaves(masks))
  ]


def _mask_gradients(masks, grads):
  return jax.tree.map(
      lambda m, g: g if m is None else jnp.where(m, g, jnp.zeros_like(g)),
      masks,
      grads,
      is_leaf=lambda x: x is None,
  )


def _zero_pruned_params(masks, updates, params):
  """Updates that leave ``params + updates`` exactly 0 where the mask is False."""
  return jax.tree.map(
      lambda m, u, p: u if m is None else jnp.where(m, u, -p.astype(u.dtype)),
      masks,
      updates,
      params,
      is_leaf=lambda x: x is None,
  )


def _require_params(params, name: str) -> None:
  if params is None:
    raise ValueError(
        f"jaxprune.{name} needs the current params: call "
        "tx.update(grads, opt_state, params)"
    )


def _all_kept(plan: _Plan, params):
  """Masks that keep everything: True for prunable leaves, None elsewhere."""
  return jax.tree.map(
      lambda flag, p: jnp.ones_like(p, dtype=jnp.bool_) if flag else None,
      plan.prunable,
      params,
  )


def _check_masks(params, masks, plan: _Plan,
                 what: str = "the masks in the optimizer state") -> None:
  """Raises ``ValueError`` unless ``masks`` fit ``params``."""
  expected_masks = jax.tree.map(
      lambda flag, p: p if flag else None, plan.prunable, params
  )
  _trees.check_same_structure(expected_masks, masks, what)
  for path, mask, leaf in zip(
      plan.paths, _mask_leaves(masks), _prunable_leaves(params, plan)
  ):
    if jnp.shape(mask) != jnp.shape(leaf):
      raise ValueError(
          f"the mask of {_trees.path_string(path)} has shape {jnp.shape(mask)} "
          f"but the param has shape {jnp.shape(leaf)}"
      )


def apply_masks(params: Any, masks: Any) -> Any:
  """``params`` with the weights that ``masks`` prune set to exactly 0.

  Example:
    >>> import jax.numpy as jnp
    >>> import jaxprune
    >>> params = {'w': jnp.array([1.0, -2.0, 3.0]), 'b': jnp.ones(1)}
    >>> masks = {'w': jnp.array([True, False, True]), 'b': None}
    >>> jaxprune.apply_masks(params, masks)['w']
    Array([1., 0., 3.], dtype=float32)

  Args:
    params: the parameter tree.
    masks: a tree with the structure of ``params``: a boolean array of the
      leaf's shape (True = kept) or ``None`` (not pruned) for every leaf, as
      :func:`jaxprune.masks_of` and :func:`jaxprune.snip` return.

  Raises:
    ValueError: if the trees or a leaf's shape do not match.
  """
  is_none = lambda x: x is None
  _trees.check_same_structure(
      jax.tree.map(lambda _: 0, params), jax.tree.map(
          lambda m: 0, masks, is_leaf=is_none), "the masks")

  def masked(p, m):
    if m is None:
      return p
    if jnp.shape(m) != jnp.shape(p):
      raise ValueError(
          f"a mask of shape {jnp.shape(m)} cannot mask a param of shape "
          f"{jnp.shape(p)}")
    return jnp.where(m, p, jnp.zeros_like(p))

  return jax.tree.map(masked, params, masks, is_leaf=is_none)


def _initial_masks(masks, params, plan: _Plan, caller: str = "jaxprune.prune"):
  """The user's initial masks, checked against the params, as bool arrays."""
  _check_masks(params, masks, plan, what=(
      f"the masks given to {caller} (a boolean array for every prunable leaf, "
      "None for the others)"))
  for path, mask in zip(plan.paths, _mask_leaves(masks)):
    if jnp.result_type(mask) != jnp.bool_:
      raise TypeError(
          f"the initial mask of {_trees.path_string(path)} has dtype "
          f"{jnp.result_type(mask)}; masks are boolean (True = kept)")
  return jax.tree.map(
      lambda m, p: None if m is None else _sharding.placed_like(m, p),
      masks, params, is_leaf=lambda x: x is None)


def prune(
    inner: optax.GradientTransformation,
    *,
    criterion: criteria_lib.Criterion | None = None,
    schedule: schedules_lib.Schedule | None = None,
    allocation: str = "global",
    prunable: _trees.PrunablePredicate | None = None,
    seed: int = 0,
    masks: Any = None,
    packed_masks: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """Wraps ``inner`` so that it prunes the params on a schedule.

  At every step where ``schedule`` raises the target sparsity, the masks are
  recomputed inside the jitted update: ``criterion`` scores the weights, the
  scores of already-pruned weights are ignored, and exactly the required
  number of weights is kept per ranked group (ties broken by flat index).
  At every step the gradients of pruned weights are zeroed before ``inner``
  sees them, and its updates are masked so that ``params + updates`` is
  exactly 0.0 where a mask is False, whatever ``inner`` does (momentum,
  Adam moments, decoupled weight decay).  No second call is needed after
  ``optax.apply_updates``.

  Selection rules:

  - A group of ``n`` weights at sparsity ``s`` keeps ``n - round(s * n)``
    (Python's round, half to even), and at least one weight while
    ``s < 1``.  Groups are all prunable weights for ``"global"`` and
    ``"global_topk"``, each tensor for ``"layerwise"`` and ``"erk"``.
  - No tensor is emptied unless the sparsity is 1: in the per-tensor
    allocations a tensor keeps at least one weight; under ``"global"`` each
    tensor's best surviving weight is always kept, and a global sparsity
    that leaves fewer weights than tensors raises at ``init``.  The
    exception is ``"global_topk"``, plain top-k as in the papers' SNIP,
    under which a tensor can lose every weight (layer collapse).
  - A pruned weight stays pruned.  A NaN score ranks below every real score
    and is counted in ``PruneState.nan_scores``.

  NaN or inf in the gradients or scores cannot raise inside jit; what
  happens instead:

  - The masks keep the exact counts whatever the scores: NaN ranks below
    every real score (and is counted, as above), an infinite score ranks as
    a number.
  - The gradients of pruned weights are replaced (not multiplied) by 0
    before ``inner`` sees them, and their updates are ``-params``, so a
    weight pruned while finite stays exactly 0.0, and ``inner``'s state for
    it finite, whatever the gradients hold.
  - A kept weight that a NaN gradient reaches becomes NaN, as under any
    optax optimizer.  Magnitude ranks it last at the next mask update, but
    no update can turn NaN into 0 (``NaN + u`` is NaN): it stays NaN in the
    params after it is pruned (:func:`apply_masks` zeroes it).  To skip the
    steps whose gradients are not finite, wrap the whole transformation:
    ``optax.apply_if_finite(prune(...), max_consecutive_errors=...)``.

  Masks found before training (:func:`jaxprune.snip`,
  :func:`jaxprune.snip_it`) are kept through training with
  ``prune(inner, masks=masks)`` (no schedule: they never change), or refined
  further by a schedule, which then starts from them.

  Args:
    inner: any optax transformation, e.g. ``optax.adamw(1e-3)``.
    criterion: ``(params, grads, key) -> scores``, e.g.
      :func:`jaxprune.criteria.magnitude`; required with a schedule.
    schedule: a :class:`jaxprune.schedules.Schedule`; ``None`` keeps the
      initial masks unchanged.
    allocation: ``"global"``, ``"global_topk"``, ``"layerwise"`` or
      ``"erk"``.
    prunable: ``(path, leaf) -> bool`` selecting the leaves to prune; by
      default floating leaves with ``ndim >= 2`` (dense and conv kernels).
    seed: seeds the key given to the criterion.
    masks: the initial masks, a tree with the structure of the params holding
      a boolean array (True = kept) for every prunable leaf and ``None``
      elsewhere, as :func:`jaxprune.snip` returns; by default all kept.  The
      weights they prune are zeroed by the first update (zero them before
      the first forward pass with :func:`jaxprune.apply_masks`).
    packed_masks: hold the masks in the state packed eight to a byte along
      each tensor's last axis (:class:`jaxprune.PackedMask`): one bit of
      state per prunable weight instead of one byte, and less to read at
      every step (the step unpacks them inside the loops that use them).
      The pruning is the same; :func:`jaxprune.masks_of` returns booleans
      either way.  A tensor whose last axis ``init`` sees split over
      devices into parts that are not multiples of 8 keeps a boolean mask
      (packing it would gather it at each mask update).  ``update`` keeps
      whatever form the state's masks have.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; its ``update`` needs
    ``params`` and forwards extra arguments to ``inner``.

  Raises:
    ValueError: unknown allocation; at ``init``: a predicate that selects
      nothing, NaN or inf in prunable params, a global sparsity that would
      empty a tensor; at ``update``: trees that do not match.
    TypeError: a schedule that is not a ``Schedule``, a criterion that is not
      callable, a non-integer seed; at ``init``: non-float prunable leaves,
      masks that are not boolean, a predicate that returns no bool; at
      ``update``: a state that is not a :class:`PruneState`.
  """
  _allocation.check_allocation(allocation)
  if schedule is None:
    if criterion is not None:
      raise ValueError(
          "jaxprune.prune got a criterion but no schedule, so the criterion "
          "would never be used; pass a schedule, or drop the criterion to "
          "keep fixed masks")
    schedule = schedules_lib.Schedule((), ())
    criterion = criteria_lib.magnitude  # never called: the schedule is empty
  elif criterion is None:
    raise ValueError("jaxprune.prune got a schedule but no criterion")
  if not isinstance(schedule, schedules_lib.Schedule):
    raise TypeError(
        "schedule must be a jaxprune.schedules.Schedule (one_shot, "
        f"polynomial, constant or piecewise), got {type(schedule).__name__}"
    )
  if not callable(criterion):
    raise TypeError(f"criterion must be callable, got {criterion!r}")
  if not callable(getattr(criterion, "per_weight", callable)):
    raise TypeError(
        "criterion.per_weight must be a (param, grad) -> score function, got "
        f"{criterion.per_weight!r}")
  if prunable is not None and not callable(prunable):
    raise TypeError(f"prunable must be a (path, leaf) -> bool function, got {prunable!r}")
  if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
    raise TypeError(f"seed must be an integer, got {seed!r}")
  if not isinstance(packed_masks, (bool, np.bool_)):
    raise TypeError(f"packed_masks must be True or False, got {packed_masks!r}")
  inner = optax.with_extra_args_support(inner)

  def plan_for(params) -> _Plan:
    return _make_plan(params, prunable, schedule, allocation)

  def initial_masks(plan: _Plan, params):
    start = (_all_kept(plan, params) if masks is None
             else _initial_masks(masks, params, plan))
    return _packing.pack_tree(start, params) if packed_masks else start

  def init_fn(params):
    plan = plan_for(params)
    _check_finite(params, plan)
    return PruneState(
        step=jnp.zeros((), jnp.int32),
        level=jnp.full((), -1, jnp.int32),
        masks=initial_masks(plan, params),
        key=jax.random.key_data(jax.random.key(seed)),
        nan_scores=jnp.zeros((), jnp.int32),
        inner_state=inner.init(params),
    )

  def refreshed_masks(state: PruneState, params, grads, plan: _Plan, level):
    kept = jnp.asarray(plan.kept)[level]
    per_weight = getattr(criterion, "per_weight", None)
    if per_weight is not None:
      keys = _per_weight_keys(per_weight, params, grads, state.masks, plan)
      return _ranked_masks(keys, state.masks, plan, allocation, kept)
    key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
    scores = criterion(params, grads, key)
    return selected_masks(scores, state.masks, plan, allocation, kept)

  def update_fn(updates, state, params=None, **extra_args):
    _require_params(params, "prune")
    _trees.check_state_type(state, PruneState, "jaxprune.prune")
    _trees.check_same_shapes(params, updates, "the updates (gradients)")
    plan = plan_for(params)
    _check_masks(params, _packing.unpack_tree(state.masks), plan)
    stored_masks, nan_scores = state.masks, state.nan_scores
    if schedule.steps:
      level = schedule.level(state.step)

      def refresh(masks_and_count):
        masks = _packing.unpack_tree(masks_and_count[0])
        masks, count = refreshed_masks(
            state._replace(masks=masks), params, updates, plan, level)
        return _packing.packed_like(masks, masks_and_count[0]), count

      stored_masks, nan_scores = _apply_if(
          level > state.level, refresh, (state.masks, state.nan_scores))
      new_level = jnp.maximum(level, state.level)
    else:
      new_level = state.level
    masks = _packing.unpack_tree(stored_masks)
    inner_updates, inner_state = inner.update(
        _mask_gradients(masks, updates), state.inner_state, params, **extra_args
    )
    updates = _zero_pruned_params(masks, inner_updates, params)
    new_state = PruneState(
        step=optax.safe_increment(state.step),
        level=new_level,
        masks=stored_masks,
        key=state.key,
        nan_scores=nan_scores,
        inner_state=inner_state,
    )
    return updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
