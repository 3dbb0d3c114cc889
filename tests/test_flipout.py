"""jaxprune.flipout: flip counts, scores and exact counts against numpy."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference
import stepping
from test_optimizers import _OPTIMIZERS
from test_optimizers import _STEPS
from test_optimizers import _train

import jaxprune

_NEVER = 2**31 - 1  # a prune_every that never comes


def _kernels(tree):
  return [tree["a"], tree["b"]]


_run = stepping.run_steps


def _random_grads(params, t):
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(t), len(leaves))
  return jax.tree.unflatten(
      treedef, [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
  )


def _params(seed=0):
  rng = np.random.default_rng(seed)
  normal = lambda *shape: jnp.asarray(rng.normal(size=shape).astype(np.float32))
  return {"a": normal(6, 5), "b": normal(3, 2, 4), "bias": normal(5)}


def _expected_alive(total, tensors, rate, final_sparsity, events):
  """alive_n = alive_{n-1} - floor(rate * alive_{n-1}), with both floors."""
  stop = tensors if final_sparsity is None else total - round(final_sparsity * total)
  alive = total
  for _ in range(events):
    alive = max(alive - int(rate * alive), stop, tensors)
  return alive


# ----------------------------------------------- flips, scores, exact counts

_VALUES = np.array([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0], np.float32)


def _reference_run(start, targets, prune_every, rate, p, final_sparsity):
  """numpy: masks, flip counts and kernels after every step."""
  w = [np.asarray(x) for x in start]
  masks = [np.ones(x.shape, bool) for x in w]
  flips = [np.zeros(x.shape, np.int64) for x in w]
  total = sum(x.size for x in w)
  alive, events, out = total, 0, []
  for t, target in enumerate(targets):
    if t > 0 and t % prune_every == 0:
      events += 1
      kept = _expected_alive(total, len(w), rate, final_sparsity, events)
      if kept < alive:
        scores = [np.abs(x.astype(np.float64)) ** p / (f + 1) for x, f in zip(w, flips)]
        masks = reference.keep_top_k(scores, masks, [0] * len(w), [kept],
                                     force_best=True)
        alive = kept
    new = [np.where(m, x, np.float32(0)) for m, x in zip(masks, target)]
    flips = [np.where(m, f + (np.sign(n) != np.sign(o)), 0)
             for m, f, n, o in zip(masks, flips, new, w)]
    w = new
    out.append((w, masks, flips))
  return out


@pytest.mark.usefixtures("strict_dtypes")
@pytest.mark.parametrize("rate, final_sparsity", [(0.5, None), (0.3, 0.75)])
def test_flips_and_masks_match_numpy_on_a_chosen_trajectory(rate, final_sparsity):
  # SGD with lr 1 and grads w - target moves every kernel exactly to the
  # chosen target (all values are small dyadic numbers): sign changes
  # through zero, ties in the scores, counters across pruning events.
  rng = np.random.default_rng(1)
  params = {"a": jnp.asarray(rng.choice(_VALUES, (4, 5))),
            "b": jnp.asarray(rng.choice(_VALUES, (3, 2, 2))),
            "bias": jnp.zeros(5)}
  targets = [[rng.choice(_VALUES, k.shape) for k in _kernels(params)]
             for _ in range(14)]
  tx = jaxprune.flipout(optax.sgd(1.0), prune_every=3, rate=rate, noise=0.0,
                        final_sparsity=final_sparsity)

  def grads_fn(params, t):
    a, b = targets[t]
    return {"a": params["a"] - a, "b": params["b"] - b,
            "bias": jnp.zeros(5)}

  history, traces = _run(tx, params, grads_fn, len(targets))
  want = _reference_run(_kernels(params), targets, 3, rate, 2.0, final_sparsity)
  assert traces == 1
  survivors_flipped_before_event = False
  for t, ((p, state), (w, masks, flips)) in enumerate(zip(history, want)):
    got_flips = _kernels(jaxprune.flip_counts(state))
    for got, expected in zip(_kernels(p), w):
      np.testing.assert_array_equal(np.asarray(got), expected, err_msg=f"step {t}")
    for got, expected in zip(_kernels(jaxprune.masks_of(state)), masks):
      np.testing.assert_array_equal(np.asarray(got), expected, err_msg=f"step {t}")
    for got, expected in zip(got_flips, flips):
      assert got.dtype == jnp.uint16
      np.testing.assert_array_equal(np.asarray(got), expected, err_msg=f"step {t}")
    if t == 2:  # the counts that the event at t = 3 ranks, and keeps
      survivors_flipped_before_event = any(
          np.any((f > 1) & m) for f, m in zip(flips, want[3][1]))
  assert survivors_flipped_before_event
  assert int(history[-1][1].events) == 4
  assert jaxprune.flip_counts(history[-1][1])["bias"] is None


@pytest.mark.usefixtures("strict_dtypes")
@pytest.mark.parametrize("max_steps, dtype", [(None, np.uint16), (200, np.uint8),
                                              (70_000, np.uint32)])
def test_flip_counters_saturate_at_the_dtype_max(max_steps, dtype):
  params = {"w": jnp.array([[1.0, 1.0, 1.0, 1.0]])}
  tx = jaxprune.flipout(optax.sgd(1.0), prune_every=_NEVER, noise=0.0,
                        max_steps=max_steps)
  top = np.iinfo(dtype).max
  state = tx.init(params)
  assert jaxprune.flip_counts(state)["w"].dtype == dtype
  state = state._replace(flips={"w": jnp.array([[top - 2, top - 1, top, 0]], dtype)})
  history, _ = _run(tx, params, lambda p, t: {"w": 2.0 * p["w"]}, 3, state=state)
  counts = [np.asarray(jaxprune.flip_counts(s)["w"]).ravel().tolist()
            for _, s in history]
  assert counts == [[top - 1, top, top, 1], [top, top, top, 2], [top, top, top, 3]]


def test_pruned_counters_are_zero_and_pruned_weights_stay_zero():
  params = _params()
  tx = jaxprune.flipout(optax.sgd(0.5), prune_every=2, noise=0.0)
  # grads 4 w: every step takes w to -w.
  history, _ = _run(tx, params,
                    lambda p, t: jax.tree.map(lambda x: 4.0 * x, p), 7)
  for p, state in history:
    masks, flips = jaxprune.masks_of(state), jaxprune.flip_counts(state)
    for m, f, k in zip(_kernels(masks), _kernels(flips), _kernels(p)):
      assert np.all(np.asarray(f)[~np.asarray(m)] == 0)
      assert np.all(np.asarray(k)[~np.asarray(m)] == 0.0)
  final_flips = _kernels(jaxprune.flip_counts(history[-1][1]))
  final_masks = _kernels(jaxprune.masks_of(history[-1][1]))
  # w -> -w every step: every surviving weight flipped at every step.
  assert all(np.all(np.asarray(f)[np.asarray(m)] == 7)
             for f, m in zip(final_flips, final_masks))


@pytest.mark.parametrize("rate, final_sparsity", [(0.5, None), (0.5, 0.9),
                                                  (0.3, None), (0.7, 0.95)])
def test_exact_counts_after_every_event(rate, final_sparsity):
  params = _params(2)
  tx = jaxprune.flipout(optax.sgd(0.01, momentum=0.9), prune_every=2, rate=rate,
                        final_sparsity=final_sparsity)
  history, _ = _run(tx, params, _random_grads, 24)
  total = sum(k.size for k in _kernels(params))
  alive_counts = []
  for t, (p, state) in enumerate(history):
    events = t // 2  # the events at steps 2, 4, ..., t
    want = _expected_alive(total, 2, rate, final_sparsity, events)
    masks = _kernels(jaxprune.masks_of(state))
    assert sum(int(m.sum()) for m in masks) == want, t
    assert all(int(m.sum()) >= 1 for m in masks)
    assert int(state.events) == events
    assert sum(int((np.asarray(k) != 0).sum()) for k in _kernels(p)) <= want
    alive_counts.append(want)
  stop = 2 if final_sparsity is None else total - round(final_sparsity * total)
  formula = (1 - jaxprune.flipout_sparsity(rate, 3)) * total
  assert formula <= alive_counts[6] < formula + 1 / rate or alive_counts[6] == stop


def test_score_uses_the_magnitude_for_odd_powers():
  # The authors' signed power would rank every negative weight last.
  params = {"w": jnp.array([[-3.0, 0.1, -0.2, 2.0]]),
            "v": jnp.array([[-5.0, 1.0]])}
  tx = jaxprune.flipout(optax.sgd(0.0), prune_every=1, p=3.0, noise=0.0)
  history, _ = _run(tx, params, lambda p, t: p, 2)
  masks = jaxprune.masks_of(history[-1][1])
  assert np.asarray(masks["w"]).ravel().tolist() == [True, False, False, True]
  assert np.asarray(masks["v"]).ravel().tolist() == [True, False]


def test_flip_counts_change_the_ranking():
  # Equal magnitudes; the two weights that flipped twice go first.
  params = {"w": jnp.full((2, 4), 1.0)}
  signs = jnp.array([[1.0, -1.0, 1.0, 1.0], [-1.0, 1.0, 1.0, 1.0]])
  tx = jaxprune.flipout(optax.sgd(1.0), prune_every=2, noise=0.0)

  def grads(p, t):  # step 0: w -> signs; step 1: w -> 1; step 2: the event
    target = [signs, jnp.ones((2, 4)), p["w"]][t]
    return {"w": p["w"] - target}

  history, _ = _run(tx, params, grads, 3)
  assert jaxprune.flip_counts(history[1][1])["w"].ravel().tolist() == [
      0, 2, 0, 0, 2, 0, 0, 0]
  mask = np.asarray(jaxprune.masks_of(history[-1][1])["w"])
  # Keeps 4 of the six weights scoring 1, by flat index.
  assert mask.ravel().tolist() == [True, False, True, True, False, True, False, False]


# ------------------------------------------------------------------ the noise


def test_noiseless_runs_are_the_inner_optimizer_on_masked_gradients():
  params = _params(3)
  inner = optax.adam(1e-1)
  tx = jaxprune.flipout(inner, prune_every=3, noise=0.0)
  history, _ = _run(tx, params, _random_grads, 10)
  again, _ = _run(tx, params, _random_grads, 10)
  for (p1, s1), (p2, s2) in zip(history, again):
    for x, y in zip(jax.tree.leaves((p1, s1)), jax.tree.leaves((p2, s2))):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

  expected, inner_state = params, inner.init(params)
  for t, (got, state) in enumerate(history):
    masks = jaxprune.masks_of(state)
    keep = lambda m, x: x if m is None else jnp.where(m, x, 0.0)
    grads = jax.tree.map(keep, masks, _random_grads(expected, t),
                         is_leaf=lambda x: x is None)
    updates, inner_state = inner.update(grads, inner_state, expected)
    expected = jax.tree.map(keep, masks, optax.apply_updates(expected, updates),
                            is_leaf=lambda x: x is None)
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)


def test_noise_is_reproducible_from_the_seed():
  params = _params()

  def updates(seed):
    """The updates of steps 0 and 1 from the same state and gradients."""
    tx = jaxprune.flipout(optax.sgd(1.0), prune_every=1, final_sparsity=0.0,
                          seed=seed)  # no pruning: quick to compile
    step = jax.jit(tx.update)
    state = tx.init(params)
    out = []
    for t in (0, 1):
      at_t = state._replace(step=jnp.asarray(t, jnp.int32))
      u, _ = step(_random_grads(params, 0), at_t, params)
      out.append(np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(u)]))
    return out

  first, again, other = updates(3), updates(3), updates(4)
  np.testing.assert_array_equal(first, again)
  assert not np.any(first[0] == other[0])
  assert not np.any(first[0] == first[1])  # fresh noise at every step


def test_noise_scale_is_the_rms_of_each_masked_gradient():
  rng = np.random.default_rng(0)
  params = {"big": jnp.ones((200, 100)), "bias": jnp.ones(100),
            "still": jnp.ones((10, 10))}
  alive = np.arange(200)[:, None] >= 100  # half of "big" is pruned
  grads = {"big": jnp.asarray(np.where(alive, 3.0, 50.0) * np.ones((200, 100)),
                              jnp.float32),
           "bias": jnp.asarray(0.01 * rng.normal(size=100), jnp.float32),
           "still": jnp.zeros((10, 10))}
  tx = jaxprune.flipout(optax.sgd(1.0), prune_every=1, final_sparsity=0.0,
                        noise=0.5, seed=7)
  state = tx.init(params)
  big_mask = jnp.asarray(np.broadcast_to(alive, (200, 100)))
  state = state._replace(masks={**state.masks, "big": big_mask})
  updates, _ = jax.jit(tx.update)(grads, state, params)

  def draws(name, rms):
    return (-np.asarray(updates[name]) - np.asarray(grads[name])) / (0.5 * rms)

  # The norm is that of the masked gradient, over all 20000 entries.
  big = draws("big", math.sqrt(100 * 100 * 9.0 / 20000))[alive[:, 0]]
  assert abs(big.mean()) < 0.05 and abs(big.std() - 1) < 0.03
  np.testing.assert_array_equal(np.asarray(updates["big"])[~alive[:, 0]], -1.0)
  bias_rms = float(np.sqrt(np.mean(np.square(np.asarray(grads["bias"])))))
  bias = draws("bias", bias_rms)
  assert abs(bias.mean()) < 0.3 and abs(bias.std() - 1) < 0.25
  np.testing.assert_array_equal(np.asarray(updates["still"]), 0.0)


def test_noise_can_be_injected():
  params = _params()
  injected = optax.inject_hyperparams(
      lambda noise: jaxprune.flipout(optax.sgd(0.1), prune_every=2, noise=noise)
  )(noise=0.0)
  plain = jaxprune.flipout(optax.sgd(0.1), prune_every=2, noise=0.0)
  got, traces = _run(injected, params, _random_grads, 5)
  want, _ = _run(plain, params, _random_grads, 5)
  for (p1, s1), (p2, s2) in zip(got, want):
    for x, y in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    np.testing.assert_array_equal(jaxprune.flip_counts(s1)["a"],
                                  jaxprune.flip_counts(s2)["a"])
  assert traces == 1
  step = jax.jit(injected.update)
  params, state = got[-1]
  grads = _random_grads(params, 5)
  quiet, _ = step(grads, state, params)
  state.hyperparams["noise"] = jnp.asarray(1.0, jnp.float32)
  loud, _ = step(grads, state, params)
  assert step._cache_size() == 1
  assert not np.any(np.asarray(quiet["bias"]) == np.asarray(loud["bias"]))


# ------------------------------------------- every optimizer, jit, inspection


@pytest.mark.parametrize("name", list(_OPTIMIZERS))
def test_pruned_weights_stay_zero(name):
  tx = jaxprune.flipout(_OPTIMIZERS[name], prune_every=25, final_sparsity=0.9)
  state, losses, leaks, step = _train(tx)
  assert leaks.tolist() == [0] * _STEPS
  assert step._cache_size() == 1
  kernels = [state.params[f"Dense_{i}"]["kernel"] for i in range(3)]
  total = sum(k.size for k in kernels)
  assert sum(int(m.sum()) for m in jax.tree.leaves(state.masks)) == (
      total - round(0.9 * total))
  assert sum(int((k == 0).sum()) for k in kernels) >= round(0.9 * total)
  flips = jaxprune.flip_counts(state.opt_state)
  for m, f in zip(jax.tree.leaves(state.masks), jax.tree.leaves(flips)):
    assert np.all(np.asarray(f)[~np.asarray(m)] == 0)
  assert np.all(np.isfinite(losses))


def test_jit_and_no_jit_agree():
  params = _params(4)
  tx = jaxprune.flipout(optax.sgd(0.05, momentum=0.9), prune_every=2, seed=1)
  jitted, traces = _run(tx, params, _random_grads, 4)
  with jax.disable_jit():
    eager, _ = _run(tx, params, _random_grads, 4, jit=False)
  assert traces == 1
  for (pj, sj), (pe, se) in zip(jitted, eager):
    for read in (jaxprune.masks_of, jaxprune.flip_counts):
      for a, b in zip(jax.tree.leaves(read(sj)), jax.tree.leaves(read(se))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(pj), jax.tree.leaves(pe)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_inspection_inside_a_chain():
  params = _params()
  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   jaxprune.flipout(optax.adam(1e-2), prune_every=1))
  history, _ = _run(tx, params, _random_grads, 2)
  state = history[-1][1]
  masks, flips = jaxprune.masks_of(state), jaxprune.flip_counts(state)
  assert sum(int(m.sum()) for m in _kernels(masks)) == 27
  assert masks["bias"] is None and flips["bias"] is None
  assert [f.shape for f in _kernels(flips)] == [(6, 5), (3, 2, 4)]
  with pytest.raises(ValueError, match="no FlipOut state"):
    jaxprune.flip_counts(optax.adam(1e-3).init(params))
  two = optax.chain(jaxprune.flipout(optax.sgd(0.1), prune_every=1),
                    jaxprune.flipout(optax.sgd(0.1), prune_every=1))
  with pytest.raises(ValueError, match="found 2 FlipOut states"):
    jaxprune.flip_counts(two.init(params))


# ------------------------------------------------------------------- helpers


@pytest.mark.parametrize("every, sparsity", [(117, 0.75), (70, 0.9375), (50, 0.9844),
                                             (39, 0.9961), (32, 0.9990)])
def test_schedule_matches_the_authors_table(every, sparsity):
  schedule = jaxprune.flipout_schedule(391, every, 350)
  assert schedule.prune_every == 391 * every
  assert schedule.sparsity == pytest.approx(sparsity, abs=5e-5)


def test_schedule_gives_the_events_of_the_run():
  schedule = jaxprune.flipout_schedule(3, prune_every_epochs=2, epochs=7)
  assert schedule == (6, 3, 1 - 0.5**3)
  tx = jaxprune.flipout(optax.sgd(0.01), prune_every=schedule.prune_every,
                        noise=0.0)
  history, _ = _run(tx, _params(), _random_grads, 7 * 3)
  assert int(history[-1][1].events) == schedule.events
  assert jaxprune.flipout_schedule(3, 2, epochs=6).events == 2  # not after the last


# ----------------------------------------------------------------- bad input


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(prune_every=0), ValueError, "prune_every must be in"),
    (dict(prune_every=2.0), TypeError, "prune_every must be an integer"),
    (dict(prune_every=True), TypeError, "prune_every must be an integer"),
    (dict(rate=0.0), ValueError, r"rate must be in \(0, 1\)"),
    (dict(rate=1.0), ValueError, r"rate must be in \(0, 1\)"),
    (dict(rate="half"), TypeError, "rate must be a number"),
    (dict(p=0.0), ValueError, "p must be > 0"),
    (dict(p=jnp.ones(2)), ValueError, "p must be a scalar"),
    (dict(p="2"), TypeError, "p must be a number"),
    (dict(noise=-0.1), ValueError, "noise must be >= 0"),
    (dict(final_sparsity=1.0), ValueError, r"final_sparsity must be in \[0, 1\)"),
    (dict(final_sparsity="0.9"), TypeError, "final_sparsity must be None or a number"),
    (dict(seed=0.5), TypeError, "seed must be an integer"),
    (dict(max_steps=0), ValueError, "max_steps must be >= 1"),
    (dict(prunable="kernel"), TypeError, "prunable must be a"),
])
def test_bad_arguments(kwargs, error, match):
  with pytest.raises(error, match=match):
    jaxprune.flipout(optax.sgd(0.1), **{"prune_every": 10, **kwargs})


def test_bad_params_at_init_and_update():
  tx = lambda **kw: jaxprune.flipout(optax.sgd(0.1), prune_every=10, **kw)
  with pytest.raises(ValueError, match="selects no leaf"):
    tx(prunable=lambda path, leaf: False).init(_params())
  with pytest.raises(TypeError, match="table has dtype int32"):
    tx(prunable=lambda path, leaf: jnp.ndim(leaf) >= 2).init(
        {**_params(), "table": jnp.zeros((4, 4), jnp.int32)})
  params = _params()
  params["a"] = params["a"].at[0, 0].set(jnp.inf)
  with pytest.raises(ValueError, match="a holds NaN or inf"):
    tx().init(params)
  params = {"a": jnp.ones((10, 10)), "b": jnp.ones((1, 1)), "c": jnp.ones((1, 1))}
  with pytest.raises(ValueError, match="emptied"):
    tx(final_sparsity=0.995).init(params)
  params = _params()
  with pytest.raises(ValueError, match="flipout needs the current params"):
    tx().update(params, tx().init(params))
  with pytest.raises(ValueError, match="masks in the optimizer state"):
    tx().update(params, tx().init({"w": jnp.ones((3, 3))}), params)


def test_bad_helper_arguments():
  with pytest.raises(ValueError, match="epochs must be >= 1"):
    jaxprune.flipout_schedule(10, 2, epochs=0)
  with pytest.raises(TypeError, match="steps_per_epoch must be an integer"):
    jaxprune.flipout_schedule(10.5, 2, epochs=5)
  with pytest.raises(ValueError, match=r"rate must be in \(0, 1\)"):
    jaxprune.flipout_sparsity(1.5, 3)
  with pytest.raises(ValueError, match="events must be >= 0"):
    jaxprune.flipout_sparsity(0.5, -1)
