"""N:M, block and channel structures against numpy references."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference
from flax import nnx

import jaxprune
from jaxprune import criteria
from jaxprune import schedules
from jaxprune import structures


def _integer_scores(shape, seed, levels=5):
  """Scores with many ties: small integers, some negative."""
  rng = np.random.default_rng(seed)
  return rng.integers(-levels, levels, size=shape).astype(np.float32)


def _matrix(x):
  return x.reshape(int(np.prod(x.shape[:-1])), x.shape[-1])


def n_of_m_reference(scores, alive, n, m):
  """Keep the ``n`` best of every ``m`` consecutive rows of each column of
  the matrix view, by sorting: higher score first, then lower row."""
  matrix, live = _matrix(scores), _matrix(alive)
  keep = np.zeros(matrix.shape, bool)
  for col in range(matrix.shape[1]):
    for start in range(0, matrix.shape[0], m):
      rows = np.arange(start, start + m)
      s = np.where(live[rows, col], matrix[rows, col], -np.inf)
      order = np.lexsort((rows, ~live[rows, col], -s))
      chosen = rows[order[:n]]
      keep[chosen, col] = live[chosen, col]
  return keep.reshape(scores.shape)


def pooled_reference(scores, alive, block, pool):
  """Unit scores of the matrix view cut into ``block`` tiles (channels:
  ``(rows, 1)``), pooled over surviving weights, and whether a unit
  survives."""
  matrix, live = _matrix(scores).astype(np.float64), _matrix(alive)
  rows, cols = block
  grid = (matrix.shape[0] // rows, matrix.shape[1] // cols)
  unit_scores, unit_alive = np.zeros(grid), np.zeros(grid, bool)
  for i in range(grid[0]):
    for j in range(grid[1]):
      tile = matrix[i * rows:(i + 1) * rows, j * cols:(j + 1) * cols]
      tile_alive = live[i * rows:(i + 1) * rows, j * cols:(j + 1) * cols]
      values = tile[tile_alive]
      unit_alive[i, j] = values.size > 0
      if values.size:
        unit_scores[i, j] = {"sum": np.sum, "mean": np.mean,
                             "max": np.max}[pool](values)
  return unit_scores, unit_alive


def expand_reference(unit_kept, shape, block):
  rows, cols = block
  full = np.repeat(np.repeat(unit_kept, rows, axis=0), cols, axis=1)
  return full.reshape(shape)


_SHAPES = [(8, 6), (2, 3, 4, 8), (12, 5)]


def _params(shapes=_SHAPES, seed=0):
  return {f"l{i}": jnp.asarray(_integer_scores(s, seed + i))
          for i, s in enumerate(shapes)}


def _abs_magnitude(params):
  return [np.abs(np.asarray(params[k])) for k in sorted(params)]


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (3, 4), (1, 2)])
def test_n_of_m_keeps_exactly_n_of_every_group_as_the_reference(n, m):
  params = _params()
  masks = jaxprune.prune_once(params, sparsity=1 - n / m,
                              structure=structures.n_of_m(n, m))
  for name, scores in zip(sorted(params), _abs_magnitude(params)):
    expected = n_of_m_reference(scores, np.ones(scores.shape, bool), n, m)
    np.testing.assert_array_equal(np.asarray(masks[name]), expected, name)
    groups = _matrix(np.asarray(masks[name])).reshape(-1, m, scores.shape[-1])
    assert (groups.sum(axis=1) == n).all()


def test_n_of_m_along_a_chosen_axis():
  w = jnp.asarray(_integer_scores((3, 8, 2), 4))
  masks = jaxprune.prune_once({"w": w}, sparsity=0.5,
                              structure=structures.n_of_m(2, 4, axis=1))
  moved = np.moveaxis(np.abs(np.asarray(w)), 1, -1)  # groups along the last
  expected = n_of_m_reference(moved.reshape(-1, 8).T,
                              np.ones((8, 6), bool), 2, 4).T.reshape(moved.shape)
  np.testing.assert_array_equal(np.asarray(masks["w"]),
                                np.moveaxis(expected, -1, 1))


def test_n_of_m_keeps_pruned_weights_pruned_and_counts_nan_last():
  w = jnp.array([[4.0], [3.0], [2.0], [1.0]])
  alive = jnp.array([[False], [True], [True], [True]])
  masks = jaxprune.prune_once({"w": w}, sparsity=0.5, masks={"w": alive},
                              structure=structures.n_of_m(2, 4))
  assert np.asarray(masks["w"])[:, 0].tolist() == [False, True, True, False]
  nan_scores = lambda params, grads, key: {"w": jnp.array(
      [[jnp.nan], [3.0], [jnp.nan], [1.0]])}
  masks = jaxprune.prune_once({"w": w}, sparsity=0.5, criterion=nan_scores,
                              structure=structures.n_of_m(2, 4))
  assert np.asarray(masks["w"])[:, 0].tolist() == [False, True, False, True]


@pytest.mark.parametrize("kind,allocation,pool", [
    ("block", "global", "mean"), ("block", "layerwise", "sum"),
    ("block", "global_topk", "max"), ("channels", "global", "max"),
    ("channels", "layerwise", "mean"), ("channels", "global_topk", "sum"),
])
def test_pooled_units_match_the_reference(kind, allocation, pool):
  params = _params([(8, 6), (2, 2, 4, 6), (4, 12)], seed=3)
  sparsity = 0.6
  if kind == "block":
    structure, blocks = structures.block((2, 3), pool=pool), [(2, 3)] * 3
  else:
    structure = structures.channels(pool=pool)
    blocks = [(int(np.prod(params[k].shape[:-1])), 1) for k in sorted(params)]
  masks = jaxprune.prune_once(params, sparsity=sparsity, allocation=allocation,
                              structure=structure)
  scores = _abs_magnitude(params)
  units = [pooled_reference(s, np.ones(s.shape, bool), b, pool)
           for s, b in zip(scores, blocks)]
  sizes = [u.size for u, _ in units]
  if allocation == "layerwise":
    group_ids = list(range(len(units)))
    kept = [n - round(sparsity * n) for n in sizes]
  else:
    group_ids = [0] * len(units)
    kept = [sum(sizes) - round(sparsity * sum(sizes))]
  unit_kept = reference.keep_top_k(
      [u for u, _ in units], [a for _, a in units], group_ids, kept,
      force_best=allocation == "global")
  for name, s, b, u in zip(sorted(params), scores, blocks, unit_kept):
    expected = expand_reference(u, s.shape, b)
    np.testing.assert_array_equal(np.asarray(masks[name]), expected, name)
  total_units = sum(int(u.sum()) for u in unit_kept)
  assert total_units == sum(kept)


def test_blocks_are_all_or_nothing_and_the_weight_sparsity_is_exact():
  params = _params([(8, 8), (16, 4)], seed=5)
  masks = jaxprune.prune_once(params, sparsity=0.75,
                              structure=structures.block((4, 4)))
  for name in params:
    tiles = np.asarray(masks[name]).reshape(
        params[name].shape[0] // 4, 4, params[name].shape[1] // 4, 4)
    assert np.all(tiles.all(axis=(1, 3)) == tiles.any(axis=(1, 3)))
  kept = sum(int(np.asarray(m).sum()) for m in masks.values())
  assert kept == 16 * (8 - round(0.75 * 8))  # 8 blocks of 16 weights


def test_shapes_that_do_not_divide_raise_naming_the_leaf():
  params = {"conv1": {"kernel": jnp.ones((5, 5, 1, 20))},
            "dense": {"kernel": jnp.ones((8, 6))}}
  with pytest.raises(ValueError, match=r"conv1/kernel.*25 weights, not a multiple of 4"):
    jaxprune.prune_once(params, sparsity=0.5, structure=structures.n_of_m(2, 4))
  with pytest.raises(ValueError, match=r"dense/kernel.*\[8, 6\].*4 x 4 blocks"):
    jaxprune.prune_once(params, sparsity=0.5, structure=structures.block((4, 4)),
                        prunable=lambda path, leaf: path[0] == "dense")
  with pytest.raises(ValueError, match="axis 3.*dense/kernel"):
    jaxprune.prune_once(params, sparsity=0.5,
                        structure=structures.n_of_m(1, 2, axis=3),
                        prunable=lambda path, leaf: path[0] == "dense")
  masks = jaxprune.prune_once(params, sparsity=0.5,
                              structure=structures.n_of_m(2, 4),
                              prunable=lambda path, leaf: path[0] == "dense")
  assert masks["conv1"]["kernel"] is None


def test_bad_structures_and_schedules_raise():
  with pytest.raises(ValueError, match="n < m"):
    structures.n_of_m(4, 4)
  with pytest.raises(ValueError, match="m must be"):
    structures.n_of_m(1, 64)
  with pytest.raises(ValueError, match="pool must be one of"):
    structures.channels(pool="median")
  with pytest.raises(ValueError, match="two positive ints"):
    structures.block((4,))
  with pytest.raises(TypeError, match="structure must be made by"):
    jaxprune.prune(optax.sgd(0.1), criterion=criteria.magnitude,
                   schedule=schedules.one_shot(0.5, 0), structure=(2, 4))
  with pytest.raises(ValueError, match=r"n_of_m\(2, 4\).*sparsity of 0.5.*End the schedule at 0.5"):
    jaxprune.prune(optax.sgd(0.1), criterion=criteria.magnitude,
                   schedule=schedules.one_shot(0.9, 0),
                   structure=structures.n_of_m(2, 4))
  with pytest.raises(ValueError, match="allocation 'erk' does not apply"):
    jaxprune.prune_once(_params(), sparsity=0.5, allocation="erk",
                        structure=structures.n_of_m(2, 4))
  with pytest.raises(ValueError, match="N:M structure does not apply to FlipOut"):
    jaxprune.flipout(optax.sgd(0.1), prune_every=2,
                     structure=structures.n_of_m(2, 4))
  with pytest.raises(ValueError, match="keeps 2 units of w, but the masks leave only 1"):
    jaxprune.prune_once({"w": jnp.ones((4, 2))}, sparsity=0.0,
                        masks={"w": jnp.zeros((4, 2), bool).at[0, 0].set(True)},
                        structure=structures.channels(), allocation="layerwise")


def test_a_gradual_schedule_passes_through_denser_patterns_to_n_of_m():
  params = {"w": jnp.asarray(_integer_scores((16, 4), 9, levels=100))}
  tx = jaxprune.prune(
      optax.sgd(0.0), criterion=criteria.magnitude,
      schedule=schedules.polynomial(0.5, begin_step=0, end_step=4, frequency=2,
                                    power=1),
      structure=structures.n_of_m(2, 4))
  state = tx.init(params)
  step = jax.jit(tx.update)
  per_group = []
  for _ in range(5):
    _, state = step(jax.tree.map(jnp.zeros_like, params), state, params)
    groups = np.asarray(jaxprune.masks_of(state)["w"]).reshape(4, 4, 4)
    per_group.append(sorted(set(groups.sum(axis=1).ravel().tolist())))
  assert per_group == [[4], [4], [3], [3], [2]]
  final = n_of_m_reference(np.abs(np.asarray(params["w"])),
                           np.ones((16, 4), bool), 2, 4)
  np.testing.assert_array_equal(np.asarray(jaxprune.masks_of(state)["w"]), final)


class _Mlp(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(16)(x))
    x = nn.relu(nn.Dense(16)(x))
    return nn.Dense(4)(x)


_OPTIMIZERS = {
    "momentum": optax.sgd(0.1, momentum=0.9),
    "adamw": optax.adamw(1e-2, weight_decay=0.5),
    "lion": optax.lion(1e-3, weight_decay=0.1),
    "adafactor": optax.adafactor(1e-2),
}
_STRUCTURES = {
    "2:4": (structures.n_of_m(2, 4), 0.5),
    "block-4x4": (structures.block((4, 4)), 0.75),
    "channels": (structures.channels(), 0.5),
}


# Every structure under AdamW (against the eager step too), and each of the
# other optimizers under one structure: the zeroing does not depend on it.
@pytest.mark.parametrize("structure,optimizer", [
    ("2:4", "adamw"), ("block-4x4", "adamw"), ("channels", "adamw"),
    ("2:4", "lion"), ("block-4x4", "momentum"), ("channels", "adafactor"),
])
def test_pruned_weights_stay_exactly_zero_and_jit_equals_no_jit(structure, optimizer):
  kind, sparsity = _STRUCTURES[structure]
  x = jax.random.normal(jax.random.key(0), (32, 8))
  y = jnp.argmax(x[:, :4], axis=1)
  model = _Mlp()
  params = model.init(jax.random.key(1), x)["params"]
  tx = jaxprune.prune(
      _OPTIMIZERS[optimizer], criterion=criteria.magnitude,
      schedule=schedules.polynomial(sparsity, begin_step=0, end_step=20,
                                    frequency=10),
      structure=kind)

  def step(params, state):
    def loss_fn(p):
      logits = model.apply({"params": p}, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    grads = jax.grad(loss_fn)(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  jitted = jax.jit(step)
  eager = (params, tx.init(params))
  fast = eager
  for t in range(30):
    fast = jitted(*fast)
    if optimizer == "adamw" and t < 21:  # through both mask updates
      eager = step(*eager)
      np.testing.assert_equal(
          jax.tree.map(np.asarray, jaxprune.masks_of(eager[1])),
          jax.tree.map(np.asarray, jaxprune.masks_of(fast[1])))
      for a, b in zip(jax.tree.leaves(eager[0]), jax.tree.leaves(fast[0])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5,
                                   atol=1e-6)
    masks = jaxprune.masks_of(fast[1])
    for m, p in zip(jax.tree.leaves(masks), jax.tree.leaves(
        jax.tree.map(lambda m, p: p if m is not None else None, masks, fast[0],
                     is_leaf=lambda v: v is None))):
      assert not np.any(np.asarray(p)[~np.asarray(m)])
  assert jitted._cache_size() == 1
  kernels = [np.asarray(masks[f"Dense_{i}"]["kernel"]) for i in range(3)]
  if structure == "2:4":
    for k in kernels:
      assert (k.reshape(-1, 4, k.shape[-1]).sum(axis=1) == 2).all()
  elif structure == "channels":
    assert all(np.all(k.all(axis=0) == k.any(axis=0)) for k in kernels)
    units = sum(k.shape[-1] for k in kernels)
    assert sum(int(k.all(axis=0).sum()) for k in kernels) == units - round(0.5 * units)


def test_flipout_removes_whole_channels():
  params = {"a": jnp.asarray(_integer_scores((6, 8), 1)),
            "b": jnp.asarray(_integer_scores((8, 4), 2))}
  tx = jaxprune.flipout(optax.sgd(0.01), prune_every=2, rate=0.5, noise=0.0,
                        structure=structures.channels())
  state = tx.init(params)
  step = jax.jit(tx.update)
  for _ in range(5):
    grads = jax.tree.map(jnp.ones_like, params)
    updates, state = step(grads, state, params)
    params = optax.apply_updates(params, updates)
  masks = jaxprune.masks_of(state)
  kept = [int(np.asarray(masks[k]).all(axis=0).sum()) for k in "ab"]
  # 12 channels; two events remove floor(0.5 * 12) = 6, then 3.
  assert sum(kept) == 3 and min(kept) >= 1
  for k in "ab":
    m = np.asarray(masks[k])
    assert np.all(m.all(axis=0) == m.any(axis=0))


class _NnxMlp(nnx.Module):

  def __init__(self, rngs):
    self.hidden = nnx.Linear(8, 16, rngs=rngs)
    self.out = nnx.Linear(16, 4, rngs=rngs)

  def __call__(self, x):
    return self.out(nnx.relu(self.hidden(x)))


@pytest.mark.parametrize("structure", list(_STRUCTURES))
def test_nnx_optimizer_gives_the_masks_of_the_functional_step(structure):
  kind, sparsity = _STRUCTURES[structure]
  model = _NnxMlp(nnx.Rngs(0))
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  make = lambda: jaxprune.prune(
      optax.adam(1e-2), criterion=criteria.magnitude,
      schedule=schedules.one_shot(sparsity, at_step=0), structure=kind)
  optimizer = nnx.Optimizer(model, make(), wrt=nnx.Param)
  x = jax.random.normal(jax.random.key(0), (16, 8))
  grads = nnx.grad(lambda m: jnp.mean(m(x) ** 2))(model)
  optimizer.update(model, grads)
  tx = make()
  plain_grads = nnx.to_pure_dict(grads)
  _, state = tx.update(plain_grads, tx.init(params), params)
  nnx_masks, masks = jaxprune.masks_of(optimizer), jaxprune.masks_of(state)
  for path in (("hidden", "kernel"), ("out", "kernel")):
    np.testing.assert_array_equal(np.asarray(nnx_masks[path[0]][path[1]]),
                                  np.asarray(masks[path[0]][path[1]]))
  kernel = np.asarray(model.hidden.kernel.value)
  assert not np.any(kernel[~np.asarray(masks["hidden"]["kernel"])])
  assert masks["hidden"]["bias"] is None


def test_prune_once_takes_per_leaf_rates_with_a_structure():
  params = _params([(8, 6), (4, 12)], seed=7)
  rates = {"l0": 0.5, "l1": 0.75}
  masks = jaxprune.prune_once(params, sparsity=rates, allocation="layerwise",
                              structure=structures.channels())
  assert int(np.asarray(masks["l0"]).all(axis=0).sum()) == 3
  assert int(np.asarray(masks["l1"]).all(axis=0).sum()) == 3
