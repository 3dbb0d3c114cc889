"""SNIP and SNIP-it: sensitivities against finite differences, exact rounds."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference

import jaxprune
from jaxprune import schedules

strict_dtypes = pytest.mark.usefixtures("strict_dtypes")


def _params(seed=0):
  rng = np.random.default_rng(seed)
  return {
      "hidden": {"kernel": jnp.asarray(rng.normal(size=(6, 5)), jnp.float32),
                 "bias": jnp.asarray(rng.normal(size=5) * 0.1, jnp.float32)},
      "out": {"kernel": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32),
              "bias": jnp.zeros(3, jnp.float32)},
  }


def _forward(params, x, xp=jnp):
  h = xp.tanh(x @ params["hidden"]["kernel"] + params["hidden"]["bias"][None])
  return h @ params["out"]["kernel"] + params["out"]["bias"][None]


def _loss(params, batch):
  x, y = batch
  return jnp.mean((_forward(params, x) - y) ** 2)


def _batches(count, seed=1):
  rng = np.random.default_rng(seed)
  return [
      (jnp.asarray(rng.normal(size=(16, 6)), jnp.float32),
       jnp.asarray(rng.normal(size=(16, 3)), jnp.float32))
      for _ in range(count)
  ]


def _numpy_loss(params, batches):
  total = 0.0
  for x, y in batches:
    out = _forward(params, np.asarray(x, np.float64), xp=np)
    total += np.mean((out - np.asarray(y, np.float64)) ** 2)
  return total


@strict_dtypes
def test_sensitivity_matches_central_differences():
  params = _params()
  batches = _batches(3)
  got = jaxprune.scores.sensitivity(_loss, params, batches)
  params64 = jax.tree.map(lambda p: np.asarray(p, np.float64), params)
  eps = 1e-6
  for layer in ("hidden", "out"):
    w = params64[layer]["kernel"]
    grad = np.zeros_like(w)
    for index in np.ndindex(w.shape):
      for sign in (1, -1):
        shifted = jax.tree.map(np.copy, params64)
        shifted[layer]["kernel"][index] += sign * eps
        grad[index] += sign * _numpy_loss(shifted, batches) / (2 * eps)
    np.testing.assert_allclose(
        np.asarray(got[layer]["kernel"]), np.abs(grad * w), rtol=2e-3,
        atol=1e-6)


def test_round_sparsities_of_the_paper():
  got = schedules.geometric_rounds(0.98)
  np.testing.assert_allclose(got, [0.5, 0.74, 0.86, 0.92, 0.95, 0.965, 0.98])
  assert schedules.geometric_rounds(0.4) == (0.4,)
  assert schedules.geometric_rounds(0.9, steps=0) == (0.5, 0.9)
  with pytest.raises(ValueError, match="steps"):
    schedules.geometric_rounds(0.9, steps=-1)
  with pytest.raises(ValueError, match="sparsity"):
    schedules.geometric_rounds(1.5)


@strict_dtypes
def test_snip_keeps_the_top_sensitivities_exactly():
  params = _params()
  batches = _batches(2)
  masks = jaxprune.snip(_loss, params, batches, sparsity=0.8)
  scores = jaxprune.scores.sensitivity(_loss, params, batches)
  kernels = [np.asarray(scores[l]["kernel"]) for l in ("hidden", "out")]
  alive = [np.ones(k.shape, bool) for k in kernels]
  kept = 45 - round(0.8 * 45)
  want = reference.keep_top_k(kernels, alive, [0, 0], [kept], force_best=True)
  for layer, w in zip(("hidden", "out"), want):
    np.testing.assert_array_equal(np.asarray(masks[layer]["kernel"]), w)
  assert masks["hidden"]["bias"] is None


@strict_dtypes
def test_snip_with_global_topk_is_the_plain_top_k_and_can_empty_a_layer():
  # The papers' SNIP keeps no weight per tensor.  With the hidden kernel
  # scaled down, three output weights outrank every hidden one, so keeping
  # 3 of the 45 weights empties the hidden kernel under plain top-k, where
  # "global" keeps the hidden kernel's best weight.
  params = _params()
  params["hidden"]["kernel"] = params["hidden"]["kernel"] * 0.01
  batches = _batches(2)
  scores = jaxprune.scores.sensitivity(_loss, params, batches)
  kernels = [np.asarray(scores[l]["kernel"]) for l in ("hidden", "out")]
  alive = [np.ones(k.shape, bool) for k in kernels]
  assert np.sum(kernels[1] > kernels[0].max()) >= 3
  kept = 45 - round(0.93 * 45)
  assert kept == 3
  masks = {}
  for allocation, force_best in (("global_topk", False), ("global", True)):
    masks[allocation] = jaxprune.snip(_loss, params, batches, sparsity=0.93,
                                      allocation=allocation)
    want = reference.keep_top_k(kernels, alive, [0, 0], [kept], force_best)
    for layer, w in zip(("hidden", "out"), want):
      np.testing.assert_array_equal(
          np.asarray(masks[allocation][layer]["kernel"]), w)
  assert not np.asarray(masks["global_topk"]["hidden"]["kernel"]).any()
  assert np.asarray(masks["global"]["hidden"]["kernel"]).sum() == 1
  report = jaxprune.connectivity(_forward, params, masks["global_topk"], (6,))
  assert report.disconnected == ("hidden/kernel", "out/kernel")


@strict_dtypes
def test_snip_it_rounds_rescore_the_surviving_network():
  params = _params()
  batches = _batches(2)
  masks = jaxprune.snip_it(_loss, params, batches, sparsity=0.8, steps=1)
  # By hand: round one at 0.5, round two at 0.8 on the masked params.
  rounds = schedules.geometric_rounds(0.8, steps=1)
  assert rounds == (0.5, 0.65, 0.8)
  current = jax.tree.map(lambda p: np.ones(p.shape, bool), params)
  for sparsity in rounds:
    masked = jax.tree.map(lambda p, m: jnp.where(m, p, 0.0), params, current)
    scores = jaxprune.scores.sensitivity(_loss, masked, batches)
    kernels = [np.asarray(scores[l]["kernel"]) for l in ("hidden", "out")]
    alive = [current[l]["kernel"] for l in ("hidden", "out")]
    want = reference.keep_top_k(kernels, alive, [0, 0],
                                [45 - round(sparsity * 45)], force_best=True)
    current["hidden"]["kernel"], current["out"]["kernel"] = want
  for layer in ("hidden", "out"):
    np.testing.assert_array_equal(
        np.asarray(masks[layer]["kernel"]), current[layer]["kernel"])
  assert sum(int(masks[l]["kernel"].sum()) for l in ("hidden", "out")) == 9


@strict_dtypes
def test_an_iterator_gives_fresh_batches_every_round():
  drawn = []

  def stream():
    for i, batch in enumerate(_batches(20)):
      drawn.append(i)
      yield batch

  jaxprune.snip_it(_loss, _params(), stream(), sparsity=0.9, steps=2,
                   batches_per_round=3)
  assert len(drawn) == 4 * 3  # rounds 0.5, 0.7, 0.8, 0.9
  with pytest.raises(ValueError, match="ran out"):
    jaxprune.snip_it(_loss, _params(), iter(_batches(2)), sparsity=0.9,
                     batches_per_round=2)


@strict_dtypes
def test_layerwise_allocation_prunes_each_tensor_to_the_sparsity():
  masks = jaxprune.snip_it(_loss, _params(), _batches(1), sparsity=0.6,
                           allocation="layerwise")
  assert int(masks["hidden"]["kernel"].sum()) == 30 - 18
  assert int(masks["out"]["kernel"].sum()) == 15 - 9


@strict_dtypes
def test_bad_input_is_named():
  params, batches = _params(), _batches(1)
  with pytest.raises(ValueError, match="sparsity"):
    jaxprune.snip(_loss, params, batches, sparsity=1.2)
  with pytest.raises(ValueError, match="empty"):
    jaxprune.snip(_loss, params, [], sparsity=0.5)
  with pytest.raises(ValueError, match="allocation"):
    jaxprune.snip(_loss, params, batches, sparsity=0.5, allocation="local")
  with pytest.raises(ValueError, match="masks given to jaxprune.snip_it"):
    jaxprune.snip_it(_loss, params, batches, sparsity=0.5,
                     masks={"hidden": {"kernel": jnp.ones((6, 5), bool)}})
  with pytest.raises(ValueError, match="NaN or inf"):
    jaxprune.snip(lambda p, b: _loss(p, b) * jnp.nan, params, batches,
                  sparsity=0.5)
  with pytest.raises(ValueError, match="selects no leaf"):
    jaxprune.snip(_loss, params, batches, sparsity=0.5,
                  prunable=lambda path, leaf: False)


@pytest.mark.parametrize("inner", [optax.adam(1e-2), optax.sgd(0.1, momentum=0.9)])
def test_prune_keeps_snip_masks_through_training(inner):
  params = _params()
  batches = _batches(4)
  masks = jaxprune.snip_it(_loss, params, batches[:2], sparsity=0.9)
  tx = jaxprune.prune(inner, masks=masks)
  params = jaxprune.apply_masks(params, masks)
  state = tx.init(params)

  @jax.jit
  def step(params, state, batch):
    grads = jax.grad(_loss)(params, batch)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for batch in batches * 3:
    params, state = step(params, state, batch)
  for layer in ("hidden", "out"):
    m = np.asarray(masks[layer]["kernel"])
    np.testing.assert_array_equal(
        np.asarray(jaxprune.masks_of(state)[layer]["kernel"]), m)
    assert np.all(np.asarray(params[layer]["kernel"])[~m] == 0.0)
    assert np.any(np.asarray(params[layer]["kernel"])[m] != 0.0)


def test_prune_checks_its_initial_masks():
  params = _params()
  masks = jaxprune.snip(_loss, params, _batches(1), sparsity=0.5)
  with pytest.raises(TypeError, match="boolean"):
    jaxprune.prune(optax.sgd(0.1), masks=jax.tree.map(
        lambda m: m.astype(jnp.float32), masks)).init(params)
  wrong = jax.tree.map(lambda m: m, masks)
  wrong["out"]["kernel"] = jnp.ones((3, 5), bool)
  with pytest.raises(ValueError, match="shape"):
    jaxprune.prune(optax.sgd(0.1), masks=wrong).init(params)
  with pytest.raises(ValueError, match="no schedule"):
    jaxprune.prune(optax.sgd(0.1), criterion=jaxprune.criteria.magnitude)
  with pytest.raises(ValueError, match="no criterion"):
    jaxprune.prune(optax.sgd(0.1), schedule=schedules.constant(0.5))


def test_snip_it_during_training_fires_the_geometric_rounds():
  params = _params()
  schedule = schedules.geometric(0.9, begin_step=2, frequency=3, steps=2)
  tx = jaxprune.prune(optax.adam(1e-2), criterion=jaxprune.criteria.saliency,
                      schedule=schedule)
  state = tx.init(params)
  update = jax.jit(tx.update)
  kept = []
  for batch in _batches(12):
    grads = jax.grad(_loss)(params, batch)
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
    masks = jaxprune.masks_of(state)
    kept.append(sum(int(masks[l]["kernel"].sum()) for l in ("hidden", "out")))
  r = [45 - round(s * 45) for s in schedule.sparsities]  # prune's count rule
  assert kept == [45, 45] + [r[0]] * 3 + [r[1]] * 3 + [r[2]] * 3 + [r[3]]
  assert r == [23, 14, 9, 5]


@strict_dtypes
def test_gradient_flow_is_w_times_hessian_gradient():
  # Least squares: g = X^T (X W - Y) / n and H acts column by column as X^T X / n.
  rng = np.random.default_rng(3)
  x = rng.normal(size=(20, 4)).astype(np.float32)
  y = rng.normal(size=(20, 3)).astype(np.float32)
  w = rng.normal(size=(4, 3)).astype(np.float32)
  loss = lambda p, b: 0.5 * jnp.sum((b[0] @ p["w"] - b[1]) ** 2) / 20
  batches = [(jnp.asarray(x[:10]), jnp.asarray(y[:10])),
             (jnp.asarray(x[10:]), jnp.asarray(y[10:]))]
  got = jaxprune.scores.gradient_flow(loss, {"w": jnp.asarray(w)}, batches)["w"]
  x64, y64, w64 = (a.astype(np.float64) for a in (x, y, w))
  g = x64.T @ (x64 @ w64 - y64) / 20
  np.testing.assert_allclose(np.asarray(got), w64 * (x64.T @ x64 @ g / 20),
                             rtol=1e-4, atol=1e-6)


@strict_dtypes
def test_grasp_keeps_the_highest_gradient_flow_scores():
  params, batches = _params(), _batches(2)
  masks = jaxprune.grasp(_loss, params, batches, sparsity=0.7)
  scores = jaxprune.scores.gradient_flow(_loss, params, batches)
  kernels = [np.asarray(scores[l]["kernel"]) for l in ("hidden", "out")]
  want = reference.keep_top_k(kernels, [np.ones(k.shape, bool) for k in kernels],
                              [0, 0], [45 - round(0.7 * 45)], force_best=True)
  for layer, w in zip(("hidden", "out"), want):
    np.testing.assert_array_equal(np.asarray(masks[layer]["kernel"]), w)


@pytest.mark.parametrize("allocation", ["global", "global_topk"])
@pytest.mark.parametrize("method", ["snip", "snip_it", "grasp"])
def test_one_weight_is_kept_at_the_half_to_even_edge(method, allocation):
  # 1000 weights at 1 - 0.5 / 1000: round(999.5) = 1000 would prune them all.
  rng = np.random.default_rng(0)
  params = {"w": jnp.asarray(rng.normal(size=(40, 25)), jnp.float32)}
  x = jnp.asarray(rng.normal(size=(16, 40)), jnp.float32)
  loss = lambda p, x: jnp.mean(jnp.tanh(x @ p["w"]) ** 2)
  masks = getattr(jaxprune, method)(loss, params, [x], sparsity=0.9995,
                                    allocation=allocation)
  assert int(masks["w"].sum()) == 1


def _two_weights_and_a_bias():
  # L = (w1 + b)^2 / 2 + (w2 + 2b)^2 / 2 at w = (3, -2), b = 0, by hand:
  # g_w = (3, -2), g_b = 3 + 2 * (-2) = -1; H_ww = I, H_wb = (1, 2).
  params = {"kernel": jnp.array([[3.0, -2.0]]), "bias": jnp.zeros(1)}

  def loss(p, batch):
    del batch
    (w1, w2), b = p["kernel"][0], p["bias"][0]
    return 0.5 * (w1 + b) ** 2 + 0.5 * (w2 + 2 * b) ** 2

  return params, loss


def test_grasp_takes_g_and_h_over_the_prunable_leaves_by_default():
  params, loss = _two_weights_and_a_bias()
  # The authors': w * (H_ww g_w) = (3 * 3, -2 * -2) = (9, 4): keep w1.
  got = jaxprune.scores.gradient_flow(loss, params, [None])["kernel"]
  np.testing.assert_allclose(np.asarray(got), [[9.0, 4.0]])
  assert jaxprune.grasp(loss, params, [None], sparsity=0.5)[
      "kernel"].tolist() == [[True, False]]
  # Every leaf: w * (H_ww g_w + H_wb g_b) = (3 * (3 - 1), -2 * (-2 - 2))
  # = (6, 8): keep w2.
  got = jaxprune.scores.gradient_flow(loss, params, [None], all_leaves=True)["kernel"]
  np.testing.assert_allclose(np.asarray(got), [[6.0, 8.0]])
  assert jaxprune.grasp(loss, params, [None], sparsity=0.5, all_leaves=True)[
      "kernel"].tolist() == [[False, True]]


@strict_dtypes
def test_grasp_default_is_gradient_flow_of_the_kernels_alone():
  # The authors' score, formulated apart: differentiate a loss whose only
  # arguments are the kernels, the biases held fixed.
  params, batches = _params(), _batches(2)
  layers = ("hidden", "out")
  kernels = {l: params[l]["kernel"] for l in layers}

  def kernel_loss(k, batch):
    return _loss({l: {"kernel": k[l], "bias": params[l]["bias"]}
                  for l in layers}, batch)

  want = jaxprune.scores.gradient_flow(kernel_loss, kernels, batches, all_leaves=True)
  got = jaxprune.scores.gradient_flow(_loss, params, batches)
  every = jaxprune.scores.gradient_flow(_loss, params, batches, all_leaves=True)
  for l in layers:
    np.testing.assert_allclose(np.asarray(got[l]["kernel"]),
                               np.asarray(want[l]), rtol=1e-5, atol=1e-7)
  assert not np.allclose(np.asarray(every["hidden"]["kernel"]),
                         np.asarray(want["hidden"]), rtol=1e-3)


def test_snip_it_during_training_rescores_fresh_batches_at_an_event():
  # The authors' SNIP-it during training: at an event the sensitivity of the
  # current weights on fresh batches (here 5), the new masks put into the
  # optimizer state, which is kept.  prune(criterion=saliency) ranks by the
  # train step's own gradient instead, and keeps other weights.
  params, train_batches, fresh = _params(), _batches(3), _batches(5, seed=7)
  all_kept = jax.tree.map(lambda p: jnp.ones(p.shape, bool) if p.ndim == 2
                          else None, params)
  tx = jaxprune.prune(optax.adam(1e-2), masks=all_kept)
  state = tx.init(params)
  update = jax.jit(tx.update)
  for batch in train_batches[:2]:
    updates, state = update(jax.grad(_loss)(params, batch), state, params)
    params = optax.apply_updates(params, updates)
  at_event = params
  masks = jaxprune.snip(_loss, params, fresh, sparsity=0.5,
                        masks=jaxprune.masks_of(state))
  state = jaxprune.replace_masks(state, masks)
  params = jaxprune.apply_masks(params, masks)
  scores = jaxprune.scores.sensitivity(_loss, params, fresh)
  kernels = [np.asarray(scores[l]["kernel"]) for l in ("hidden", "out")]
  want = reference.keep_top_k(kernels, [np.ones(k.shape, bool) for k in kernels],
                              [0, 0], [45 - round(0.5 * 45)], force_best=True)
  got = jaxprune.masks_of(state)
  for layer, w in zip(("hidden", "out"), want):
    np.testing.assert_array_equal(np.asarray(got[layer]["kernel"]), w)
  updates, state = update(jax.grad(_loss)(params, train_batches[2]), state,
                          params)
  params = optax.apply_updates(params, updates)
  for layer, w in zip(("hidden", "out"), want):
    assert np.all(np.asarray(params[layer]["kernel"])[~w] == 0)

  # The in-step form, from the same weights and the step's batch.
  step_form = jaxprune.prune(optax.adam(1e-2), criterion=jaxprune.criteria.saliency,
                             schedule=schedules.one_shot(0.5, 0))
  _, step_state = step_form.update(
      jax.grad(_loss)(at_event, train_batches[2]), step_form.init(at_event),
      at_event)
  step_masks = jaxprune.masks_of(step_state)
  assert not all(np.array_equal(step_masks[l]["kernel"], w)
                 for l, w in zip(("hidden", "out"), want))
