"""The masked step that every masking transformation is built from.

:func:`masked` owns what all of them share: the masks in the optimizer
state (boolean, or packed eight to a byte), the mask refresh gated inside
the jitted update, the gradients of pruned weights zeroed before the inner
optimizer sees them, the inner update, and updates that leave every pruned
weight exactly 0.0.  A method (:class:`MaskingMethod`) supplies only what
is its own: its plan (what is pruned, how many each group keeps), when it
refreshes the masks and how many weights it then keeps, how it scores the
weights, and any state of its own.  :func:`jaxprune.prune` and
:func:`jaxprune.flipout` are built this way.

Example: a method that keeps the larger half of every kernel at step 1.

  >>> import jax, jax.numpy as jnp, optax
  >>> from typing import Any, NamedTuple
  >>> from jaxprune import _allocation, _masked, _plans, _selection
  >>> class HalfState(NamedTuple):
  ...   step: jax.Array
  ...   masks: Any
  ...   key: jax.Array
  ...   inner_state: Any
  >>> half = _masked.MaskingMethod(
  ...     caller="half", state_type=HalfState, keep_best=False,
  ...     plan=lambda params: _plans.leveled_plan(
  ...         params, None, "layerwise", [0.5], "half"),
  ...     refresh=lambda state, plan: (_masked.Refresh(
  ...         state.step == 1, jnp.asarray(plan.kept[0])), {}),
  ...     ranking_keys=lambda state, params, grads, masks, plan: [
  ...         _selection.ranking_keys(jnp.abs(w), m) for w, m in zip(
  ...             _plans.prunable_leaves(params, plan), jax.tree.leaves(masks))])
  >>> tx = _masked.masked(optax.sgd(0.0), half)
  >>> params = {'w': jnp.array([[1.0, -4.0], [3.0, 2.0]])}
  >>> state = tx.init(params)
  >>> for _ in range(2):
  ...   updates, state = tx.update(jax.tree.map(jnp.zeros_like, params),
  ...                              state, params)
  ...   params = optax.apply_updates(params, updates)
  >>> params['w']
  Array([[ 0., -4.],
         [ 3.,  0.]], dtype=float32)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from jaxprune import _checks
from jaxprune import _masks
from jaxprune import _nnx
from jaxprune import _packing
from jaxprune import _plans
from jaxprune import _selection
from jaxprune import _trees


def apply_if(predicate: jax.Array, fn: Callable[[Any], Any], operand: Any) -> Any:
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


def ranked_masks(keys: Sequence[Any], masks: Any, plan: _plans.Plan,
                 kept: jax.Array, keep_best: bool) -> tuple[Any, jax.Array]:
  """The masks that keep the ``kept[g]`` highest ``keys`` of each group
  (of units, under the plan's structure).

  Args:
    keys: one per prunable leaf, ``uint32`` arrays from
      :func:`_selection.ranking_keys` or :class:`_selection.LazyKeys`.
    masks: the current masks (the survivors); the new ones are a subset.
    plan: what is pruned and how it is grouped.
    kept: int32, the number of weights each group keeps.
    keep_best: keep every tensor's best surviving weight whatever its rank.

  Returns:
    The new masks and the number of survivors whose score was NaN.
  """
  old = _masks.mask_leaves(masks)
  if plan.structure is not None:
    new, nan_scores = plan.structure.select(
        keys, old, plan.group_ids, plan.group_sizes, kept, keep_best)
    return jax.tree.unflatten(jax.tree.structure(masks), new), nan_scores
  selection = _selection.keep_top_k(keys, plan.group_ids, plan.group_sizes,
                                    kept, keep_best=keep_best)
  new = [k & m for k, m in zip(selection.kept, old)]
  nan_scores = jnp.sum(selection.nan_counts)
  return jax.tree.unflatten(jax.tree.structure(masks), new), nan_scores


def elementwise_keys(score: Callable[..., jax.Array], masks: Any,
                     *leaves: Sequence[jax.Array]) -> list[Any]:
  """Ranking keys of ``score(*arrays)``, elementwise, for each prunable leaf:
  ``leaves`` are lists with one array per prunable leaf (the params, their
  gradients, ...).  The keys are computed a slice at a time where they are
  ranked (:class:`_selection.LazyKeys`), never all at once."""
  def keys_of(*arrays):
    *inputs, mask = arrays
    return _selection.ranking_keys(score(*inputs), mask)

  return [_selection.LazyKeys(keys_of, (*arrays, mask)) for *arrays, mask
          in zip(*leaves, _masks.mask_leaves(masks))]


def step_key(state: Any) -> jax.Array:
  """The key of this update: the state's key folded with its step."""
  return jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)


def score_keys(scores: Any, masks: Any, plan: _plans.Plan) -> list[Any]:
  """The ranking keys of a criterion's ``scores`` (a tree with the
  structure of the params), checked against the masks' shapes."""
  _trees.check_same_structure(plan.prunable, scores, "the criterion's scores")
  old = _masks.mask_leaves(masks)
  new_scores = _plans.prunable_leaves(scores, plan)
  for path, score, mask in zip(plan.paths, new_scores, old):
    if jnp.shape(score) != mask.shape:
      raise ValueError(
          f"the criterion's score for {_trees.path_string(path)} has shape "
          f"{jnp.shape(score)}, expected {mask.shape}"
      )
  return [_selection.LazyKeys(_selection.ranking_keys, (s, m))
          for s, m in zip(new_scores, old)]


def selected_masks(scores: Any, masks: Any, plan: _plans.Plan,
                   allocation: str, kept: jax.Array) -> tuple[Any, jax.Array]:
  """The masks that keep the ``kept[g]`` best-scoring surviving weights of
  each group; under ``"global"`` every tensor's best survivor is kept.

  Returns:
    The new masks and the number of survivors whose score was NaN.
  """
  return ranked_masks(score_keys(scores, masks, plan), masks, plan, kept,
                      keep_best=allocation == "global")


class Refresh(NamedTuple):
  """A method's answer to "refresh the masks at this update?".

  Attributes:
    due: bool scalar, recompute the masks at this update.
    kept: int32 ``[groups]``, how many weights each group then keeps.
  """

  due: jax.Array
  kept: jax.Array


State = Any
Fields = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class MaskingMethod:
  """What a masking transformation supplies to :func:`masked`.

  The state type is a NamedTuple with the fields ``step`` (int32),
  ``masks``, ``key`` (uint32 key data) and ``inner_state``, which
  :func:`masked` fills, optionally ``nan_scores`` (int32, the NaN scores
  counted at the last refresh), and the method's own fields, which the
  method fills.

  Attributes:
    caller: the public name, for error messages (``"jaxprune.prune"``).
    state_type: the state NamedTuple.
    plan: ``params -> Plan``: what is pruned and how it is grouped.
    keep_best: at a refresh, keep every tensor's best surviving weight.
    refresh: ``(state, plan) -> (Refresh or None, fields)``: when the masks
      change and how many each group keeps (None: never), and the method's
      fields after this update.
    ranking_keys: ``(state, params, grads, masks, plan) -> keys``, one
      ``uint32`` array or :class:`_selection.LazyKeys` per prunable leaf
      (the masks given are boolean).
    init_fields: ``(params, plan) -> fields``, the method's own fields at
      ``init``.
    check_state: ``(state, params, plan) -> None``, raises on a state that
      does not fit the params (beyond the masks, which are checked anyway).
    perturb_gradients: ``(state, grads) -> grads``, applied to the masked
      gradients (which are masked again after it).
    after_update: ``(state, masks, updates, params) -> fields``, the
      method's fields computed from the final updates.
  """

  caller: str
  state_type: type
  plan: Callable[[Any], _plans.Plan]
  keep_best: bool
  refresh: Callable[[State, _plans.Plan], tuple[Refresh | None, Fields]]
  ranking_keys: Callable[..., list[Any]]
  init_fields: Callable[[Any, _plans.Plan], Fields] = lambda params, plan: {}
  check_state: Callable[[State, Any, _plans.Plan], None] | None = None
  perturb_gradients: Callable[[State, Any], Any] | None = None
  after_update: Callable[[State, Any, Any, Any], Fields] | None = None


def masked(
    inner: optax.GradientTransformation,
    method: MaskingMethod,
    *,
    masks: Any = None,
    packed_masks: bool = False,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
  """``inner`` wrapped in the masked step of ``method``.

  Args:
    inner: any optax transformation.
    method: what the masking method supplies.
    masks: the initial masks (boolean, True = kept, None for leaves that are
      not pruned), checked against the params at ``init``; by default all
      kept.
    packed_masks: hold the masks packed eight to a byte along each tensor's
      last axis where that is possible (see :class:`jaxprune.PackedMask`).
    seed: seeds the key held in the state.

  Returns:
    The transformation; its ``update`` needs ``params`` and forwards extra
    arguments to ``inner``.
  """
  _checks.check_seed(seed)
  _checks.check_flag("packed_masks", packed_masks)
  inner = optax.with_extra_args_support(inner)
  counts_nan = "nan_scores" in method.state_type._fields

  def init_fn(params):
    # Under nnx.Optimizer, init sees the params in their nnx.Param wrappers
    # and update without them: the masks and the method's fields are made
    # from the bare values, so that both see the same trees.
    values = _nnx.without_variables(params)
    plan = method.plan(values)
    _plans.check_finite(values, plan, method.caller)
    start = (_masks.all_kept(plan, values) if masks is None else
             _masks.checked_initial_masks(masks, values, plan, method.caller))
    fields = dict(
        step=jnp.zeros((), jnp.int32),
        masks=_packing.pack_tree(start, values) if packed_masks else start,
        key=jax.random.key_data(jax.random.key(seed)),
        inner_state=inner.init(params),
        **method.init_fields(values, plan),
    )
    if counts_nan:
      fields["nan_scores"] = jnp.zeros((), jnp.int32)
    return method.state_type(**fields)

  def update_fn(updates, state, params=None, **extra_args):
    _checks.require_params(params, method.caller)
    _trees.check_state_type(state, method.state_type, method.caller)
    _trees.check_same_shapes(params, updates, "the updates (gradients)")
    plan = method.plan(params)
    _masks.check_masks(params, _packing.unpack_tree(state.masks), plan)
    if method.check_state is not None:
      method.check_state(state, params, plan)
    refresh, fields = method.refresh(state, plan)
    stored = state.masks
    nan_scores = state.nan_scores if counts_nan else jnp.zeros((), jnp.int32)
    if refresh is not None:

      def refreshed(operand):
        packed, _ = operand
        current = _packing.unpack_tree(packed)
        keys = method.ranking_keys(state, params, updates, current, plan)
        new, count = ranked_masks(keys, current, plan, refresh.kept,
                                  method.keep_best)
        return _packing.packed_like(new, packed), count

      stored, nan_scores = apply_if(refresh.due, refreshed,
                                    (stored, nan_scores))
    current = _packing.unpack_tree(stored)
    grads = _masks.mask_gradients(current, updates)
    if method.perturb_gradients is not None:
      grads = _masks.mask_gradients(
          current, method.perturb_gradients(state, grads))
    inner_updates, inner_state = inner.update(
        grads, state.inner_state, params, **extra_args)
    updates = _masks.zero_pruned_params(current, inner_updates, params)
    if method.after_update is not None:
      fields = {**fields,
                **method.after_update(state, current, updates, params)}
    if counts_nan:
      fields["nan_scores"] = nan_scores
    new_state = state._replace(
        step=optax.safe_increment(state.step),
        masks=stored,
        inner_state=inner_state,
        **fields,
    )
    return updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
