"""Per-group counts and ERK densities, against formulas computed here."""

import math

import numpy as np
import pytest

import reference
from jaxprune import _allocation

_SHAPES = [(784, 300), (300, 100), (100, 10), (5, 5, 1, 20)]


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.9, 0.999])
def test_global_prunes_round_s_n(sparsity):
  total = sum(math.prod(s) for s in _SHAPES)
  assert _allocation.kept_counts(sparsity, _SHAPES, "global") == [
      total - round(sparsity * total)
  ]


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
