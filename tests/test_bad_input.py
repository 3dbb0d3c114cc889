"""Bad input: a clear error naming the problem, or a safe behaviour.

Every bad input is tried on every public entry point it applies to.
Errors are checked by type and by a fragment of the message that names the
problem; where nothing can raise (values inside jit) the documented safe
behaviour is checked numerically.  The bad-input guide's table
(docs/guides/bad-input.md) lists these tests.  Corrupt checkpoints are
tested in ``tests/test_faults.py``.
"""

import hashlib
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxprune
from jaxprune import criteria
from jaxprune import schedules


def _params():
  return {
      "a": {"kernel": jnp.arange(1.0, 13.0).reshape(3, 4) / 4,
            "bias": jnp.zeros(4)},
      "b": {"kernel": (jnp.arange(8.0).reshape(4, 2) - 3.5) / 4},
  }


def _masks():
  return {"a": {"kernel": jnp.ones((3, 4), bool), "bias": None},
          "b": {"kernel": jnp.ones((4, 2), bool)}}


def _apply(params, x):
  h = jax.nn.relu(x @ params["a"]["kernel"] + params["a"]["bias"][None])
  return h @ params["b"]["kernel"]


def _loss(params, x):
  return jnp.mean(_apply(params, x) ** 2)


_BATCHES = [jnp.ones((2, 3))]


def _prune(**kwargs):
  defaults = dict(criterion=criteria.magnitude,
                  schedule=schedules.constant(0.5))
  return jaxprune.prune(optax.sgd(0.1), **{**defaults, **kwargs})


def _flipout(**kwargs):
  return jaxprune.flipout(optax.sgd(0.1), prune_every=2, **kwargs)


def _gated():
  return jaxprune.add_gates(_params(), jax.random.key(0))


def _snip(fn, params=None, **kwargs):
  return lambda: fn(_loss, _params() if params is None else params, _BATCHES,
                    **{"sparsity": 0.5, **kwargs})


def _synflow(params=None, **kwargs):
  return lambda: jaxprune.synflow(
      _apply, _params() if params is None else params, (3,),
      **{"sparsity": 0.5, "rounds": 2, **kwargs})


def _snap_it(params=None, **kwargs):
  return lambda: jaxprune.snap_it(
      _loss, _params() if params is None else params, _BATCHES,
      **{"sparsity": 0.5, "layers": ["a", "b"], **kwargs})


def _init(tx, params=None):
  return lambda: tx.init(_params() if params is None else params)


def _raises(fn, error, match):
  with pytest.raises(error, match=match):
    fn()


# ------------------------------------------------ sparsity outside [0, 1]

_RANGE = r"sparsity must be in \[0, 1\]"


@pytest.mark.parametrize("fn, error, match", [
    pytest.param(lambda: schedules.constant(1.5), ValueError, _RANGE,
                 id="constant"),
    pytest.param(lambda: schedules.one_shot(-0.1, at_step=0), ValueError,
                 _RANGE, id="one_shot"),
    pytest.param(lambda: schedules.polynomial(1.2, 0, 10, 1), ValueError,
                 r"final_sparsity must be in \[0, 1\]", id="polynomial"),
    pytest.param(lambda: schedules.piecewise([0], [float("nan")]), ValueError,
                 _RANGE + ", got nan", id="piecewise-nan"),
    pytest.param(lambda: schedules.geometric(1.5, 0, 1), ValueError,
                 r"final_sparsity must be in \[0, 1\]", id="geometric"),
    pytest.param(lambda: schedules.Schedule((0,), (1.5,)), ValueError,
                 r"Schedule sparsity must be in \[0, 1\], got 1.5",
                 id="Schedule-direct"),
    pytest.param(lambda: schedules.Schedule((0,), (float("nan"),)),
                 ValueError, "Schedule sparsity .* got nan",
                 id="Schedule-direct-nan"),
    pytest.param(_snip(jaxprune.snip, sparsity=1.5), ValueError, _RANGE,
                 id="snip"),
    pytest.param(_snip(jaxprune.snip_it, sparsity=-0.1), ValueError,
                 r"^sparsity must be in \[0, 1\]", id="snip_it"),
    pytest.param(_snip(jaxprune.grasp, sparsity=2.0), ValueError, _RANGE,
                 id="grasp"),
    pytest.param(_synflow(sparsity=1.5), ValueError, _RANGE, id="synflow"),
    pytest.param(_snap_it(sparsity=-0.5), ValueError, r"^sparsity must be in",
                 id="snap_it"),
    pytest.param(_snap_it(sparsity=1.0), ValueError, "removes every unit",
                 id="snap_it-1"),
    pytest.param(lambda: _flipout(final_sparsity=1.0), ValueError,
                 r"final_sparsity must be in \[0, 1\)", id="flipout"),
    pytest.param(lambda: _flipout(rate=1.0), ValueError,
                 r"rate must be in \(0, 1\)", id="flipout-rate"),
    pytest.param(lambda: jaxprune.flipout_sparsity(1.5, 2), ValueError,
                 r"rate must be in \(0, 1\)", id="flipout_sparsity"),
    pytest.param(lambda: jaxprune.density_constraint(1.5), ValueError,
                 r"density targets must be in \(0, 1\]",
                 id="density_constraint"),
    pytest.param(lambda: jaxprune.density_constraint(0.0), ValueError,
                 r"density targets must be in \(0, 1\]",
                 id="density_constraint-0"),
])
def test_sparsity_outside_the_unit_interval(fn, error, match):
  _raises(fn, error, match)


# ----------------------------------------- schedules that end before they begin


@pytest.mark.parametrize("fn, match", [
    pytest.param(lambda: schedules.polynomial(0.5, 10, 5, 1),
                 r"end_step \(5\) must be greater than begin_step \(10\)",
                 id="polynomial"),
    pytest.param(lambda: schedules.polynomial(0.5, 10, 10, 1),
                 r"end_step \(10\) must be greater than begin_step \(10\)",
                 id="polynomial-empty"),
    pytest.param(lambda: schedules.piecewise([5, 2], [0.1, 0.2]),
                 "steps must be strictly increasing", id="piecewise"),
    pytest.param(lambda: schedules.piecewise([0, 5], [0.5, 0.2]),
                 "sparsities must not decrease", id="piecewise-decreasing"),
    pytest.param(lambda: schedules.Schedule((5, 2), (0.3, 0.6)),
                 "Schedule steps must be strictly increasing",
                 id="Schedule-direct"),
    pytest.param(lambda: schedules.Schedule((0, 1), (0.5,)),
                 "Schedule got 2 steps but 1 sparsity",
                 id="Schedule-lengths"),
    pytest.param(lambda: schedules.one_shot(0.5, at_step=-1),
                 "at_step must be >= 0", id="one_shot"),
    pytest.param(lambda: schedules.geometric(0.9, begin_step=-1, frequency=1),
                 "begin_step must be >= 0", id="geometric"),
    pytest.param(lambda: jaxprune.flipout_schedule(0, 1, 10),
                 "steps_per_epoch must be >= 1", id="flipout_schedule"),
])
def test_schedule_that_ends_before_it_begins(fn, match):
  _raises(fn, ValueError, match)


# -------------------------------------------- a predicate that selects nothing

_NONE = lambda path, leaf: False
_SELECTS_NOTHING = "the prunable predicate selects no leaf"


@pytest.mark.parametrize("fn, match", [
    pytest.param(_init(_prune(prunable=_NONE)), _SELECTS_NOTHING, id="prune"),
    pytest.param(_init(jaxprune.prune(optax.sgd(0.1), prunable=_NONE,
                                      masks={})),
                 _SELECTS_NOTHING, id="prune-masks"),
    pytest.param(_init(_flipout(prunable=_NONE)), _SELECTS_NOTHING,
                 id="flipout"),
    pytest.param(_snip(jaxprune.snip, prunable=_NONE), _SELECTS_NOTHING,
                 id="snip"),
    pytest.param(_snip(jaxprune.snip_it, prunable=_NONE), _SELECTS_NOTHING,
                 id="snip_it"),
    pytest.param(_snip(jaxprune.grasp, prunable=_NONE), _SELECTS_NOTHING,
                 id="grasp"),
    pytest.param(_synflow(prunable=_NONE), _SELECTS_NOTHING, id="synflow"),
    pytest.param(_init(jaxprune.project_l1(1.0, prunable=_NONE)),
                 "nothing would be projected", id="project_l1"),
    pytest.param(_init(jaxprune.project_l21(1.0, prunable=_NONE)),
                 "nothing would be projected", id="project_l21"),
    pytest.param(_init(jaxprune.project_l11(1.0, prunable=_NONE)),
                 "nothing would be projected", id="project_l11"),
    pytest.param(lambda: jaxprune.add_gates(_params(), jax.random.key(0),
                                            gated=_NONE),
                 "no leaf of the params is selected for gating",
                 id="add_gates"),
    pytest.param(lambda: jaxprune.sparsity(_params(), prunable=_NONE),
                 "sparsity counted no leaf", id="sparsity"),
])
def test_predicate_that_selects_nothing(fn, match):
  _raises(fn, ValueError, match)


def test_predicate_that_returns_no_bool():
  _raises(_init(_prune(prunable=lambda path, leaf: leaf > 0)), TypeError,
          "returned an array of shape .* for leaf a/bias; it must return True "
          "or False")
  _raises(_init(_prune(prunable=lambda path, leaf: None)), TypeError,
          "returned None for leaf a/bias")


def test_empty_leaves_are_skipped_by_default_and_refused_when_selected():
  params = {**_params(), "empty": jnp.zeros((0, 3))}
  for tx in (_prune(), _flipout()):
    assert jaxprune.masks_of(tx.init(params))["empty"] is None
  _raises(_init(_prune(prunable=lambda path, leaf: leaf.ndim >= 2), params),
          ValueError, "leaf empty is empty")


# ------------------------------------------------- integer and complex leaves

_INT = {**_params(), "ids": jnp.zeros((3, 3), jnp.int32)}
_COMPLEX = {**_params(), "z": jnp.ones((2, 2), jnp.complex64)}
_ALL_2D = lambda path, leaf: jnp.ndim(leaf) >= 2
_EVERY_LEAF = ("leaf ids has dtype int32; every leaf of the params is "
               "differentiated")


@pytest.mark.parametrize("fn, match", [
    pytest.param(_init(_prune(prunable=_ALL_2D), _INT),
                 "leaf ids has dtype int32; only real floating-point leaves can "
                 "be pruned", id="prune-int"),
    pytest.param(_init(_prune(prunable=_ALL_2D), _COMPLEX),
                 "leaf z has dtype complex64", id="prune-complex"),
    pytest.param(_init(_flipout(prunable=_ALL_2D), _INT),
                 "leaf ids has dtype int32", id="flipout"),
    pytest.param(_snip(jaxprune.snip, _INT), _EVERY_LEAF, id="snip"),
    pytest.param(_snip(jaxprune.snip_it, _INT), _EVERY_LEAF, id="snip_it"),
    pytest.param(_snip(jaxprune.grasp, _INT), _EVERY_LEAF, id="grasp"),
    pytest.param(_synflow(_INT), _EVERY_LEAF, id="synflow"),
    pytest.param(_synflow(_COMPLEX), "leaf z has dtype complex64.* must be real "
                 "floating-point", id="synflow-complex"),
    pytest.param(_snap_it(_INT), _EVERY_LEAF, id="snap_it"),
    pytest.param(_init(jaxprune.project_l1(1.0, prunable=_ALL_2D), _INT),
                 "leaf ids has dtype int32; only real floating-point leaves can "
                 "be projected", id="project_l1"),
    pytest.param(lambda: jaxprune.projections.l1_ball(jnp.ones(3, jnp.complex64),
                                                     1.0),
                 "needs a real floating-point array, got dtype complex64",
                 id="projections.l1_ball"),
    pytest.param(lambda: jaxprune.add_gates(_INT, jax.random.key(0),
                                            gated=_ALL_2D),
                 "gated leaf ids has dtype int32", id="add_gates"),
])
def test_integer_or_complex_leaves(fn, match):
  _raises(fn, TypeError, match)


def test_integer_and_complex_leaves_are_not_pruned_by_default():
  params = {**_INT, "z": _COMPLEX["z"]}
  grads = jax.tree.map(jnp.ones_like, params)
  plain, _ = optax.sgd(0.1).update(grads, optax.sgd(0.1).init(params))
  # Fixed masks and a FlipOut that never prunes keep the update cheap: no
  # mask selection is compiled.
  fixed = jaxprune.prune(optax.sgd(0.1),
                         masks={**_masks(), "ids": None, "z": None})
  for tx in (fixed, _flipout(final_sparsity=0.0, noise=0.0)):
    state = tx.init(params)
    assert jaxprune.masks_of(state)["ids"] is None
    assert jaxprune.masks_of(state)["z"] is None
    updates, _ = jax.jit(tx.update)(grads, state, params)
    for name in ("ids", "z"):  # the inner optimizer's, untouched
      np.testing.assert_array_equal(updates[name], plain[name])
  assert "ids" not in jaxprune.sparsity(params).per_leaf


@pytest.mark.parametrize("tx", [
    jaxprune.dual_ascent(lambda p: jnp.sum(p["d"]["log_alpha"]), dual_lr=1.0),
    jaxprune.l0_penalty(0.1),
], ids=["dual_ascent", "l0_penalty"])
def test_integer_leaves_pass_through_the_constraint_gradients(tx):
  params = {"d": {"kernel": jnp.ones((2, 2)), "log_alpha": jnp.ones(2)},
            "step": jnp.array([3, 4], jnp.int32)}
  state = tx.init(params)
  for _ in range(2):  # the multiplier is 0 at the first step
    updates, state = tx.update(jax.tree.map(jnp.zeros_like, params), state,
                               params)
  assert updates["step"].tolist() == [0, 0]
  assert np.all(np.asarray(updates["d"]["log_alpha"]) > 0)


def test_apply_masks_on_integer_params():
  masked = jaxprune.apply_masks({"w": jnp.arange(1, 5)},
                                {"w": jnp.array([True, False, True, False])})
  assert masked["w"].tolist() == [1, 0, 3, 0]


# --------------------------------- trees that do not match the optimizer state


def _update(tx, grads=None, state_params=None, params=None, state=None):
  params = _params() if params is None else params
  if state is None:
    state = tx.init(_params() if state_params is None else state_params)
  return lambda: tx.update(params if grads is None else grads, state, params)


_P = _params()
_NO_BIAS = {"a": {"kernel": _P["a"]["kernel"]}, "b": _P["b"]}
_TRANSPOSED = {**_P, "a": {**_P["a"], "kernel": _P["a"]["kernel"].T}}
_ONLY_A = {"a": _P["a"]}
_GRADS_STRUCTURE = r"the structure of the updates \(gradients\) is not that"
_GRADS_SHAPE = (r"the shape of the updates \(gradients\) at a/kernel is \(4, 3\), "
                r"but the param's is \(3, 4\)")


@pytest.mark.parametrize("fn, error, match", [
    pytest.param(_update(_prune(), grads=_NO_BIAS), ValueError,
                 _GRADS_STRUCTURE, id="prune-grads-structure"),
    pytest.param(_update(_prune(), grads=_TRANSPOSED), ValueError,
                 _GRADS_SHAPE, id="prune-grads-shape"),
    pytest.param(_update(_prune(), state_params=_ONLY_A), ValueError,
                 "the structure of the masks in the optimizer state is not that",
                 id="prune-state"),
    pytest.param(_update(_prune(), state=optax.sgd(0.1).init(_P)), TypeError,
                 "update got a state of type tuple, not the PruneState",
                 id="prune-state-type"),
    pytest.param(_init(jaxprune.prune(optax.sgd(0.1), masks=jax.tree.map(
        lambda x: jnp.ones(x.shape, bool), _P))), ValueError,
                 "a boolean array for every prunable leaf, None for the others",
                 id="prune-masks-every-leaf"),
    pytest.param(_init(jaxprune.prune(optax.sgd(0.1), masks={
        **_masks(), "b": {"kernel": jnp.ones((2, 4), bool)}})), ValueError,
                 r"the mask of b/kernel has shape \(2, 4\)",
                 id="prune-masks-shape"),
    pytest.param(_init(jaxprune.prune(optax.sgd(0.1), masks={
        **_masks(), "b": {"kernel": jnp.ones((4, 2))}})), TypeError,
                 "the initial mask of b/kernel has dtype float32",
                 id="prune-masks-dtype"),
    pytest.param(_update(_flipout(), grads=_TRANSPOSED), ValueError,
                 _GRADS_SHAPE, id="flipout-grads-shape"),
    pytest.param(_update(_flipout(), state_params=_ONLY_A), ValueError,
                 "the masks in the optimizer state", id="flipout-state"),
    pytest.param(_update(_flipout(), state=_prune().init(_P)), TypeError,
                 "state of type PruneState, not the FlipOutState",
                 id="flipout-state-type"),
    pytest.param(_update(jaxprune.project_l1(1.0), grads=_TRANSPOSED),
                 ValueError, "the shape of the updates tree at a/kernel is",
                 id="project_l1-grads-shape"),
    pytest.param(_update(jaxprune.project_l1(1.0), state_params=_ONLY_A),
                 ValueError, "the masks in the optimizer state",
                 id="project_l1-state"),
    pytest.param(_snip(jaxprune.snip, masks={"a": _masks()["a"]}), ValueError,
                 "the masks given to jaxprune.snip", id="snip-masks"),
    pytest.param(lambda: jaxprune.apply_masks(_P, {"a": _masks()["a"]}),
                 ValueError, "the structure of the masks is not that",
                 id="apply_masks-structure"),
    pytest.param(lambda: jaxprune.apply_masks(
        _P, {**_masks(), "b": {"kernel": jnp.ones((1, 2), bool)}}), ValueError,
                 r"a mask of shape \(1, 2\) cannot mask a param of shape \(4, 2\)",
                 id="apply_masks-shape"),
    pytest.param(lambda: jaxprune.connectivity(
        _apply, _P, {**_masks(), "b": {"kernel": jnp.ones((2, 4), bool)}},
        (3,)), ValueError, r"the mask of b/kernel has shape \(2, 4\)",
                 id="connectivity"),
    pytest.param(lambda: jaxprune.masks_of(_P), ValueError,
                 "masks_of found no pruning state", id="masks_of-none"),
    pytest.param(lambda: jaxprune.masks_of((_prune().init(_P),) * 2),
                 ValueError, "masks_of found 2 pruning states",
                 id="masks_of-two"),
])
def test_trees_that_do_not_match(fn, error, match):
  _raises(fn, error, match)


@pytest.mark.parametrize("make", [
    lambda: jaxprune.dual_ascent(jaxprune.density_constraint(0.5), dual_lr=0.1),
    lambda: jaxprune.l0_penalty(0.1),
    jaxprune.clip_log_alpha,
], ids=["dual_ascent", "l0_penalty", "clip_log_alpha"])
def test_gate_transformations_check_the_updates_tree(make):
  params = _gated()
  tx = make()
  grads = {"b": params["b"]}
  _raises(lambda: tx.update(grads, tx.init(params), params), ValueError,
          _GRADS_STRUCTURE)


def test_dual_ascent_checks_its_state_type():
  params = _gated()
  tx = jaxprune.dual_ascent(jaxprune.density_constraint(0.5), dual_lr=0.1)
  _raises(lambda: tx.update(params, optax.sgd(0.1).init(params), params),
          TypeError, "not the DualAscentState")


# ----------------------------------------- NaN or inf in params and batches


def _with_nan(path=("b", "kernel")):
  params = _params()
  params[path[0]][path[1]] = params[path[0]][path[1]].at[0, 0].set(jnp.nan)
  return params


_NAN_PARAM = "prunable leaf b/kernel holds NaN or inf values"


@pytest.mark.parametrize("fn, match", [
    pytest.param(_init(_prune(), _with_nan()), "jaxprune.prune: " + _NAN_PARAM,
                 id="prune"),
    pytest.param(_init(_flipout(), _with_nan()),
                 "jaxprune.flipout: " + _NAN_PARAM, id="flipout"),
    pytest.param(_snip(jaxprune.snip, _with_nan()), _NAN_PARAM, id="snip"),
    pytest.param(_snip(jaxprune.snip_it, _with_nan()), _NAN_PARAM,
                 id="snip_it"),
    pytest.param(_snip(jaxprune.grasp, _with_nan()), _NAN_PARAM, id="grasp"),
    pytest.param(_synflow(_with_nan()), _NAN_PARAM, id="synflow"),
])
def test_nan_in_params(fn, match):
  _raises(fn, ValueError, match)


@pytest.mark.parametrize("fn, match", [
    pytest.param(lambda: jaxprune.snip(_loss, _params(),
                                       [jnp.full((2, 3), jnp.nan)],
                                       sparsity=0.5),
                 "score of a/kernel is NaN or inf", id="snip"),
    pytest.param(lambda: jaxprune.snap_it(_loss, _params(),
                                          [jnp.full((2, 3), jnp.inf)],
                                          sparsity=0.5, layers=["a", "b"]),
                 "score of a is NaN or inf", id="snap_it"),
])
def test_non_finite_scores_before_training(fn, match):
  _raises(fn, ValueError, match)


def test_synflow_path_sum_overflow_suggests_float64():
  params = {f"l{i}": {"kernel": jnp.full((2, 2), 1e10)} for i in range(4)}

  def chain(params, x):
    for name in sorted(params):
      x = jax.nn.relu(x @ params[name]["kernel"])
    return x

  _raises(lambda: jaxprune.synflow(chain, params, (2,), sparsity=0.5,
                                   rounds=1),
          ValueError, r"the path sum R is inf at round 0.* use float64 params")


# ---------------------------- NaN or inf in gradients and scores, under jit


def _train(tx, grads_at, steps, params=None):
  """Params and states after each of ``steps`` jitted updates."""
  params = _params() if params is None else params
  state = tx.init(params)

  @jax.jit
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  history = []
  for t in range(steps):
    params, state = step(params, state, grads_at(t))
    history.append((params, state))
  return history


def _nan_gradients(t):
  """Ones, with NaN at a/kernel[0, 0] (a small weight) from step 1 on, and
  everywhere in b/kernel at step 3."""
  grads = jax.tree.map(jnp.ones_like, _params())
  if t >= 1:
    grads["a"]["kernel"] = grads["a"]["kernel"].at[0, 0].set(jnp.nan)
  if t == 3:
    grads["b"]["kernel"] = jnp.full((4, 2), jnp.nan)
  return grads


def _kernels(tree):
  return [np.asarray(tree["a"]["kernel"]), np.asarray(tree["b"]["kernel"])]


@pytest.mark.parametrize("inner", [optax.sgd(0.01, momentum=0.9),
                                   optax.adam(0.01)], ids=["sgd", "adam"])
def test_nan_gradients_keep_exact_counts_and_pruned_weights_zero(inner):
  # Prunes layerwise at steps 0 (a weight of each layer), 2 (half) and 4
  # (three quarters), with NaN gradients as in _nan_gradients.
  tx = jaxprune.prune(inner, criterion=criteria.magnitude,
                      schedule=schedules.piecewise([0, 2, 4], [0.1, 0.5, 0.75]),
                      allocation="layerwise")
  history = _train(tx, _nan_gradients, 5)
  kept = [[11, 7], [11, 7], [6, 4], [6, 4], [3, 2]]
  for t, (params, state) in enumerate(history):
    masks = _kernels(jaxprune.masks_of(state))
    assert [int(m.sum()) for m in masks] == kept[t], t
    if t < 4:
      for w, m in zip(_kernels(params), masks):
        assert np.all(w[~m] == 0.0), t  # pruned while finite: exactly 0
  # a/kernel[0, 0] was pruned at step 0 (the smallest weight), so its NaN
  # gradients never reached the params.
  assert np.all(np.isfinite(_kernels(history[4][0])[0]))
  # The NaN gradients of step 3 make the kept weights of b NaN; the pruned
  # ones stay 0, and the inner state of the pruned weights stays finite.
  params, state = history[3]
  b, alive_b = _kernels(params)[1], _kernels(jaxprune.masks_of(state))[1]
  assert np.all(np.isnan(b[alive_b])) and np.all(b[~alive_b] == 0.0)
  for leaf in jax.tree.leaves(state.inner_state):
    if jnp.shape(leaf) == (4, 2):
      assert np.all(np.isfinite(np.asarray(leaf)[~alive_b]))
  # Step 4 ranks b's 4 NaN survivors last (all tied: the first 2 are kept)
  # and counts them.  No update turns NaN into 0: the 2 it prunes stay NaN
  # in the params, the older zeros stay 0, and apply_masks zeroes them all.
  params, state = history[4]
  (a, b), (mask_a, mask_b) = (_kernels(params),
                              _kernels(jaxprune.masks_of(state)))
  assert np.all(a[~mask_a] == 0.0)
  assert int(state.nan_scores) == 4
  assert np.array_equal(mask_b, alive_b & (np.cumsum(alive_b) <= 2).reshape(
      alive_b.shape))
  assert np.all(np.isnan(b[alive_b])) and np.all(b[~alive_b] == 0.0)
  masked = jaxprune.apply_masks(params, jaxprune.masks_of(state))
  assert np.all(np.asarray(masked["b"]["kernel"])[~mask_b] == 0.0)


def test_apply_if_finite_skips_the_nan_steps():
  def grads_at(t):  # NaN at the calls 1 and 2
    return _nan_gradients(1) if t in (1, 2) else _nan_gradients(0)

  tx = optax.apply_if_finite(
      jaxprune.prune(optax.sgd(0.1), criterion=criteria.magnitude,
                     schedule=schedules.one_shot(0.5, at_step=1),
                     allocation="layerwise"),
      max_consecutive_errors=5)
  params, state = _train(tx, grads_at, 4)[-1]
  assert int(state.total_notfinite) == 2
  assert int(state.inner_state.step) == 2  # the skipped calls did not count
  masks = _kernels(jaxprune.masks_of(state))
  assert sum(int(m.sum()) for m in masks) == 10  # pruned at the 4th call
  for w, m in zip(_kernels(params), masks):
    assert np.all(np.isfinite(w)) and np.all(w[~m] == 0.0)


def test_nan_and_inf_scores_rank_as_documented():
  poisoned = jnp.arange(12).reshape(3, 4) % 3 == 0  # 4 NaN scores in a

  def scores(params, grads, key):
    s = criteria.magnitude(params, grads, key)
    s["a"]["kernel"] = jnp.where(poisoned, jnp.nan, s["a"]["kernel"])
    s["b"]["kernel"] = s["b"]["kernel"].at[0, 0].set(jnp.inf)
    return s

  # Global ranking (the NaN gradient test above ranks layerwise).
  tx = _prune(criterion=scores)
  _, state = jax.jit(tx.update)(_params(), tx.init(_params()), _params())
  masks = _kernels(jaxprune.masks_of(state))
  assert sum(int(m.sum()) for m in masks) == 10
  assert not np.any(masks[0] & np.asarray(poisoned))  # NaN ranks last
  assert masks[1][0, 0]  # inf ranks first
  assert int(state.nan_scores) == 4


def test_nan_gradients_in_flipout():
  # Events at steps 2 and 4 halve the 20 weights; NaN gradients everywhere
  # in b at step 3 make b's kept weights NaN.  The counts stay exact, and
  # the weights pruned at step 2, while finite, stay exactly 0.
  def grads_at(t):
    grads = jax.tree.map(jnp.ones_like, _params())
    if t == 3:
      grads["b"]["kernel"] = jnp.full((4, 2), jnp.nan)
    return grads

  tx = jaxprune.flipout(optax.sgd(0.01), prune_every=2, rate=0.5, noise=0.0)
  history = _train(tx, grads_at, 5)
  counts = [sum(int(m.sum()) for m in _kernels(jaxprune.masks_of(s)))
            for _, s in history]
  assert counts == [20, 20, 10, 10, 5]
  pruned_at_2 = [~m for m in _kernels(jaxprune.masks_of(history[2][1]))]
  for params, _ in history[2:]:
    for w, pruned in zip(_kernels(params), pruned_at_2):
      assert np.all(w[pruned] == 0.0)
  assert np.all(np.isnan(_kernels(history[3][0])[1][~pruned_at_2[1]]))


@pytest.mark.parametrize("project", [jaxprune.projections.l1_ball,
                                     jaxprune.projections.l21_ball,
                                     jaxprune.projections.l11_ball],
                         ids=["l1", "l21", "l11"])
def test_nan_in_a_projected_leaf_gives_nan_never_finite(project):
  x = jnp.asarray(np.arange(1.0, 13.0).reshape(3, 4)).at[1, 2].set(jnp.nan)
  assert np.all(np.isnan(np.asarray(project(x, 1.0))))
  y = np.asarray(project(x.at[1, 2].set(jnp.inf), 1.0))
  assert np.isnan(y[1, 2]) and np.all(np.nan_to_num(y)[[0, 2]] == 0.0)


# --------------------------------------- a density target that cannot be met

_TINY = {"big": jnp.ones((4, 4)), "one": jnp.ones((1, 1)),
         "two": jnp.ones((1, 1))}
_EMPTIED = "keeps 1 of 18 weights, fewer than the 3 prunable tensors"


@pytest.mark.parametrize("fn, match", [
    pytest.param(_init(_prune(schedule=schedules.constant(0.95)), _TINY),
                 _EMPTIED, id="prune"),
    pytest.param(_init(_flipout(final_sparsity=0.95), _TINY),
                 "final_sparsity 0.95 " + _EMPTIED, id="flipout"),
    pytest.param(lambda: jaxprune.snip(lambda p, x: jnp.sum(p["big"]), _TINY,
                                       _BATCHES, sparsity=0.95),
                 _EMPTIED, id="snip"),
    pytest.param(lambda: jaxprune.synflow(lambda p, x: x @ p["big"], _TINY,
                                          (4,), sparsity=0.95, rounds=1),
                 _EMPTIED, id="synflow"),
    pytest.param(_snap_it(params={
        "a": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)},
        "b": {"kernel": jnp.ones((2, 2)), "bias": jnp.zeros(2)},
        "c": {"kernel": jnp.ones((2, 1))}}, layers=["a", "b", "c"],
                           sparsity=0.9),
                 "keeps 1 of 4 hidden units, fewer than the 2 hidden layers",
                 id="snap_it"),
    pytest.param(lambda: jaxprune.density_constraint(0.01),
                 "density target 0.01 cannot be met", id="density_constraint"),
    pytest.param(lambda: jaxprune.dual_ascent(
        jaxprune.density_constraint([0.5, 0.5, 0.5], scope="layer"),
        dual_lr=0.1).init(_gated()),
                 "3 layer targets for 2 gated layers", id="dual_ascent-layers"),
])
def test_density_target_that_cannot_be_met(fn, match):
  _raises(fn, ValueError, match)


def test_layerwise_keeps_one_weight_per_tensor_below_sparsity_one():
  tx = _prune(schedule=schedules.constant(0.99), allocation="layerwise")
  _, state = jax.jit(tx.update)(_TINY, tx.init(_TINY), _TINY)
  assert {k: int(m.sum()) for k, m in jaxprune.masks_of(state).items()} == {
      "big": 1, "one": 1, "two": 1}


# ------------------------------------------------ data files: checksums


def test_data_file_with_a_wrong_checksum(tmp_path):
  data = pytest.importorskip("experiments.data")
  path = tmp_path / "train-images-idx3-ubyte.gz"
  path.write_bytes(b"not mnist")
  found = hashlib.sha256(b"not mnist").hexdigest()
  with pytest.raises(data.ChecksumError,
                     match=f"is corrupt or not the original: expected sha256 "
                           f"{'0' * 64}, found sha256 {found}"):
    data.check_sha256(path, "0" * 64)
  assert data.check_sha256(path, found.upper()) == path
  with pytest.raises(ValueError, match="64 hexadecimal digits, got 'abc'"):
    data.check_sha256(path, "abc")
  with pytest.raises(TypeError, match="expected must be a sha256 digest"):
    data.check_sha256(path, None)


# ------------------------------------------- the documentation's tables


def _named_tests(text):
  return re.findall(r"`(test_\w+\.py)::(test_\w+)", text)


def test_the_documentation_names_tests_that_exist():
  root = pathlib.Path(__file__).resolve().parent.parent
  pages = [root / "README.md", *sorted((root / "docs").rglob("*.md")),
           *sorted((root / "benchmarks").rglob("*.md")),
           *sorted((root / "experiments").rglob("*.md"))]
  for page in pages:
    for file, name in _named_tests(page.read_text()):
      assert f"def {name}(" in (root / "tests" / file).read_text(), (page, file, name)


def test_the_bad_input_guide_names_its_tests():
  guide = pathlib.Path(__file__).resolve().parent.parent / "docs/guides/bad-input.md"
  assert len(_named_tests(guide.read_text())) > 30


# --------------------------------------- misuse that used to be accepted


@pytest.mark.parametrize("fn", [
    lambda batches: jaxprune.snip(_loss, _params(), batches, sparsity=0.5),
    lambda batches: jaxprune.snip_it(_loss, _params(), batches, sparsity=0.5),
    lambda batches: jaxprune.grasp(_loss, _params(), batches, sparsity=0.5),
    lambda batches: jaxprune.scores.sensitivity(_loss, _params(), batches),
    lambda batches: jaxprune.scores.gradient_flow(_loss, _params(), batches),
    lambda batches: jaxprune.snap_it(_loss, _params(), batches, sparsity=0.5,
                                     layers=("a", "b")),
], ids=["snip", "snip_it", "grasp", "sensitivity", "gradient_flow", "snap_it"])
def test_one_array_given_as_the_batches(fn):
  # Iterated, a (2, 3) array would be two batches of one row each.
  with pytest.raises(TypeError, match=r"got one array of shape \(2, 3\), which "
                     r"would be read as 2 batches of one row each; pass \[batch\]"):
    fn(jnp.ones((2, 3)))
  with pytest.raises(TypeError, match="got one array"):
    fn(np.ones((2, 3)))
  with pytest.raises(TypeError, match=r"would be read as 1 batch of one row; "
                     r"pass \[batch\]"):
    fn(jnp.ones((1, 3)))


@pytest.mark.parametrize("mask, dtype", [
    (jnp.full((4, 2), 0.2), "float32"), (jnp.ones((4, 2), jnp.int8), "int8"),
    (jnp.full((4, 2), jnp.nan), "float32")], ids=["float", "int8", "nan"])
def test_apply_masks_refuses_masks_that_are_not_boolean(mask, dtype):
  # A 0.2 "mask" used as a condition would keep every weight.
  with pytest.raises(TypeError, match=f"the mask of b/kernel has dtype {dtype}; "
                     "masks are boolean"):
    jaxprune.apply_masks(_params(), {**_masks(), "b": {"kernel": mask}})


@pytest.mark.parametrize("fn", [
    lambda: schedules.one_shot(0.5, at_step=2**31),
    lambda: schedules.polynomial(0.9, begin_step=0, end_step=2**31,
                                 frequency=10),
    lambda: schedules.piecewise([2**31], [0.5]),
], ids=["one_shot", "polynomial", "piecewise"])
def test_steps_past_the_int32_step_counter(fn):
  with pytest.raises(ValueError, match=r"must be at most 2\*\*31 - 1 \(the "
                     r"step counter is int32\)"):
    fn()
  assert schedules.one_shot(0.5, at_step=2**31 - 1).steps == (2**31 - 1,)
