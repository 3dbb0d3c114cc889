"""prune and optax.MultiSteps, in both orders: where the schedule's steps are
counted, and pruned weights exactly zero after every micro-step.

- ``optax.MultiSteps(prune(inner, ...), k)``: prune runs once per k
  micro-steps, so the schedule counts optimizer steps; schedule step ``s``
  is micro-step ``k * s + k - 1``.
- ``prune(optax.MultiSteps(inner, k), ...)``: prune runs at every
  micro-step, so the schedule counts micro-steps, and a mask update can fall
  inside an accumulation window.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxprune
from jaxprune import criteria
from jaxprune import schedules

_K = 3  # micro-steps per optimizer step
_MICRO_STEPS = 12
# One prunable kernel of 8 weights (the bias is not pruned).  Every weight
# gets the same gradient, so their order by magnitude never changes and the
# kept weights are always the largest: the last ones.
_PARAMS = {"w": jnp.arange(1.0, 9.0).reshape(2, 4), "b": jnp.ones(4)}


def _grads(i):
  return jax.tree.map(lambda x: jnp.full_like(x, (-1.0) ** i * (i + 1)), _PARAMS)


def _inner():
  return optax.sgd(0.1, momentum=0.9)


def _tx(order, schedule):
  if order == "multisteps_outside":
    return optax.MultiSteps(
        jaxprune.prune(_inner(), criterion=criteria.magnitude,
                       schedule=schedule), every_k_schedule=_K)
  return jaxprune.prune(optax.MultiSteps(_inner(), every_k_schedule=_K),
                        criterion=criteria.magnitude, schedule=schedule)


def _run(tx):
  """Params and masks after every micro-step."""
  params, state = _PARAMS, tx.init(_PARAMS)
  update = jax.jit(tx.update)
  history = []
  for i in range(_MICRO_STEPS):
    updates, state = update(_grads(i), state, params)
    params = optax.apply_updates(params, updates)
    history.append((params, np.asarray(jaxprune.masks_of(state)["w"])))
  return history


def _target(schedule, step):
  """The schedule's sparsity at its own ``step`` (0 before the first)."""
  reached = [s for t, s in zip(schedule.steps, schedule.sparsities) if t <= step]
  return reached[-1] if reached else 0.0


def _schedule_step(order, micro_step):
  """The schedule step that the masks after ``micro_step`` realise (-1: none
  yet)."""
  if order == "multisteps_outside":
    return (micro_step + 1) // _K - 1
  return micro_step


_SCHEDULES = {
    "one_shot": schedules.one_shot(0.5, at_step=1),
    # Linear from 0.25 at step 1 to 0.75 at step 3: 6, 4 and 2 of 8 kept.
    "polynomial": schedules.polynomial(0.75, begin_step=1, end_step=3,
                                       frequency=1, initial_sparsity=0.25,
                                       power=1),
}


@pytest.mark.parametrize("order", ["multisteps_outside", "multisteps_inside"])
@pytest.mark.parametrize("name", sorted(_SCHEDULES))
def test_masks_change_at_the_micro_step_the_order_counts(order, name):
  schedule = _SCHEDULES[name]
  kept_counts = []
  for i, (params, mask) in enumerate(_run(_tx(order, schedule))):
    step = _schedule_step(order, i)
    kept = 8 - round(_target(schedule, step) * 8) if step >= 0 else 8
    np.testing.assert_array_equal(mask.ravel(), np.arange(8) >= 8 - kept)
    # Pruned weights are exactly zero after every micro-step, the kept ones
    # are not.
    w = np.asarray(params["w"])
    assert np.all(w[~mask] == 0.0), (order, i)
    assert np.all(w[mask] != 0.0), (order, i)
    kept_counts.append(int(mask.sum()))
  # The same counts written out: outside, schedule step s is micro-step
  # 3 s + 2; inside, it is micro-step s.
  want = {
      ("multisteps_outside", "one_shot"): [8] * 5 + [4] * 7,
      ("multisteps_inside", "one_shot"): [8] + [4] * 11,
      ("multisteps_outside", "polynomial"): [8] * 5 + [6] * 3 + [4] * 3 + [2],
      ("multisteps_inside", "polynomial"): [8, 6, 4] + [2] * 9,
  }[order, name]
  assert kept_counts == want


def test_polynomial_levels_are_as_the_counts_above_assume():
  schedule = _SCHEDULES["polynomial"]
  assert schedule.steps == (1, 2, 3)
  assert [8 - round(s * 8) for s in schedule.sparsities] == [6, 4, 2]


def test_a_mask_update_inside_a_window_zeroes_the_weights_at_once():
  # Inside, one_shot at micro-step 4 falls in the middle of the window of
  # micro-steps 3, 4, 5: the weights it prunes are zero after micro-step 4,
  # although MultiSteps applies nothing until micro-step 5, and they stay
  # zero when the window's accumulated gradient (which holds their
  # gradient of micro-step 3) is applied.
  history = _run(_tx("multisteps_inside", schedules.one_shot(0.5, at_step=4)))
  before, _ = history[3]
  after, mask = history[4]
  np.testing.assert_array_equal(mask.ravel(), np.arange(8) >= 4)
  w_before, w_after = np.asarray(before["w"]), np.asarray(after["w"])
  np.testing.assert_array_equal(w_after[mask], w_before[mask])  # no step yet
  assert np.all(w_after[~mask] == 0.0) and np.all(w_before[~mask] != 0.0)
  for params, _ in history[5:]:
    assert np.all(np.asarray(params["w"])[~mask] == 0.0)


def test_outside_equals_prune_on_the_mean_gradient_of_each_window():
  # MultiSteps(prune(inner), k) on micro-batches is prune(inner) on the mean
  # gradient of every k micro-batches: the micro-steps in between change
  # nothing.
  schedule = _SCHEDULES["polynomial"]
  history = _run(_tx("multisteps_outside", schedule))
  tx = jaxprune.prune(_inner(), criterion=criteria.magnitude, schedule=schedule)
  params, state = _PARAMS, tx.init(_PARAMS)
  for step in range(_MICRO_STEPS // _K):
    window = range(step * _K, (step + 1) * _K)
    for i in window[:-1]:  # no change before the window's last micro-step
      before = history[i - 1][0] if i else _PARAMS
      for a, b in zip(jax.tree.leaves(history[i][0]), jax.tree.leaves(before)):
        np.testing.assert_array_equal(a, b)
    mean = jax.tree.map(lambda *g: sum(g) / _K, *(_grads(i) for i in window))
    updates, state = tx.update(mean, state, params)
    params = optax.apply_updates(params, updates)
    got, mask = history[window[-1]]
    np.testing.assert_array_equal(mask, np.asarray(jaxprune.masks_of(state)["w"]))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(params)):
      np.testing.assert_allclose(a, b, rtol=1e-6)
