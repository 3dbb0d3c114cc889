"""``flipout``: prunes the weights whose sign keeps flipping (FlipOut).

Apostol, Stol and Forre (2020), "FlipOut: Uncovering Redundant Weights via
Sign Flipping": a weight that oscillates around zero during training changes
sign often, and is redundant.  Every step counts the sign changes of every
prunable weight; every ``prune_every`` steps the weights of lowest
``|w|**p / (flips + 1)``, ranked over all prunable weights together, are
removed, a fixed fraction ``rate`` of the survivors at a time.

Example:
  >>> import jax, jax.numpy as jnp, optax
  >>> import jaxprune
  >>> params = {'w': jnp.array([[0.5, -2.0], [0.3, 1.0]]), 'b': jnp.ones(2)}
  >>> tx = jaxprune.flipout(optax.sgd(0.1), prune_every=2, rate=0.25, noise=0.0)
  >>> state = tx.init(params)
  >>> step = jax.jit(tx.update)
  >>> def train(params, state, steps):
  ...   for t in range(steps):  # w[0, 0] swings from 0.5 to -0.5 and back
  ...     grads = {'w': jnp.array([[10.0 * (-1) ** t, 0.0], [0.0, 0.0]]),
  ...              'b': jnp.zeros(2)}
  ...     updates, state = step(grads, state, params)
  ...     params = optax.apply_updates(params, updates)
  ...   return params, state
  >>> params, state = train(params, state, 2)
  >>> jaxprune.flip_counts(state)['w'].tolist()
  [[2, 0], [0, 0]]
  >>> params, state = train(params, state, 1)  # prunes 1 of 4 at step 2
  >>> jaxprune.masks_of(state)['w'].tolist()  # 0.5**2 / 3 < 0.3**2 / 1
  [[False, True], [True, True]]
  >>> params['w']
  Array([[ 0. , -2. ],
         [ 0.3,  1. ]], dtype=float32)
"""

from __future__ import annotations

import math
import numbers
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprune import _allocation
from jaxprune import _checks
from jaxprune import _inspect
from jaxprune import _masked
from jaxprune import _noise
from jaxprune import _packing
from jaxprune import _plans
from jaxprune import _structures
from jaxprune import _trees


class FlipOutSchedule(NamedTuple):
  """The authors' epoch schedule in steps (see :func:`flipout_schedule`).

  Attributes:
    prune_every: steps between pruning events, for :func:`flipout`.
    events: the number of pruning events that happen in the run.
    sparsity: ``flipout_sparsity(rate, events)``, the sparsity reached.
  """

  prune_every: int
  events: int
  sparsity: float


def flipout_sparsity(rate: float, events: int) -> float:
  """The sparsity after ``events`` pruning events: ``1 - (1 - rate)**events``.

  The exact counts of :func:`flipout` remove ``floor(rate * alive)`` weights
  per event, so a run keeps at least the weights this formula implies and
  fewer than ``1 / rate`` more (before ``final_sparsity`` or the one weight
  each tensor keeps come into play).

  Args:
    rate: the fraction of surviving weights removed per event, in (0, 1).
    events: the number of events, an integer >= 0.

  Returns:
    The fraction of prunable weights removed.

  Example:
    >>> import jaxprune
    >>> [round(jaxprune.flipout_sparsity(0.5, n), 4) for n in (2, 4, 10)]
    [0.75, 0.9375, 0.999]
  """
  _check_rate(rate)
  _checks.check_int("events", events, minimum=0)
  return 1.0 - (1.0 - rate) ** events


def flipout_schedule(
    steps_per_epoch: int, prune_every_epochs: int, epochs: int, rate: float = 0.5
) -> FlipOutSchedule:
  """Converts the authors' schedule, in epochs, into ``prune_every`` steps.

  The authors prune after every epoch ``e`` (counted from 1) with
  ``e % prune_every_epochs == 0``, except after the last epoch.  With
  ``prune_every = steps_per_epoch * prune_every_epochs``, :func:`flipout`
  prunes at the same points of a run of ``epochs * steps_per_epoch`` steps;
  the event after the last epoch would be at the update that never comes.

  Args:
    steps_per_epoch: updates per epoch, an integer >= 1.
    prune_every_epochs: epochs between pruning events, an integer >= 1.
    epochs: the length of the run in epochs, an integer >= 1.
    rate: the fraction of surviving weights removed per event, in (0, 1).

  Returns:
    A :class:`FlipOutSchedule`: ``prune_every``, the number of ``events`` in
    the run, ``(epochs - 1) // prune_every_epochs``, and the ``sparsity``
    they reach by :func:`flipout_sparsity`.

  Example:
    >>> import jaxprune
    >>> jaxprune.flipout_schedule(391, prune_every_epochs=32, epochs=350)
    FlipOutSchedule(prune_every=12512, events=10, sparsity=0.9990234375)
  """
  _checks.check_int("steps_per_epoch", steps_per_epoch, minimum=1)
  _checks.check_int("prune_every_epochs", prune_every_epochs, minimum=1)
  _checks.check_int("epochs", epochs, minimum=1)
  events = (epochs - 1) // prune_every_epochs
  return FlipOutSchedule(
      steps_per_epoch * prune_every_epochs,
      events,
      flipout_sparsity(rate, events),
  )


def flip_counts(opt_state: Any) -> Any:
  """The flip counters held in an optimizer state.

  Finds the :class:`FlipOutState` anywhere inside ``opt_state``, as
  :func:`jaxprune.masks_of` does.

  Args:
    opt_state: an optimizer state, or any pytree holding one.

  Returns:
    A tree with the structure of the params: the unsigned integer counters
    of every prunable leaf, ``None`` for the others.

  Raises:
    ValueError: if ``opt_state`` holds no FlipOut state, or more than one.
  """
  return _inspect.find_state(
      opt_state, lambda x: isinstance(x, FlipOutState), "flip_counts",
      "FlipOut state", "jaxprune.flipout",
  ).flips


def _check_rate(rate: Any) -> None:
  if isinstance(rate, bool) or not isinstance(rate, numbers.Real):
    raise TypeError(f"rate must be a number, got {rate!r}")
  if not 0.0 < rate < 1.0:
    raise ValueError(
        f"rate must be in (0, 1), the fraction of surviving weights removed "
        f"per pruning event; got {rate}"
    )


def _counter_dtype(max_steps: int | None) -> np.dtype:
  if max_steps is not None and max_steps <= np.iinfo(np.uint8).max:
    return np.dtype(np.uint8)
  if max_steps is None or max_steps <= np.iinfo(np.uint16).max:
    return np.dtype(np.uint16)
  return np.dtype(np.uint32)


def _power(x: jax.Array, p: jax.typing.ArrayLike) -> jax.Array:
  """``x ** p``, by repeated multiplication for a small integer ``p``."""
  if not isinstance(p, jax.core.Tracer):
    exponent = float(np.asarray(p))
    if exponent.is_integer() and exponent <= 64:
      return jax.lax.integer_pow(x, int(exponent))
  return x ** p


def _kept_after_events(
    total: int, tensors: int, rate: float, final_sparsity: float | None
) -> list[int]:
  """Weights alive after 0, 1, 2, ... events, until the count stops changing.

  Each event removes ``floor(rate * alive)``, down to the target
  ``total - round(final_sparsity * total)`` (at least one weight,
  :func:`_allocation.kept_in_group`) and never below one weight per tensor.
  """
  floor = tensors
  if final_sparsity is not None:
    target = _allocation.kept_in_group(final_sparsity, total)
    if target < tensors:
      raise ValueError(
          f"final_sparsity {final_sparsity} keeps {target} of {total} weights, "
          f"fewer than the {tensors} prunable tensors: some tensor would be "
          "emptied. Lower final_sparsity."
      )
    floor = target
  kept = [total]
  while True:
    alive = kept[-1]
    after = max(alive - math.floor(rate * alive), floor)
    if after >= alive:
      return kept
    kept.append(after)


@_inspect.register_mask_state
class FlipOutState(NamedTuple):
  """State of :func:`flipout`.

  Attributes:
    step: int32, the number of updates applied so far.
    masks: a tree with the structure of the params: a boolean array (True =
      kept) for every prunable leaf, ``None`` for the others; a
      :class:`jaxprune.PackedMask` instead of the array with
      ``flipout(..., packed_masks=True)`` (read them with
      :func:`jaxprune.masks_of`).
    flips: the same tree of unsigned integer arrays: how many times each
      surviving weight has changed sign since ``init`` (0 for pruned
      weights).  Saturates at the dtype's maximum (see :func:`flipout`).
    events: int32, the number of pruning dates passed, including those that
      removed nothing because ``final_sparsity`` was already reached.
    key: uint32 key data; the gradient noise of step ``t`` is drawn from
      ``fold_in(key, t)``.
    inner_state: the state of the wrapped optimizer.
  """

  step: jax.Array
  masks: Any
  flips: Any
  events: jax.Array
  key: jax.Array
  inner_state: optax.OptState


def flipout(
    inner: optax.GradientTransformation,
    *,
    prune_every: int,
    rate: float = 0.5,
    p: jax.typing.ArrayLike = 2.0,
    noise: jax.typing.ArrayLike = 1.0,
    final_sparsity: float | None = None,
    prunable: _trees.PrunablePredicate | None = None,
    seed: int = 0,
    max_steps: int | None = None,
    packed_masks: bool = False,
    structure: _structures.Pooled | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Wraps ``inner`` so that it prunes by FlipOut as it trains.

  Every update, in this order:

  1. Pruning event, at the update whose step counter ``t`` is a positive
     multiple of ``prune_every`` (``params`` are then the weights at the end
     of a period): every surviving prunable weight is scored
     ``|w|**p / (flips + 1)``, ranked over all prunable weights together
     (ties by flat index), and ``floor(rate * alive)`` more weights are
     pruned, ``alive`` being the number still alive.  Pruned weights never
     come back.  Once ``final_sparsity`` is reached (the event that would
     overshoot it prunes only up to ``round(final_sparsity * N)`` of the
     ``N`` prunable weights), later events prune nothing.  Each tensor
     keeps its best surviving weight, so no tensor is emptied: a
     ``final_sparsity`` that leaves fewer weights than tensors raises at
     ``init``, and without ``final_sparsity`` the events stop at one weight
     per tensor.  The kept counts are computed on the host, exactly.
  2. Gradient noise (the authors' recipe, ``noise = 1``): the gradients of
     pruned weights are zeroed, then for every parameter tensor ``P`` with
     a floating gradient, biases and norm scales included,
     ``g_P += noise * (||g_P||_2 / sqrt(numel(P))) * N(0, I)``, drawn from
     ``fold_in(key, t)``.  As in the authors' code, the norm is that of the
     masked gradient and ``numel`` counts pruned weights too.  The normal
     draws come from a keyed integer hash of each entry's index rather
     than from ``jax.random.normal``, 2 to 5 times faster on CPU, where
     the threefry cipher cost more than a LeNet-300-100 Adam step (see
     ``jaxprune/_noise.py``).
     ``noise=0`` skips this step: no random numbers are drawn.
  3. The gradients of pruned weights are zeroed and ``inner`` runs; its
     updates are masked so that ``params + updates`` is exactly 0.0 where a
     mask is False, under any optimizer.
  4. Flip counting: ``flips += sign(params + updates) != sign(params)`` for
     every prunable weight (the weights after the step, cast to the param
     dtype as ``optax.apply_updates`` does, against the weights before it;
     0 is a sign of its own), then the counters of pruned weights are set
     to 0.  Counters are never reset at pruning events.

  The counters are ``uint16`` and saturate at 65535: a weight that flipped
  more often scores as if it had flipped 65535 times.  Pass ``max_steps``
  (the length of the run) to get counters that cannot saturate: ``uint8``
  up to 255 steps, ``uint16`` up to 65535, ``uint32`` above (still
  saturating, at 2**32 - 1).

  The authors rank ``w**p`` (signed, wrong for odd ``p``); this ranks
  ``|w|**p``, equal for the default ``p = 2``.

  NaN or inf gradients (nothing can raise inside jit) are handled as in
  :func:`jaxprune.prune`: exact counts, NaN scores ranked last, weights
  pruned while finite exactly 0.0, a weight that is NaN when pruned left
  NaN; ``optax.apply_if_finite`` skips such steps.  With gradient noise, one
  non-finite gradient entry makes its tensor's gradient RMS, and so the
  noise of the whole tensor, non-finite.

  Args:
    inner: any optax transformation, e.g. ``optax.sgd(0.1, momentum=0.9)``.
    prune_every: steps between pruning events, an integer >= 1; see
      :func:`flipout_schedule` for the authors' schedule in epochs.
    rate: the fraction of surviving weights removed per event, in (0, 1).
    p: the exponent of the magnitude in the score, > 0.
    noise: the scale of the gradient noise relative to each tensor's
      gradient RMS, >= 0; 0 turns the noise off.
    final_sparsity: ``None`` (prune at every event), or the fraction of
      prunable weights after which pruning stops, in [0, 1).
    prunable: ``(path, leaf) -> bool`` selecting the leaves to prune; by
      default floating leaves with ``ndim >= 2`` (dense and conv kernels).
    seed: seeds the gradient noise.
    max_steps: ``None``, or the number of updates of the run, to choose
      flip counters that cannot saturate.
    packed_masks: hold the masks in the state packed eight to a byte along
      each tensor's last axis, as ``jaxprune.prune(..., packed_masks=True)``
      does; the pruning is the same.
    structure: :func:`jaxprune.structures.block` or
      :func:`jaxprune.structures.channels` to remove whole blocks or
      channels: each unit is scored by pooling its weights' scores, and
      the counts above are counts of units.  N:M does not apply: FlipOut
      removes a fraction of what survives at every event.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; its ``update`` needs
    ``params`` and forwards extra arguments to ``inner``.  ``p`` and
    ``noise`` may be injected with ``optax.inject_hyperparams``; the other
    arguments fix the schedule and must be Python values.

  Raises:
    ValueError: ``prune_every < 1``, ``rate`` outside (0, 1), ``p <= 0``,
      ``noise < 0``, ``final_sparsity`` outside [0, 1), ``max_steps < 1``;
      at ``init``: a predicate that selects nothing, NaN or inf in prunable
      params, a ``final_sparsity`` that would empty a tensor; at
      ``update``: no params, trees that do not match.
    TypeError: non-integer ``prune_every``, ``seed`` or ``max_steps``,
      non-numeric ``rate`` or ``final_sparsity``, a ``prunable`` that is not
      callable; at ``init``: non-float prunable leaves; at ``update``: a
      state that is not a :class:`FlipOutState`.

  References:
    Apostol, Stol and Forre, "FlipOut: Uncovering Redundant Weights via
    Sign Flipping", 2020, https://arxiv.org/abs/2009.02594
  """
  _checks.check_int("prune_every", prune_every, minimum=1, maximum=2**31 - 1)
  _check_rate(rate)
  _checks.check_scalar_hyperparameter("p", p, positive=True)
  _checks.check_scalar_hyperparameter("noise", noise, positive=False)
  if final_sparsity is not None:
    if isinstance(final_sparsity, bool) or not isinstance(
        final_sparsity, numbers.Real
    ):
      raise TypeError(
          f"final_sparsity must be None or a number, got {final_sparsity!r}"
      )
    if not 0.0 <= final_sparsity < 1.0:
      raise ValueError(f"final_sparsity must be in [0, 1), got {final_sparsity}")
  _checks.check_prunable(prunable)
  _checks.check_seed(seed)
  _structures.check_structure(structure, "jaxprune.flipout")
  if isinstance(structure, _structures.NOfM):
    raise ValueError(
        "jaxprune.flipout: N:M structure does not apply to FlipOut, which "
        "removes a fraction of the surviving weights at every event; use "
        "jaxprune.prune(..., structure=jaxprune.structures.n_of_m(n, m))")
  if max_steps is not None:
    _checks.check_int("max_steps", max_steps, minimum=1)
  counter_dtype = _counter_dtype(max_steps)
  counter_max = np.iinfo(counter_dtype).max
  noisy = isinstance(noise, jax.core.Tracer) or float(np.asarray(noise)) != 0.0

  def plan(params) -> _plans.Plan:
    return _plans.make_plan(
        params,
        prunable,
        "global",
        lambda shapes, units: [
            [k]
            for k in _kept_after_events(sum(units), len(units), rate,
                                        final_sparsity)
        ],
        caller="jaxprune.flipout",
        structure=structure,
    )

  def init_fields(params, plan: _plans.Plan):
    return dict(
        flips=jax.tree.map(
            lambda flag, x: (
                jnp.zeros_like(x, dtype=counter_dtype) if flag else None
            ),
            plan.prunable,
            params,
        ),
        events=jnp.zeros((), jnp.int32),
    )

  def check_state(state: FlipOutState, params, plan: _plans.Plan):
    del params, plan
    _trees.check_same_structure(
        _packing.unpack_tree(state.masks), state.flips,
        "the flip counters in the optimizer state",
    )

  def refresh(state: FlipOutState, plan: _plans.Plan):
    kept = jnp.asarray(plan.kept[:, 0])
    last = plan.kept.shape[0] - 1
    due = (state.step > 0) & (state.step % prune_every == 0)
    fields = {"events": state.events + due.astype(jnp.int32)}
    if last == 0:  # final_sparsity 0, or a single weight per tensor
      return None, fields
    target = kept[jnp.minimum(state.events + 1, last)]
    shrinks = target < kept[jnp.minimum(state.events, last)]
    return _masked.Refresh(due & shrinks, target[None]), fields

  def ranking_keys(state: FlipOutState, params, grads, masks,
                   plan: _plans.Plan):
    del grads

    def score(w, f):
      return (_power(jnp.abs(w.astype(jnp.float32)), p)
              / (f.astype(jnp.float32) + 1.0))

    return _masked.elementwise_keys(
        score, masks, _plans.prunable_leaves(params, plan),
        jax.tree.leaves(state.flips))

  def noisy_gradients(state: FlipOutState, grads):
    key = _masked.step_key(state)
    leaves, treedef = jax.tree.flatten(grads)
    keys = jax.random.split(key, max(len(leaves), 1))

    def add_noise(g, k):
      floating = jnp.issubdtype(jnp.result_type(g), jnp.floating)
      if not floating or jnp.size(g) == 0:
        return g
      g32 = g.astype(jnp.float32)
      rms = jnp.sqrt(jnp.sum(jnp.square(g32)) / jnp.size(g))
      draw = _noise.standard_normal_like(k, g)
      return (g32 + noise * rms * draw).astype(g.dtype)

    return jax.tree.unflatten(
        treedef, [add_noise(g, keys[i]) for i, g in enumerate(leaves)]
    )

  def counted_flips(state: FlipOutState, masks, updates, params):
    def count(f, m, u, w):
      if f is None:
        return None
      after = jnp.asarray(w + u).astype(jnp.result_type(w))
      flipped = jnp.sign(after) != jnp.sign(w)
      room = f < jnp.asarray(counter_max, f.dtype)  # saturating increment
      f = f + (flipped & room).astype(f.dtype)
      return jnp.where(m, f, jnp.zeros_like(f))

    return {"flips": jax.tree.map(
        count, state.flips, masks, updates, params,
        is_leaf=lambda x: x is None)}

  method = _masked.MaskingMethod(
      caller="jaxprune.flipout",
      state_type=FlipOutState,
      plan=plan,
      keep_best=True,
      refresh=refresh,
      ranking_keys=ranking_keys,
      init_fields=init_fields,
      check_state=check_state,
      perturb_gradients=noisy_gradients if noisy else None,
      after_update=counted_flips,
  )
  return _masked.masked(inner, method, packed_masks=packed_masks, seed=seed)
