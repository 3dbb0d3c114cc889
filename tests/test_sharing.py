"""jaxprune.sharing: k-means codebooks against a numpy reference of Lloyd's
algorithm, and centroid fine-tuning that keeps every kept weight on its
centroid bit for bit."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxprune
from jaxprune import sharing


def _bits(x) -> np.ndarray:
  x = np.asarray(x)
  return x.view(np.dtype(f"u{x.dtype.itemsize}"))


# --- a numpy reference of Lloyd's algorithm -----------------------------------


def _reference_init(values, mask, k, init):
  kept = np.sort(np.asarray(values, np.float32)[np.asarray(mask)])
  if init == "linear":
    lo, hi = kept[0], kept[-1]
    return (lo + (hi - lo) * (np.arange(k, dtype=np.float32) / np.float32(k - 1))
            ).astype(np.float32)
  probabilities = (np.arange(k) + 0.5) / k
  return np.quantile(kept.astype(np.float64), probabilities).astype(np.float32)


def _reference_lloyd(values, mask, centroids, iterations):
  """Lloyd's algorithm in float64 sums: assign to the nearest centroid (lower
  index on ties), move each centroid to its mean, keep empty ones, stop when
  no assignment changes."""
  w = np.asarray(values, np.float32).reshape(-1)
  m = np.asarray(mask).reshape(-1)
  c = np.asarray(centroids, np.float32).copy()
  assign = lambda c: np.argmin(np.abs(w[:, None] - c[None, :]), axis=1)
  a = assign(c)
  for _ in range(iterations):
    for j in range(c.size):
      members = w[m & (a == j)]
      if members.size:
        c[j] = np.float32(members.astype(np.float64).mean())
    again = assign(c)
    done = np.array_equal(again[m], a[m])
    a = again
    if done:
      break
  return c, np.where(m, a, 0)


def _case(seed, shape=(12, 10), density=0.4):
  rng = np.random.default_rng(seed)
  values = rng.normal(size=shape).astype(np.float32)
  mask = rng.random(shape) < density
  mask.flat[0] = True
  return values, mask


@pytest.mark.parametrize("init", ["linear", "density"])
@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kmeans_matches_the_numpy_reference(init, bits, seed):
  values, mask = _case(seed)
  start = sharing.initial_centroids(values, mask, bits, init)
  np.testing.assert_allclose(start, _reference_init(values, mask, 2**bits, init),
                             rtol=1e-6, atol=1e-6)
  for iterations in (0, 1, 3, 100):
    want_c, want_a = _reference_lloyd(values, mask, start, iterations)
    got_c, got_a = sharing.kmeans(values, mask, start, iterations=iterations)
    np.testing.assert_array_equal(got_a, want_a)
    np.testing.assert_allclose(got_c, want_c, rtol=1e-5, atol=1e-6)


def test_random_init_draws_distinct_kept_weights_and_matches_the_reference():
  values, mask = _case(3)
  # codebooks splits its key over the shared leaves, in leaf order.
  start = sharing.initial_centroids(values, mask, 3, "random",
                                    key=jax.random.split(jax.random.key(4), 1)[0])
  assert np.all(np.diff(np.asarray(start)) > 0)
  assert set(np.asarray(start).tolist()) <= set(values[mask].tolist())
  shared = sharing.codebooks({"w": values}, {"w": mask}, bits=3, init="random",
                             key=jax.random.key(4), iterations=50)
  c, a = _reference_lloyd(values, mask, start, 50)
  np.testing.assert_array_equal(shared.codebooks["w"].indices.reshape(-1), a)
  np.testing.assert_allclose(shared.codebooks["w"].centroids, c, rtol=1e-5)


def test_random_init_with_fewer_kept_weights_than_centroids():
  values = np.array([3.0, 1.0, 2.0, 9.0], np.float32)
  mask = np.array([True, True, False, False])
  start = sharing.initial_centroids(values, mask, 2, "random",
                                    key=jax.random.key(0))
  assert np.asarray(start).tolist() == [1.0, 1.0, 1.0, 3.0]


def test_empty_clusters_keep_their_centroid():
  values = np.array([0.0, 0.5, 6.0], np.float32)
  mask = np.ones(3, bool)
  centroids, indices = sharing.kmeans(values, mask, np.array([0.0, 2.0, 4.0, 6.0]))
  assert np.asarray(centroids).tolist() == [0.25, 2.0, 4.0, 6.0]
  assert np.asarray(indices).tolist() == [0, 0, 3]


def test_pruned_weights_count_toward_no_centroid():
  values, mask = _case(5)
  other = np.where(mask, values, 1e6).astype(np.float32)
  a = sharing.codebooks({"w": values}, {"w": mask}, bits=3).codebooks["w"]
  b = sharing.codebooks({"w": other}, {"w": mask}, bits=3).codebooks["w"]
  assert np.array_equal(a.centroids, b.centroids)
  assert np.array_equal(a.indices, b.indices)
  assert np.all(np.asarray(a.indices)[~mask] == 0)


def test_codebooks_shape_dtypes_and_shared_params():
  values, mask = _case(6)
  params = {"dense": {"kernel": values, "bias": np.ones(10, np.float32)},
            "out": {"kernel": np.ones((10, 3), jnp.bfloat16)}}
  masks = {"dense": {"kernel": mask, "bias": None}, "out": {"kernel": None}}
  shared = sharing.codebooks(params, masks, bits=lambda path, leaf: 9)
  book = shared.codebooks["dense"]["kernel"]
  assert shared.codebooks["out"]["kernel"] is None
  assert shared.codebooks["dense"]["bias"] is None
  assert book.centroids.dtype == jnp.float32 and book.centroids.shape == (512,)
  assert book.indices.dtype == jnp.uint16 and book.bits == 9
  out = sharing.shared_params(shared)
  w = np.asarray(out["dense"]["kernel"])
  assert np.all(_bits(w[~mask]) == 0)  # +0.0
  np.testing.assert_array_equal(
      w[mask], np.asarray(book.centroids)[np.asarray(book.indices)[mask]])
  np.testing.assert_array_equal(out["dense"]["bias"], params["dense"]["bias"])
  assert out["out"]["kernel"].dtype == jnp.bfloat16
  assert sharing.codebooks(params, masks, bits=2).codebooks[
      "dense"]["kernel"].indices.dtype == jnp.uint8


def test_masks_none_shares_the_kernels_and_prunable_selects():
  params = {"kernel": np.arange(6.0, dtype=np.float32).reshape(2, 3),
            "bias": np.arange(3.0, dtype=np.float32)}
  shared = sharing.codebooks(params, None, bits=1)
  assert shared.codebooks["bias"] is None
  assert bool(shared.codebooks["kernel"].mask.all())
  both = sharing.codebooks(params, None, bits=1, prunable=lambda p, x: True)
  assert both.codebooks["bias"].centroids.tolist() == [0.5, 2.0]


def test_nnx_params_give_the_plain_form():
  model = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
  masks = jaxprune.prune_once(model, sparsity=0.5)
  shared = sharing.codebooks(model, masks, bits=2)
  out = sharing.shared_params(shared)
  assert sorted(out) == ["bias", "kernel"]
  assert int((np.asarray(out["kernel"]) != 0).sum()) == 6
  assert len(np.unique(np.asarray(out["kernel"])[np.asarray(masks["kernel"])])) <= 4


@pytest.mark.parametrize("kwargs, match", [
    ({"bits": 0}, "bits for w must be an integer from 1 to 16"),
    ({"bits": 17}, "from 1 to 16"),
    ({"bits": 2, "init": "kmeans++"}, "unknown init 'kmeans\\+\\+'"),
    ({"bits": 2, "init": "random"}, "needs a PRNG key"),
    ({"bits": 2, "key": jax.random.key(0)}, "for init='random' only"),
    ({"bits": 2, "iterations": -1}, "iterations must be an integer >= 0"),
    ({"bits": 2, "prunable": lambda p, x: False}, "w is pruned .* select it"),
])
def test_bad_arguments_are_named(kwargs, match):
  params = {"w": np.ones((2, 2), np.float32)}
  masks = {"w": np.ones((2, 2), bool)}
  with pytest.raises(ValueError, match=match):
    sharing.codebooks(params, masks, **kwargs)


def test_an_integer_leaf_cannot_share():
  with pytest.raises(TypeError, match="w has dtype int32"):
    sharing.codebooks({"w": np.ones((2, 2), np.int32)}, None, bits=1,
                      prunable=lambda p, x: True)


# --- centroid fine-tuning -------------------------------------------------------


def _assert_on_centroids(params, state, shared):
  books = {("dense", "kernel"): 0, ("out", "kernel"): 1}
  for (a, b), slot in books.items():
    w = np.asarray(params[a][b])
    mask = np.asarray(state.masks[a][b])
    np.testing.assert_array_equal(jaxprune.masks_of(state)[a][b], mask)
    expected = np.asarray(state.centroids[slot])[np.asarray(state.indices[slot])]
    assert np.array_equal(_bits(w[mask]), _bits(expected[mask])), (a, b)
    assert np.all(_bits(w[~mask]) == 0), (a, b)


def _problem(seed=0):
  rng = np.random.default_rng(seed)
  params = {"dense": {"kernel": rng.normal(size=(6, 5)).astype(np.float32),
                      "bias": np.zeros(5, np.float32)},
            "out": {"kernel": rng.normal(size=(5, 2)).astype(np.float32)}}
  masks = jaxprune.prune_once(params, sparsity=0.5)
  shared = sharing.codebooks(params, masks, bits=2)
  x = jnp.asarray(rng.normal(size=(8, 6)).astype(np.float32))
  y = jnp.asarray(rng.normal(size=(8, 2)).astype(np.float32))

  def loss(p):
    h = jnp.tanh(x @ p["dense"]["kernel"] + p["dense"]["bias"][None, :])
    return jnp.mean((h @ p["out"]["kernel"] - y) ** 2)

  return sharing.shared_params(shared), masks, shared, loss


def test_every_kept_weight_stays_on_its_centroid_bitwise():
  params, masks, shared, loss = _problem()
  tx = sharing.fine_tune_centroids(optax.adam(0.05), shared)
  state = tx.init(params)
  step = jax.jit(lambda p, s: tx.update(jax.grad(loss)(p), s, p))
  first = loss(params)
  for _ in range(5):
    updates, state = step(params, state)
    params = optax.apply_updates(params, updates)
    _assert_on_centroids(params, state, shared)
  assert loss(params) < first
  bias = np.asarray(params["dense"]["bias"])
  assert np.any(bias != 0)  # the leaves without a codebook train too


def test_the_centroid_gradient_is_the_sum_of_its_weights_gradients():
  params, masks, shared, loss = _problem(1)
  tx = sharing.fine_tune_centroids(optax.sgd(1.0), shared)
  state = tx.init(params)
  grads = jax.grad(loss)(params)
  _, new = tx.update(grads, state, params)
  for slot, (a, b) in enumerate([("dense", "kernel"), ("out", "kernel")]):
    mask = np.asarray(masks[a][b])
    indices = np.asarray(state.indices[slot])
    g = np.asarray(grads[a][b], np.float64)
    reference = np.zeros(4)
    np.add.at(reference, indices[mask], g[mask])  # a numpy segment sum
    np.testing.assert_allclose(
        np.asarray(state.centroids[slot]) - np.asarray(new.centroids[slot]),
        reference, rtol=1e-5, atol=1e-6)


def test_jit_equals_no_jit():
  params, _, shared, loss = _problem(2)
  tx = sharing.fine_tune_centroids(optax.adam(0.1), shared)

  def run(update):
    p, s = params, tx.init(params)
    for _ in range(3):
      u, s = update(jax.grad(loss)(p), s, p)
      p = optax.apply_updates(p, u)
    return p

  eager, jitted = run(tx.update), run(jax.jit(tx.update))
  for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_with_linen_params():
  model = nn.Dense(3)
  x = jnp.ones((4, 5))
  params = model.init(jax.random.key(0), x)["params"]
  masks = jaxprune.prune_once(params, sparsity=0.6)
  shared = sharing.codebooks(params, masks, bits=2)
  params = sharing.shared_params(shared)
  tx = sharing.fine_tune_centroids(optax.sgd(0.1), shared)
  state = tx.init(params)
  loss = lambda p: jnp.sum(model.apply({"params": p}, x) ** 2)
  for _ in range(2):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    params = optax.apply_updates(params, updates)
  mask = np.asarray(masks["kernel"])
  w = np.asarray(params["kernel"])
  assert np.all(w[~mask] == 0)
  c = np.asarray(state.centroids[0])[np.asarray(state.indices[0])]
  assert np.array_equal(_bits(w[mask]), _bits(c[mask]))
  tuned = sharing.fine_tuned(shared, state, params)
  np.testing.assert_array_equal(sharing.shared_params(tuned)["kernel"], w)


class _MLP(nnx.Module):

  def __init__(self, rngs):
    self.hidden = nnx.Linear(5, 4, rngs=rngs)
    self.out = nnx.Linear(4, 2, rngs=rngs)

  def __call__(self, x):
    return self.out(nnx.relu(self.hidden(x)))


def test_under_nnx_optimizer():
  model = _MLP(nnx.Rngs(0))
  masks = jaxprune.prune_once(model, sparsity=0.5)
  shared = sharing.codebooks(model, masks, bits=2)
  nnx.update(model, nnx.State(sharing.shared_params(shared)))
  optimizer = nnx.Optimizer(model, sharing.fine_tune_centroids(optax.adam(0.05), shared),
                            wrt=nnx.Param)
  x, y = jnp.ones((3, 5)), jnp.zeros((3, 2))

  @nnx.jit
  def step(model, optimizer):
    grads = nnx.grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
    optimizer.update(model, grads)

  for _ in range(6):
    step(model, optimizer)
  tuned = sharing.fine_tuned(shared, optimizer.opt_state, model)
  for layer in ("hidden", "out"):
    mask = np.asarray(masks[layer]["kernel"])
    w = np.asarray(getattr(model, layer).kernel[...])
    book = tuned.codebooks[layer]["kernel"]
    c = np.asarray(book.centroids)[np.asarray(book.indices)]
    assert np.all(_bits(w[~mask]) == 0)
    assert np.array_equal(_bits(w[mask]), _bits(c[mask]))
    assert not np.array_equal(book.centroids,
                              shared.codebooks[layer]["kernel"].centroids)


def test_fine_tune_errors_name_the_problem():
  params, _, shared, _ = _problem()
  with pytest.raises(TypeError, match="SharedWeights"):
    sharing.fine_tune_centroids(optax.sgd(0.1), params)
  tx = sharing.fine_tune_centroids(optax.sgd(0.1), shared)
  with pytest.raises(ValueError, match="no leaf out/kernel"):
    tx.init({"dense": params["dense"]})
  state = tx.init(params)
  with pytest.raises(ValueError, match="update needs the params"):
    tx.update(params, state)
  with pytest.raises(ValueError, match="holds 0 FineTuneState"):
    sharing.fine_tuned(shared, (), params)
