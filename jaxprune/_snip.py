"""SNIP and SNIP-it: pruning before training by connection sensitivity.

SNIP (Lee et al. 2019) scores every weight by its connection sensitivity
``|g * w|``, with ``g`` the gradient of the loss over a few batches, and keeps
the best ones in one shot.  SNIP-it (Verdenius et al. 2020) reaches the same
sparsity in rounds of :func:`jaxprune.schedules.geometric_rounds` sparsity,
recomputing the sensitivity of the surviving network before each round; at
high sparsity this avoids SNIP's disconnected layers.

Both return masks (True = kept) for the prunable leaves.  Training keeps them
with ``jaxprune.prune(inner, masks=masks)``; :func:`jaxprune.apply_masks`
zeroes the pruned weights before the first forward pass.

SNIP-it during training, as its authors run it, is one :func:`snip` round
per pruning event, on fresh batches in evaluation mode, from the current
weights and masks, put into the optimizer state by
:func:`jaxprune.replace_masks` (the optimizer state is kept):

  for step in range(num_steps):
    if step in schedule.steps:  # schedules.geometric(...)
      k = schedule.sparsities[schedule.steps.index(step)]
      masks = snip(eval_loss, params, next_five_batches, sparsity=k,
                   masks=jaxprune.masks_of(opt_state))
      opt_state = jaxprune.replace_masks(opt_state, masks)
      params = jaxprune.apply_masks(params, masks)
    ...  # the train step, with jaxprune.prune(inner, masks=all_true)

Example:
  >>> import jax, jax.numpy as jnp
  >>> import jaxprune
  >>> params = {'w': jax.random.normal(jax.random.key(0), (8, 4))}
  >>> x = jax.random.normal(jax.random.key(1), (32, 8))
  >>> batches = [(x, x[:, :4] * 2.0)]
  >>> def loss_fn(params, batch):
  ...   inputs, targets = batch
  ...   return jnp.mean((inputs @ params['w'] - targets) ** 2)
  >>> masks = jaxprune.snip_it(loss_fn, params, batches, sparsity=0.75)
  >>> int(masks['w'].sum())  # exactly 25% of 32 weights kept
  8
  >>> params = jaxprune.apply_masks(params, masks)

References:
  Lee, Ajanthan and Torr, "SNIP: Single-shot network pruning based on
  connection sensitivity", ICLR 2019, https://arxiv.org/abs/1810.02340

  Verdenius, Stol and Forre, "Pruning via Iterative Ranking of Sensitivity
  Statistics", 2020, https://arxiv.org/abs/2006.00896
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxprune import _allocation
from jaxprune import _checks
from jaxprune import _masked
from jaxprune import _masks
from jaxprune import _nnx
from jaxprune import _plans
from jaxprune import _scoring
from jaxprune import _trees
from jaxprune import schedules

LossFn = Callable[[Any, Any], jax.Array]


def sensitivity(loss_fn: LossFn, params: Any, batches: Sequence[Any]) -> Any:
  """The connection sensitivity ``|w * sum_b dL(w, b)/dw|`` of every weight.

  The gradients of ``loss_fn`` are summed over ``batches`` (the authors
  accumulate them the same way) and multiplied by the weights.  Run the
  model in evaluation mode inside ``loss_fn`` (batch norm on its running
  statistics), as both papers do.

  Example:
    >>> import jax.numpy as jnp
    >>> import jaxprune
    >>> loss_fn = lambda p, b: jnp.sum(p['w'] * b)
    >>> jaxprune.scores.sensitivity(loss_fn, {'w': jnp.array([2.0, -3.0])},
    ...                             [jnp.array([1.0, 1.0]), jnp.array([0.5, -2.0])])['w']
    Array([3., 3.], dtype=float32)

  Args:
    loss_fn: ``(params, batch) -> scalar loss``.
    params: the parameter tree.
    batches: a non-empty sequence of batches.

  Returns:
    A tree of float32 scores with the structure of ``params`` (whose leaves
    must all be floating, as ``jax.grad`` requires).

  Raises:
    ValueError: if ``batches`` is empty.
    TypeError: if ``batches`` is one array rather than a sequence of them.
  """
  loss_fn, params = _nnx.as_functional(loss_fn, params)
  _checks.check_batches(batches, "jaxprune.scores.sensitivity")
  batches = list(batches)
  if not batches:
    raise ValueError(
        "jaxprune.scores.sensitivity needs at least one batch, got none")
  total = None
  for batch in batches:
    grads = _scoring.jitted_gradient(loss_fn)(params, batch)
    total = grads if total is None else jax.tree.map(jnp.add, total, grads)
  return jax.tree.map(
      lambda w, g: jnp.abs(g.astype(jnp.float32) * w.astype(jnp.float32)),
      params, total)


def snip_it(
    loss_fn: LossFn,
    params: Any,
    batches: Iterable[Any],
    *,
    sparsity: float,
    steps: int = 5,
    batches_per_round: int = 5,
    allocation: str = "global",
    prunable: _trees.PrunablePredicate | None = None,
    masks: Any = None,
) -> Any:
  """SNIP-it before training: masks at ``sparsity``, found in rounds.

  Each round of :func:`jaxprune.schedules.geometric_rounds` ``(sparsity,
  steps)`` zeroes the pruned weights, recomputes :func:`sensitivity` over the
  round's batches and keeps exactly the required number of the surviving
  weights with the highest sensitivity (the counts and tie rules of
  :func:`jaxprune.prune`; under ``"global"`` allocation every tensor keeps
  its best weight, under ``"global_topk"`` a tensor can be emptied).  The
  weights are not re-initialised between rounds.

  Args:
    loss_fn: ``(params, batch) -> scalar loss``, with the model in evaluation
      mode.
    params: the parameter tree (at initialisation).
    batches: a sequence of batches, used whole in every round, or an
      iterator, which gives ``batches_per_round`` fresh batches per round.
    sparsity: the final fraction of prunable weights removed, in ``[0, 1]``.
    steps: the number of halvings after the first round (``S``; 5 in the
      paper).  ``steps=0`` with a sparsity above 0.5 prunes 0.5 then the
      target.
    batches_per_round: batches drawn per round from an iterator (5 in the
      paper).
    allocation: ``"global"`` (one ranking over all tensors, each keeping
      its best weight), ``"global_topk"`` (the papers' plain global top-k,
      which can empty a tensor), ``"layerwise"`` or ``"erk"``.
    prunable: ``(path, leaf) -> bool``; by default the floating leaves with
      ``ndim >= 2``.
    masks: masks to start from (their pruned weights stay pruned); by
      default all kept.

  Returns:
    A tree with the structure of ``params``: a boolean array (True = kept)
    for every prunable leaf, ``None`` for the others.

  Raises:
    ValueError: a sparsity outside ``[0, 1]``, no batches, an unknown
      allocation, a predicate selecting nothing, masks that do not fit the
      params, NaN or inf in a prunable leaf, a non-finite sensitivity.
    TypeError: a leaf of the params that is not floating-point (the loss is
      differentiated with respect to every leaf), masks that are not
      boolean.
  """
  rounds = schedules.geometric_rounds(
      _checks.check_sparsity(sparsity, "sparsity"), steps)
  return _prune_in_rounds("jaxprune.snip_it", sensitivity, loss_fn, params,
                          batches, rounds, batches_per_round, allocation,
                          prunable, masks)


def snip(
    loss_fn: LossFn,
    params: Any,
    batches: Iterable[Any],
    *,
    sparsity: float,
    batches_per_round: int = 5,
    allocation: str = "global",
    prunable: _trees.PrunablePredicate | None = None,
    masks: Any = None,
) -> Any:
  """SNIP: masks at ``sparsity`` from one sensitivity ranking.

  Example:
    >>> import jax.numpy as jnp
    >>> import jaxprune
    >>> params = {'w': jnp.array([[1.0, -2.0], [0.1, 3.0]]), 'b': jnp.ones(2)}
    >>> loss_fn = lambda p, x: jnp.sum(x @ p['w'] + p['b'][None])
    >>> jaxprune.snip(loss_fn, params, [jnp.ones((1, 2))],
    ...               sparsity=0.5)['w'].tolist()
    [[False, True], [False, True]]

  ``loss_fn``, ``params``, ``batches``, ``batches_per_round``,
  ``allocation``, ``prunable`` and ``masks`` are as in :func:`snip_it`.

  Args:
    sparsity: the fraction of prunable weights removed, in ``[0, 1]``.

  Returns:
    The masks, as :func:`snip_it` returns them.
  """
  rounds = (_checks.check_sparsity(sparsity, "sparsity"),)
  return _prune_in_rounds("jaxprune.snip", sensitivity, loss_fn, params,
                          batches, rounds, batches_per_round, allocation,
                          prunable, masks)


def gradient_flow(
    loss_fn: LossFn,
    params: Any,
    batches: Sequence[Any],
    *,
    prunable: _trees.PrunablePredicate | None = None,
    all_leaves: bool = False,
) -> Any:
  """GraSP's keep score ``w * (H g)``, with ``g`` and ``H`` summed over batches.

  GraSP (Wang et al. 2020) removes the weights whose removal reduces the
  gradient norm least: those with the largest ``-w * Hg``; this returns
  ``w * Hg``, so that keeping the highest scores is GraSP's rule.  The
  Hessian-gradient product is exact (forward-over-reverse), one per batch.
  The authors divide the logits by a temperature (200) inside the loss: do
  that in ``loss_fn`` to follow them.

  As in the authors' code, ``g`` and ``H`` are taken over the prunable
  leaves only: ``Hg`` is the product of the prunable block of the Hessian
  with the prunable part of the gradient, and the biases and other leaves
  that are not pruned take no part in it (their own scores are returned
  with the same ``Hg`` but mean nothing).  ``all_leaves=True`` takes both
  over every leaf instead: the directions of the biases then enter ``Hg``
  and change which weights are kept.

  Example:
    >>> import jax.numpy as jnp
    >>> import jaxprune
    >>> # L = (w1 + b)^2 / 2 + (w2 + 2b)^2 / 2: g_w = (3, -2), g_b = -1 at
    >>> # b = 0, the weights' Hessian block is the identity.
    >>> params = {'kernel': jnp.array([[3.0, -2.0]]), 'bias': jnp.zeros(1)}
    >>> def loss_fn(p, batch):
    ...   (w1, w2), b = p['kernel'][0], p['bias'][0]
    ...   return 0.5 * (w1 + b) ** 2 + 0.5 * (w2 + 2 * b) ** 2
    >>> jaxprune.scores.gradient_flow(loss_fn, params, [None])['kernel']  # w * g_w
    Array([[9., 4.]], dtype=float32)
    >>> jaxprune.scores.gradient_flow(loss_fn, params, [None],
    ...                               all_leaves=True)['kernel']  # w * (g_w + H_wb g_b)
    Array([[6., 8.]], dtype=float32)

  Args:
    loss_fn: ``(params, batch) -> scalar loss``.
    params: the parameter tree (floating leaves).
    batches: a non-empty sequence of batches.
    prunable: ``(path, leaf) -> bool``, the leaves whose directions enter
      ``g`` and ``H``; by default the floating leaves with ``ndim >= 2``.
    all_leaves: take ``g`` and ``H`` over every leaf, the prunable ones or
      not (not the authors' GraSP).

  Returns:
    A tree of float32 scores with the structure of ``params``.

  Raises:
    ValueError: no batches, or (unless ``all_leaves``) a predicate that
      selects no leaf.
  """
  loss_fn, params = _nnx.as_functional(loss_fn, params)
  _checks.check_batches(batches, "jaxprune.scores.gradient_flow")
  batches = list(batches)
  if not batches:
    raise ValueError(
        "jaxprune.scores.gradient_flow needs at least one batch, got none")
  grad = _scoring.jitted_gradient(loss_fn)
  g = functools.reduce(
      lambda a, b: jax.tree.map(jnp.add, a, b),
      (grad(params, batch) for batch in batches))
  if not all_leaves:
    # The authors differentiate with respect to the prunable weights only:
    # the other leaves' directions are zero in g, so Hg is H_ww g_w there.
    flags, _ = _trees.selected_leaves(params, prunable,
                                      "jaxprune.scores.gradient_flow", "scored")
    g = jax.tree.map(lambda flag, v: v if flag else jnp.zeros_like(v),
                     flags, g)
  hg = functools.reduce(
      lambda a, b: jax.tree.map(jnp.add, a, b),
      (_hessian_vector(loss_fn)(params, batch, g) for batch in batches))
  return jax.tree.map(
      lambda w, h: w.astype(jnp.float32) * h.astype(jnp.float32), params, hg)


@functools.lru_cache(maxsize=8)
def _hessian_vector(loss_fn: LossFn):
  def product(params, batch, vector):
    return jax.jvp(lambda p: jax.grad(loss_fn)(p, batch), (params,), (vector,))[1]
  return jax.jit(product)


def grasp(
    loss_fn: LossFn,
    params: Any,
    batches: Iterable[Any],
    *,
    sparsity: float,
    batches_per_round: int = 5,
    allocation: str = "global",
    prunable: _trees.PrunablePredicate | None = None,
    masks: Any = None,
    all_leaves: bool = False,
) -> Any:
  """GraSP: masks at ``sparsity`` that preserve the gradient flow.

  Keeps the weights with the highest :func:`gradient_flow` score, in one
  shot, with the counts and tie rules of :func:`jaxprune.prune`.  As in the
  authors' code, the gradient and the Hessian are taken over the prunable
  leaves only; ``all_leaves=True`` lets the biases and every other leaf
  enter the Hessian-gradient product (a deviation from the authors).

  Example:
    >>> import jax.numpy as jnp
    >>> import jaxprune
    >>> params = {'kernel': jnp.array([[3.0, -2.0]]), 'bias': jnp.zeros(1)}
    >>> def loss_fn(p, batch):  # see gradient_flow
    ...   (w1, w2), b = p['kernel'][0], p['bias'][0]
    ...   return 0.5 * (w1 + b) ** 2 + 0.5 * (w2 + 2 * b) ** 2
    >>> jaxprune.grasp(loss_fn, params, [None], sparsity=0.5)['kernel'].tolist()
    [[True, False]]
    >>> jaxprune.grasp(loss_fn, params, [None], sparsity=0.5,
    ...                all_leaves=True)['kernel'].tolist()
    [[False, True]]

  ``loss_fn``, ``params``, ``batches``, ``batches_per_round``,
  ``allocation``, ``prunable`` and ``masks`` are as in :func:`snip_it`.

  Args:
    sparsity: the fraction of prunable weights removed, in ``[0, 1]``.
    all_leaves: as in :func:`gradient_flow` (default False, the authors'
      GraSP).

  Returns:
    The masks, as :func:`snip_it` returns them.

  References:
    Wang, Zhang and Grosse, "Picking Winning Tickets Before Training by
    Preserving Gradient Flow", ICLR 2020, https://arxiv.org/abs/2002.07376
  """
  rounds = (_checks.check_sparsity(sparsity, "sparsity"),)
  score_fn = functools.partial(gradient_flow, prunable=prunable,
                               all_leaves=all_leaves)
  return _prune_in_rounds("jaxprune.grasp", score_fn, loss_fn, params,
                          batches, rounds, batches_per_round, allocation,
                          prunable, masks)


def _prune_in_rounds(caller, score_fn, loss_fn, params, batches, rounds,
                     batches_per_round, allocation, prunable, masks):
  """Masks from ``score_fn(loss_fn, masked params, batches)``, round by round."""
  if not callable(loss_fn):
    raise TypeError(f"{caller}: loss_fn must be callable, got {loss_fn!r}")
  loss_fn, params = _nnx.as_functional(loss_fn, params)
  if (isinstance(batches_per_round, bool)
      or not isinstance(batches_per_round, int) or batches_per_round < 1):
    raise ValueError(
        f"{caller}: batches_per_round must be a positive integer, got "
        f"{batches_per_round!r}")
  _allocation.check_allocation(allocation)
  plan = _plans.make_plan(
      params, prunable, allocation,
      lambda shapes, units: [
          _allocation.kept_counts(s, shapes, allocation) for s in rounds
      ],
      caller=caller,
  )
  _trees.check_differentiable(params, caller)
  _plans.check_finite(params, plan, caller)
  round_batches = _scoring.round_batches(batches, batches_per_round, caller)
  if masks is None:
    masks = _masks.all_kept(plan, params)
  else:
    masks = _masks.checked_initial_masks(masks, params, plan, caller)
  select = jax.jit(functools.partial(
      _masked.selected_masks, plan=plan, allocation=allocation))
  for level in range(len(rounds)):
    scores = score_fn(
        loss_fn, _masks.apply_masks(params, masks), round_batches())
    _scoring.check_scores(scores, plan, caller)
    masks, _ = select(scores, masks, kept=jnp.asarray(plan.kept[level]))
  return _nnx.plain(masks)
