"""Per-group counts and ERK densities, against formulas computed here."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference

import jaxprune
from jaxprune import _allocation
from jaxprune import _flipout
from jaxprune import schedules

_SHAPES = [(784, 300), (300, 100), (100, 10), (5, 5, 1, 20)]


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.9, 0.999])
def test_global_prunes_round_s_n(sparsity):
  total = sum(math.prod(s) for s in _SHAPES)
  assert _allocation.kept_counts(sparsity, _SHAPES, "global") == [
      total - round(sparsity * total)
  ]


# n = 1000 at s = 1 - 0.5 / n: s * n is exactly 999.5, which Python's round
# (half to even) takes to 1000, pruning every weight.
_EDGE_SHAPE, _EDGE_SPARSITY = (40, 25), 0.9995


@pytest.mark.parametrize("allocation", _allocation.ALLOCATIONS)
def test_a_sparsity_below_one_keeps_a_weight_at_the_half_to_even_edge(
    allocation):
  assert round(_EDGE_SPARSITY * 1000) == 1000  # the edge is real
  assert _allocation.kept_in_group(_EDGE_SPARSITY, 1000) == 1
  assert _allocation.kept_counts(
      _EDGE_SPARSITY, [_EDGE_SHAPE], allocation) == [1]
  assert _allocation.kept_counts(1.0, [_EDGE_SHAPE], allocation) == [0]
  # Two tensors still cannot share one weight under "global".
  if allocation == "global":
    with pytest.raises(ValueError, match="emptied"):
      _allocation.kept_counts(_EDGE_SPARSITY, [(20, 25), (20, 25)], allocation)


@pytest.mark.parametrize("allocation", _allocation.ALLOCATIONS)
def test_prune_keeps_one_weight_at_the_half_to_even_edge(allocation):
  params = {"w": jax.random.normal(jax.random.key(0), _EDGE_SHAPE)}
  tx = jaxprune.prune(optax.sgd(0.1), criterion=jaxprune.criteria.magnitude,
                      schedule=schedules.constant(_EDGE_SPARSITY),
                      allocation=allocation)
  state = tx.init(params)
  _, state = jax.jit(tx.update)(jax.tree.map(jnp.zeros_like, params), state,
                                params)
  mask = np.asarray(jaxprune.masks_of(state)["w"])
  assert mask.sum() == 1
  assert mask.reshape(-1)[np.argmax(np.abs(np.asarray(params["w"])))]


def test_flipout_and_snap_it_targets_follow_the_count_rule_at_the_edge():
  # FlipOut's final target: one weight of a 1000-weight tensor.
  assert _flipout._kept_after_events(1000, 1, 0.5, _EDGE_SPARSITY)[-1] == 1
  # SNAP-it: one of 1000 hidden units.
  key = jax.random.split(jax.random.key(0), 3)
  params = {"hidden": {"kernel": jax.random.normal(key[0], (4, 1000)),
                       "bias": jnp.zeros(1000)},
            "out": {"kernel": jax.random.normal(key[1], (1000, 2)),
                    "bias": jnp.zeros(2)}}
  def loss_fn(p, x):
    h = jax.nn.relu(x @ p["hidden"]["kernel"] + p["hidden"]["bias"][None])
    return jnp.mean((h @ p["out"]["kernel"] + p["out"]["bias"][None]) ** 2)
  x = jax.random.normal(key[2], (16, 4))
  nodes = jaxprune.snap_it(loss_fn, params, [x], sparsity=_EDGE_SPARSITY,
                           layers=["hidden", "out"], steps=1)
  assert int(nodes["hidden"].sum()) == 1


def test_global_raises_rather_than_empty_a_tensor():
  with pytest.raises(ValueError, match="emptied"):
    _allocation.kept_counts(0.99, [(10, 10), (1, 1), (1, 1)], "global")
  assert _allocation.kept_counts(1.0, [(10, 10), (1, 1)], "global") == [0]


def test_global_topk_counts_as_global_and_may_empty_a_tensor():
  assert _allocation.group_layout(_SHAPES, "global_topk") == (
      _allocation.group_layout(_SHAPES, "global"))
  assert _allocation.kept_counts(0.4, _SHAPES, "global_topk") == (
      _allocation.kept_counts(0.4, _SHAPES, "global"))
  # Where "global" refuses: 1 weight kept for 3 tensors.
  assert _allocation.kept_counts(
      0.99, [(10, 10), (1, 1), (1, 1)], "global_topk") == [1]


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.75, 0.95])
def test_layerwise_prunes_round_s_n_per_tensor(sparsity):
  kept = _allocation.kept_counts(sparsity, _SHAPES, "layerwise")
  assert kept == [
      math.prod(s) - round(sparsity * math.prod(s)) for s in _SHAPES
  ]


def test_layerwise_never_empties_a_tensor_below_sparsity_one():
  # round(0.9 * 3) = 3 would empty the tensor: one weight is kept instead.
  assert _allocation.kept_counts(0.9, [(3, 1), (10, 10)], "layerwise") == [1, 10]
  assert _allocation.kept_counts(1.0, [(3, 1), (10, 10)], "layerwise") == [0, 0]


@pytest.mark.parametrize("density", [0.02, 0.1, 0.3, 0.8])
def test_erk_densities_match_the_formula(density):
  got = np.array(_allocation.erk_densities(_SHAPES, density))
  want = reference.erk_densities_by_bisection(_SHAPES, density)
  np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
  sizes = np.array([math.prod(s) for s in _SHAPES])
  np.testing.assert_allclose((got * sizes).sum(), density * sizes.sum())
  # Below the cap, density is proportional to sum(shape) / prod(shape).
  free = got < 1
  ratio = got[free] / (np.array([sum(s) for s in _SHAPES])[free] / sizes[free])
  np.testing.assert_allclose(ratio, ratio[0])


def test_erk_caps_small_layers_at_dense():
  densities = _allocation.erk_densities(_SHAPES, 0.8)
  assert densities[2] == 1.0  # 100x10 has the largest sum/prod
  assert all(0 < d <= 1 for d in densities)


def test_erk_counts_round_each_tensor():
  density = 0.1
  kept = _allocation.kept_counts(1 - density, _SHAPES, "erk")
  densities = _allocation.erk_densities(_SHAPES, density)
  for k, d, shape in zip(kept, densities, _SHAPES):
    n = math.prod(shape)
    assert k == n - min(round((1 - d) * n), n - 1)


def test_erk_never_empties_a_tensor_below_sparsity_one():
  # At 1 - 2**-53 the large tensor's density is 4e-18, and 1 - d is 1.0.
  shapes = [(100, 100), (9999, 1)]
  assert _allocation.kept_counts(1 - 2**-53, shapes, "erk") == [1, 1]
  assert _allocation.kept_counts(1.0, shapes, "erk") == [0, 0]


def test_layout():
  assert _allocation.group_layout(_SHAPES, "global") == (
      (0, 0, 0, 0), (sum(math.prod(s) for s in _SHAPES),)
  )
  assert _allocation.group_layout(_SHAPES, "erk")[0] == (0, 1, 2, 3)


def test_unknown_allocation():
  with pytest.raises(ValueError, match="unknown allocation 'uniform'"):
    _allocation.kept_counts(0.5, _SHAPES, "uniform")
