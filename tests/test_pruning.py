"""jaxprune.prune: exact masks, schedules under jit, and bad input."""

import math
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference
import stepping

import jaxprune
from jaxprune import _selection
from jaxprune import criteria
from jaxprune import schedules


def _params(seed=0, dtype=np.float32):
  rng = np.random.default_rng(seed)
  normal = lambda *shape: jnp.asarray(rng.normal(size=shape).astype(dtype))
  return {
      "conv": {"kernel": normal(3, 3, 2, 5), "bias": normal(5)},
      "dense1": {"kernel": normal(40, 16), "bias": normal(16)},
      "dense2": {"kernel": normal(16, 4), "bias": normal(4)},
  }


_PRUNABLE = [("conv", "kernel"), ("dense1", "kernel"), ("dense2", "kernel")]


def _kernels(tree):
  return [tree[a][b] for a, b in _PRUNABLE]


def _grads(params, seed):
  key = jax.random.key(seed)
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(
      treedef, [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
  )


def _expected_kept(sparsity, shapes, allocation):
  """Per-group kept counts computed from the rules, independently."""
  sizes = [math.prod(s) for s in shapes]
  if allocation == "global":
    return [sum(sizes) - round(sparsity * sum(sizes))]
  if allocation == "layerwise":
    return [n - min(round(sparsity * n), n - 1) for n in sizes]
  densities = reference.erk_densities_by_bisection(shapes, 1 - sparsity)
  return [n - min(round((1 - d) * n), n - 1) for n, d in zip(sizes, densities)]


@pytest.mark.parametrize("allocation", ["global", "layerwise", "erk"])
@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.9, 0.97])
def test_one_shot_masks_match_numpy_reference(allocation, sparsity):
  params = _params()
  tx = jaxprune.prune(
      optax.sgd(0.1),
      criterion=criteria.magnitude,
      schedule=schedules.one_shot(sparsity, at_step=0),
      allocation=allocation,
  )
  state = tx.init(params)
  _, state = jax.jit(tx.update)(_grads(params, 1), state, params)
  masks = jaxprune.masks_of(state)

  shapes = [k.shape for k in _kernels(params)]
  kept = _expected_kept(sparsity, shapes, allocation)
  group_ids = [0, 0, 0] if allocation == "global" else [0, 1, 2]
  want = reference.keep_top_k(
      [np.abs(k) for k in _kernels(params)],
      [np.ones(s, bool) for s in shapes],
      group_ids,
      kept,
      force_best=allocation == "global",
  )
  for got, w in zip(_kernels(masks), want):
    assert got.dtype == jnp.bool_
    np.testing.assert_array_equal(np.asarray(got), w)
  for g in set(group_ids):
    count = sum(int(m.sum()) for m, gid in zip(want, group_ids) if gid == g)
    assert count == kept[g]
  assert masks["conv"]["bias"] is None and masks["dense1"]["bias"] is None


def test_ties_are_broken_by_flat_index():
  params = {"w": jnp.ones((4, 5)), "v": jnp.ones((5, 2))}
  tx = jaxprune.prune(optax.sgd(0.0), criterion=criteria.magnitude,
                      schedule=schedules.constant(0.5))
  state = tx.init(params)
  _, state = tx.update(params, state, params)
  masks = jaxprune.masks_of(state)
  # 30 weights, 15 kept; leaves in tree order: 'v' (10) then 'w' (20). Each
  # tensor's first weight is forced in, then the lowest flat indices.
  assert np.asarray(masks["v"]).ravel().tolist() == [True] * 10
  assert np.asarray(masks["w"]).ravel().tolist() == [True] * 5 + [False] * 15


def _run(tx, params, steps, jit=True):
  """(params, masks) after every update, and the number of traces."""
  history, traces = stepping.run_steps(tx, params, _grads, steps, jit=jit)
  return [(p, jaxprune.masks_of(s)) for p, s in history], traces


def test_polynomial_schedule_compiles_once_and_counts_are_exact():
  params = _params()
  schedule = schedules.polynomial(0.9, begin_step=5, end_step=45, frequency=10)
  tx = jaxprune.prune(optax.adam(1e-2), criterion=criteria.magnitude,
                      schedule=schedule, allocation="layerwise")
  history, traces = _run(tx, params, 60)
  assert traces == 1
  shapes = [k.shape for k in _kernels(params)]
  previous = [np.ones(s, bool) for s in shapes]
  for t, (p, masks) in enumerate(history):
    current = [np.asarray(m) for m in _kernels(masks)]
    level = int(schedule.level(t))
    if t in schedule.steps:
      kept = _expected_kept(schedule.sparsities[level], shapes, "layerwise")
      assert [int(m.sum()) for m in current] == kept, t
    else:
      for a, b in zip(previous, current):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(previous, current):
      assert not np.any(b & ~a), "a pruned weight came back"
    for kernel, m in zip(_kernels(p), current):
      assert np.all(np.asarray(kernel)[~m] == 0.0)
    previous = current
  assert len(schedule.steps) == 4


@pytest.mark.long_running(18)
def test_jit_and_no_jit_give_identical_masks():
  params = _params(3)
  tx = jaxprune.prune(
      optax.sgd(0.05, momentum=0.9),
      criterion=criteria.saliency,
      schedule=schedules.polynomial(0.8, begin_step=0, end_step=4, frequency=2),
  )
  jitted, _ = _run(tx, params, 6)
  with jax.disable_jit():
    eager, _ = _run(tx, params, 6, jit=False)
  for (pj, mj), (pe, me) in zip(jitted, eager):
    for a, b in zip(_kernels(mj), _kernels(me)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(pj), jax.tree.leaves(pe)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_random_criterion_is_reproducible_from_the_seed():
  params = _params()

  def masks(seed):
    tx = jaxprune.prune(optax.sgd(0.1), criterion=criteria.random,
                        schedule=schedules.constant(0.5), seed=seed)
    _, state = jax.jit(tx.update)(_grads(params, 0), tx.init(params), params)
    return np.concatenate([np.asarray(m).ravel() for m in _kernels(jaxprune.masks_of(state))])

  np.testing.assert_array_equal(masks(3), masks(3))
  assert not np.array_equal(masks(3), masks(4))


def test_unprunable_leaves_keep_training():
  params = _params()
  tx = jaxprune.prune(optax.sgd(0.1), criterion=criteria.magnitude,
                      schedule=schedules.constant(0.99), allocation="layerwise")
  updates, _ = tx.update(_grads(params, 0), tx.init(params), params)
  np.testing.assert_allclose(
      updates["dense1"]["bias"], -0.1 * _grads(params, 0)["dense1"]["bias"]
  )


def test_global_pruning_keeps_every_tensor_alive():
  params = _params()
  params["dense2"]["kernel"] = params["dense2"]["kernel"] * 1e-6
  tx = jaxprune.prune(optax.sgd(0.1), criterion=criteria.magnitude,
                      schedule=schedules.constant(0.9))
  _, state = tx.update(_grads(params, 0), tx.init(params), params)
  masks = jaxprune.masks_of(state)
  small = np.asarray(masks["dense2"]["kernel"])
  assert small.sum() == 1
  assert small.ravel()[np.argmax(np.abs(params["dense2"]["kernel"]))]
  total = sum(k.size for k in _kernels(params))
  assert sum(int(m.sum()) for m in _kernels(masks)) == total - round(0.9 * total)


def test_sparsity_one_prunes_everything():
  params = _params()
  tx = jaxprune.prune(optax.sgd(0.1), criterion=criteria.magnitude,
                      schedule=schedules.constant(1.0))
  updates, state = tx.update(_grads(params, 0), tx.init(params), params)
  new = optax.apply_updates(params, updates)
  assert all(not np.any(m) for m in _kernels(jaxprune.masks_of(state)))
  assert all(np.all(np.asarray(k) == 0) for k in _kernels(new))


def test_nan_scores_never_win_a_place():
  params = _params()
  poisoned = np.zeros(40 * 16, bool)
  poisoned[::7] = True  # 92 weights
  poisoned = poisoned.reshape(40, 16)

  def nan_magnitude(params, grads, key):
    scores = criteria.magnitude(params, grads, key)
    scores["dense1"]["kernel"] = jnp.where(poisoned, jnp.nan, scores["dense1"]["kernel"])
    return scores

  tx = jaxprune.prune(optax.sgd(0.1), criterion=nan_magnitude,
                      schedule=schedules.constant(0.2), allocation="layerwise")
  _, state = jax.jit(tx.update)(_grads(params, 0), tx.init(params), params)
  kept = np.asarray(jaxprune.masks_of(state)["dense1"]["kernel"])
  assert kept.sum() == 640 - 128
  assert not np.any(kept & poisoned)
  assert int(state.nan_scores) == 92


def test_nan_scores_are_counted_exactly_under_global_ranking():
  # One tensor is all NaN: its best weight is forced (kept), and still counted;
  # the 79 places go to the 154 real scores elsewhere.
  params = _params()

  def nan_magnitude(params, grads, key):
    scores = criteria.magnitude(params, grads, key)
    scores["dense1"]["kernel"] = jnp.full_like(scores["dense1"]["kernel"], jnp.nan)
    return scores

  tx = jaxprune.prune(optax.sgd(0.1), criterion=nan_magnitude,
                      schedule=schedules.constant(0.9))
  _, state = jax.jit(tx.update)(_grads(params, 0), tx.init(params), params)
  kept = np.asarray(jaxprune.masks_of(state)["dense1"]["kernel"])
  assert kept.sum() == 1 and kept.reshape(-1)[0]  # the first NaN is forced
  assert int(state.nan_scores) == 640


def test_low_precision_params():
  params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), _params())
  tx = jaxprune.prune(optax.adam(1e-2), criterion=criteria.magnitude,
                      schedule=schedules.constant(0.5))
  history, _ = _run(tx, params, 5)
  p, masks = history[-1]
  for kernel, m in zip(_kernels(p), _kernels(masks)):
    assert kernel.dtype == jnp.bfloat16
    assert np.all(np.asarray(kernel.astype(jnp.float32))[~np.asarray(m)] == 0.0)


def test_extra_args_reach_the_inner_optimizer():
  params = {"w": jnp.ones((3, 3))}
  tx = jaxprune.prune(
      optax.chain(optax.sgd(1.0), optax.contrib.reduce_on_plateau()),
      criterion=criteria.magnitude, schedule=schedules.constant(0.5))
  state = tx.init(params)
  _, state = tx.update(params, state, params, value=jnp.asarray(3.0))
  assert float(state.inner_state[1].best_value) == 3.0


def test_update_is_differentiable():
  # Meta-learning differentiates through optimizer updates; the mask update
  # must not get in the way.
  params = {"w": jnp.arange(1.0, 10.0).reshape(3, 3)}
  tx = jaxprune.prune(optax.sgd(0.1), criterion=criteria.magnitude,
                      schedule=schedules.constant(0.5))
  state = tx.init(params)

  def loss(p):
    updates, _ = tx.update(jax.tree.map(lambda x: 2.0 * x, p), state, p)
    return jnp.sum(optax.apply_updates(p, updates)["w"] ** 2)

  # Kept weights (5..9) become 0.8 w, so d/dw sum((0.8 w)^2) = 1.28 w.
  want = np.where(np.arange(1.0, 10.0) >= 5, 1.28 * np.arange(1.0, 10.0), 0.0)
  np.testing.assert_allclose(jax.grad(loss)(params)["w"].ravel(), want, rtol=1e-6)


# ----------------------------------------------------------------- bad input


def _tx(**kwargs):
  defaults = dict(criterion=criteria.magnitude, schedule=schedules.constant(0.5))
  return jaxprune.prune(optax.sgd(0.1), **{**defaults, **kwargs})


def test_unknown_allocation():
  with pytest.raises(ValueError, match="unknown allocation 'per-layer'"):
    _tx(allocation="per-layer")


def test_prune_with_nothing_to_prune_by_is_an_error():
  # Neither a criterion and a schedule nor masks: it would train dense.
  with pytest.raises(ValueError) as error:
    jaxprune.prune(optax.sgd(0.1))
  assert str(error.value) == (
      "jaxprune.prune got no criterion, no schedule and no masks, so it would "
      "never prune; pass a criterion and a schedule to prune during training "
      "(criterion=jaxprune.criteria.magnitude, "
      "schedule=jaxprune.schedules.polynomial(...)), or masks= to keep fixed "
      "masks (e.g. from jaxprune.snip)")
  with pytest.raises(ValueError, match="no criterion, no schedule and no masks"):
    jaxprune.prune(optax.adam(1e-3), allocation="layerwise", seed=3,
                   packed_masks=True)


def test_prune_keeps_explicit_all_kept_masks():
  # Fixed masks that keep everything are the explicit form of "all kept":
  # the update is inner's own.
  params = {"w": jnp.arange(1.0, 7.0).reshape(2, 3), "b": jnp.ones(3)}
  masks = {"w": jnp.ones((2, 3), bool), "b": None}
  tx = jaxprune.prune(optax.sgd(0.1), masks=masks)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, state = jax.jit(tx.update)(grads, tx.init(params), params)
  plain, _ = optax.sgd(0.1).update(grads, optax.sgd(0.1).init(params), params)
  for name in ("w", "b"):
    np.testing.assert_array_equal(updates[name], plain[name])
  assert jaxprune.masks_of(state)["w"].tolist() == [[True] * 3] * 2


def test_schedule_must_be_a_schedule():
  with pytest.raises(TypeError, match="schedule must be a jaxprune.schedules.Schedule"):
    _tx(schedule=lambda step: 0.5)


def test_criterion_must_be_callable():
  with pytest.raises(TypeError, match="criterion must be callable"):
    _tx(criterion="magnitude")


def test_predicate_that_selects_nothing():
  with pytest.raises(ValueError, match="selects no leaf"):
    _tx(prunable=lambda path, leaf: False).init(_params())


def test_non_float_prunable_leaf():
  params = {**_params(), "table": jnp.zeros((4, 4), jnp.int32)}
  with pytest.raises(TypeError, match="table has dtype int32"):
    _tx(prunable=lambda path, leaf: jnp.ndim(leaf) >= 2).init(params)


def test_default_predicate_skips_integer_and_complex_leaves():
  params = {**_params(), "ids": jnp.zeros((4, 4), jnp.int32),
            "phase": jnp.zeros((4, 4), jnp.complex64)}
  masks = jaxprune.masks_of(_tx().init(params))
  assert masks["ids"] is None and masks["phase"] is None


def test_nan_in_params_at_init():
  params = _params()
  params["dense2"]["kernel"] = params["dense2"]["kernel"].at[0, 0].set(jnp.nan)
  with pytest.raises(ValueError, match="dense2/kernel holds NaN or inf"):
    _tx().init(params)


def test_global_sparsity_that_would_empty_a_tensor():
  params = {"a": jnp.ones((10, 10)), "b": jnp.ones((1, 1)), "c": jnp.ones((1, 1))}
  with pytest.raises(ValueError, match="emptied"):
    _tx(schedule=schedules.constant(0.995)).init(params)


def test_update_without_params():
  params = _params()
  tx = _tx()
  with pytest.raises(ValueError, match="needs the current params"):
    tx.update(params, tx.init(params))


def test_gradients_that_do_not_match_params():
  params = _params()
  tx = _tx()
  state = tx.init(params)
  grads = {k: v for k, v in params.items() if k != "conv"}
  with pytest.raises(ValueError, match="structure of the updates .* is not that"):
    tx.update(grads, state, params)


def test_state_from_other_params():
  tx = _tx()
  state = tx.init({"w": jnp.ones((3, 3))})
  with pytest.raises(ValueError, match="masks in the optimizer state"):
    tx.update(_params(), state, _params())
  state = tx.init({"w": jnp.ones((3, 3))})
  with pytest.raises(ValueError, match="mask of w has shape"):
    tx.update({"w": jnp.ones((4, 4))}, state, {"w": jnp.ones((4, 4))})


def test_criterion_returning_the_wrong_tree():
  params = _params()
  tx = _tx(criterion=lambda p, g, k: {"oops": 1.0})
  with pytest.raises(ValueError, match="criterion's scores"):
    tx.update(params, tx.init(params), params)


@pytest.mark.parametrize("criterion", [criteria.magnitude, criteria.saliency])
@pytest.mark.parametrize("allocation", ["global", "layerwise"])
def test_per_weight_scores_give_the_masks_of_whole_tree_scores(criterion, allocation):
  # magnitude and saliency carry ``per_weight``, so prune scores their
  # weights a chunk at a time where it ranks them (chunks of 64 here, over
  # several leaves); a criterion without it hands over the scores of the
  # whole tree.  The masks must be the same.
  params = _params(seed=3)
  grads = _grads(params, seed=4)
  whole_tree = lambda p, g, k: criterion(p, g, k)
  masks = []
  for c in (criterion, whole_tree):
    tx = jaxprune.prune(optax.sgd(0.1), criterion=c, allocation=allocation,
                        schedule=schedules.one_shot(0.7, 0))
    with mock.patch.object(_selection, "_CHUNK", 64):
      _, state = jax.jit(tx.update)(
          grads, tx.init(params), params)
    masks.append(_kernels(jaxprune.masks_of(state)))
  scores = _kernels(criterion(params, grads, None))
  want = reference.keep_top_k(
      [np.asarray(x) for x in scores], [np.ones(x.shape, bool) for x in scores],
      [0, 0, 0] if allocation == "global" else [0, 1, 2],
      _kept_counts(scores, 0.7, allocation), force_best=allocation == "global")
  for per_weight, whole, w in zip(*masks, want):
    np.testing.assert_array_equal(np.asarray(per_weight), w)
    np.testing.assert_array_equal(np.asarray(whole), w)


def _kept_counts(scores, sparsity, allocation):
  sizes = [x.size for x in scores]
  if allocation == "global":
    return [sum(sizes) - round(sparsity * sum(sizes))]
  return [max(n - round(sparsity * n), 1) for n in sizes]


def test_per_weight_that_is_not_a_function_is_refused():
  def criterion(params, grads, key):
    return criteria.magnitude(params, grads, key)

  criterion.per_weight = 2.0
  with pytest.raises(TypeError, match="per_weight must be a"):
    jaxprune.prune(optax.sgd(0.1), criterion=criterion,
                   schedule=schedules.one_shot(0.5, 0))
