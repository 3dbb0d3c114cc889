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

from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxprune import _allocation
from jaxprune import _checks
from jaxprune import _inspect
from jaxprune import _masked
from jaxprune import _plans
from jaxprune import _structures
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
    structure: _structures.Structure | None = None,
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

  Gradient accumulation with ``optax.MultiSteps`` works in either order,
  and pruned weights are exactly 0.0 after every micro-step in both; what
  the schedule counts differs.  ``optax.MultiSteps(prune(inner, ...), k)``
  runs ``prune`` once per ``k`` micro-steps, on their mean gradient: the
  schedule counts optimizer steps (its step ``s`` is micro-step
  ``k * s + k - 1``).  ``prune(optax.MultiSteps(inner, k), ...)`` runs
  ``prune`` at every micro-step: the schedule counts micro-steps, a mask
  update may fall inside an accumulation window (the weights it prunes are
  zeroed at once), and a gradient criterion sees that micro-batch's
  gradient only.

  Masks found before training (:func:`jaxprune.snip`,
  :func:`jaxprune.snip_it`) are kept through training with
  ``prune(inner, masks=masks)`` (no schedule: they never change), or refined
  further by a schedule, which then starts from them.

  Args:
    inner: any optax transformation, e.g. ``optax.adamw(1e-3)``.
    criterion: ``(params, grads, key) -> scores``, e.g.
      :func:`jaxprune.criteria.magnitude`; required with a schedule.
    schedule: a :class:`jaxprune.schedules.Schedule`; ``None`` (with
      ``masks``) keeps the initial masks unchanged.
    allocation: ``"global"``, ``"global_topk"``, ``"layerwise"`` or
      ``"erk"``.
    prunable: ``(path, leaf) -> bool`` selecting the leaves to prune; by
      default floating leaves with ``ndim >= 2`` (dense and conv kernels).
    seed: seeds the key given to the criterion.
    masks: the initial masks, a tree with the structure of the params holding
      a boolean array (True = kept) for every prunable leaf and ``None``
      elsewhere, as :func:`jaxprune.snip` returns; with a schedule, all
      kept by default, and required without one.  The
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
    structure: what is kept or pruned whole: N:M groups
      (:func:`jaxprune.structures.n_of_m`), blocks
      (:func:`jaxprune.structures.block`) or output channels
      (:func:`jaxprune.structures.channels`); by default single weights.
      With blocks and channels the counts above are counts of units.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; its ``update`` needs
    ``params`` and forwards extra arguments to ``inner``.

  Raises:
    ValueError: unknown allocation; neither a criterion and a schedule nor
      masks (nothing would ever be pruned); at ``init``: a predicate that selects
      nothing, NaN or inf in prunable params, a global sparsity that would
      empty a tensor; at ``update``: trees that do not match.
    TypeError: a schedule that is not a ``Schedule``, a criterion that is not
      callable, a non-integer seed; at ``init``: non-float prunable leaves,
      masks that are not boolean, a predicate that returns no bool; at
      ``update``: a state that is not a :class:`PruneState`.
  """
  _allocation.check_allocation(allocation)
  if schedule is None and criterion is None and masks is None:
    raise ValueError(
        "jaxprune.prune got no criterion, no schedule and no masks, so it "
        "would never prune; pass a criterion and a schedule to prune during "
        "training (criterion=jaxprune.criteria.magnitude, "
        "schedule=jaxprune.schedules.polynomial(...)), or masks= to keep "
        "fixed masks (e.g. from jaxprune.snip)")
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
  per_weight = criteria_lib.per_weight_form(criterion)
  _checks.check_prunable(prunable)
  _structures.check_structure(structure, "jaxprune.prune")
  if structure is not None:
    structure.check_sparsities(schedule.sparsities, "jaxprune.prune")

  def plan(params) -> _plans.Plan:
    return _plans.leveled_plan(params, prunable, allocation,
                               schedule.sparsities, "jaxprune.prune",
                               structure=structure)

  def refresh(state: PruneState, plan: _plans.Plan):
    if not schedule.steps:  # fixed masks
      return None, {}
    level = schedule.level(state.step)
    due = level > state.level
    kept = jnp.asarray(plan.kept)[level]
    return _masked.Refresh(due, kept), {"level": jnp.maximum(level, state.level)}

  def ranking_keys(state: PruneState, params, grads, masks, plan: _plans.Plan):
    if per_weight is not None:
      return _masked.elementwise_keys(
          per_weight, masks, _plans.prunable_leaves(params, plan),
          _plans.prunable_leaves(grads, plan))
    scores = criterion(params, grads, _masked.step_key(state))
    return _masked.score_keys(scores, masks, plan)

  method = _masked.MaskingMethod(
      caller="jaxprune.prune",
      state_type=PruneState,
      plan=plan,
      keep_best=allocation == "global",
      refresh=refresh,
      ranking_keys=ranking_keys,
      init_fields=lambda params, plan: {"level": jnp.full((), -1, jnp.int32)},
  )
  return _masked.masked(inner, method, masks=masks, packed_masks=packed_masks,
                        seed=seed)
