"""Properties of jaxprune.prune over random trees, sparsities and optimizers.

For random parameter trees (nested dicts and lists, 1-D to 4-D leaves, the
1-D ones not prunable), four random increasing sparsities (one mask update
every other step), every allocation and two optimizers with momentum, a
jitted training run checks at every step:

(a) exact counts: every group keeps the number of weights computed here, in
    numpy, from the rules (``n - round(s * n)``), and the masks are those of
    a numpy sort of the scores, ties broken by flat index;
(b) pruned weights are exactly 0.0 after every step, whatever the random
    gradients and the optimizer's momentum;
(c) the masks have the structure of the params: a boolean array of the
    leaf's shape for every prunable leaf, ``None`` for the others.

Each example compiles one train step (the kept counts are constants of the
trace; a schedule of four levels tests four sparsities with one compiled
step), so the examples are few and the trees small; the values are drawn
in numpy so that no other function is compiled per shape.
"""

import math

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference

import jaxprune
from jaxprune import criteria
from jaxprune import schedules

# Few distinct values, so that ties are common in the first ranking.
_VALUES = np.array([-2.0, -1.0, 0.5, 1.0, 3.0], np.float32)
_ALLOCATIONS = ("global", "global_topk", "layerwise", "erk")
_INNER = {
    "adam": lambda: optax.adam(0.1),
    "sgd_momentum": lambda: optax.sgd(0.1, momentum=0.9),
}
_LEVELS = 4  # mask updates at the steps 0, 2, 4, 6
_STEPS = 2 * _LEVELS


@st.composite
def _shapes(draw, ndim):
  return tuple(draw(st.lists(st.integers(1, 5), min_size=ndim,
                             max_size=ndim)))


@st.composite
def _trees(draw):
  """A nested tree of shapes: dicts and lists, 1 to 4 leaves, of which at
  least one has 2 to 4 dimensions (prunable) and some have 1 (not)."""
  shapes = [draw(_shapes(draw(st.integers(2, 4))))]
  shapes += [draw(_shapes(draw(st.integers(1, 4))))
             for _ in range(draw(st.integers(0, 3)))]
  shapes = draw(st.permutations(shapes))
  tree, i = {}, 0
  while i < len(shapes):  # group the leaves into dicts and lists
    group = draw(st.integers(1, len(shapes) - i))
    leaves = shapes[i : i + group]
    if group == 1:
      node = leaves[0]
    elif draw(st.booleans()):
      node = list(leaves)
    else:
      node = {f"w{j}": s for j, s in enumerate(leaves)}
    tree[f"layer{len(tree)}"] = node
    i += group
  return tree


@st.composite
def _problems(draw):
  shapes = draw(_trees())
  allocation = draw(st.sampled_from(_ALLOCATIONS))
  inner = draw(st.sampled_from(sorted(_INNER)))
  levels = sorted(draw(st.lists(st.floats(0.0, 1.0, exclude_min=True),
                                min_size=_LEVELS, max_size=_LEVELS,
                                unique=True)))
  return shapes, allocation, inner, levels, draw(st.integers(0, 2**16))


def _is_shape(x):
  return isinstance(x, tuple) and all(isinstance(d, int) for d in x)


def _prunable(shape):
  return len(shape) >= 2  # the default predicate, for float32 leaves


def _expected_kept(sparsity, shapes, allocation):
  """Per-group kept counts from the rules, in numpy, independently."""
  sizes = [math.prod(s) for s in shapes]
  if allocation in ("global", "global_topk"):
    kept = sum(sizes) - round(sparsity * sum(sizes))
    return [max(kept, 1) if sparsity < 1.0 else kept]  # none only at s = 1
  if allocation == "layerwise":
    densities = [1.0 - sparsity] * len(shapes)
  else:
    densities = reference.erk_densities_by_bisection(shapes, 1.0 - sparsity)
  # A tensor keeps at least one weight unless the sparsity is 1.
  return [n - (round((1 - d) * n) if sparsity == 1.0
               else min(round((1 - d) * n), n - 1))
          for n, d in zip(sizes, densities)]


def _prunable_leaves(tree, shape_tree):
  flags = [_prunable(s) for s in jax.tree.leaves(shape_tree, is_leaf=_is_shape)]
  leaves = jax.tree.leaves(tree, is_leaf=lambda x: x is None)
  return [leaf for leaf, flag in zip(leaves, flags) if flag]


@hypothesis.given(_problems())
@hypothesis.settings(max_examples=8)
@pytest.mark.long_running(20)
def test_random_trees_keep_exact_counts_and_pruned_weights_zero(problem):
  shape_tree, allocation, inner, levels, seed = problem
  rng = np.random.default_rng(seed)
  params = jax.tree.map(lambda s: jnp.asarray(rng.choice(_VALUES, s)),
                        shape_tree, is_leaf=_is_shape)
  kernel_shapes = [s for s in jax.tree.leaves(shape_tree, is_leaf=_is_shape)
                   if _prunable(s)]
  kept = [_expected_kept(s, kernel_shapes, allocation) for s in levels]
  hypothesis.event(f"{allocation}, {inner}")

  def make(levels):
    return jaxprune.prune(
        _INNER[inner](), criterion=criteria.magnitude, allocation=allocation,
        schedule=schedules.piecewise(range(0, 2 * len(levels), 2), levels))

  if allocation == "global":  # a level that would empty a tensor: refused
    fits = [s == 1.0 or k[0] >= len(kernel_shapes)
            for s, k in zip(levels, kept)]
    if not all(fits):
      hypothesis.event("a global level refused")
      with pytest.raises(ValueError, match="some tensor would be emptied"):
        make(levels).init(params)
      levels = [s for s, fit in zip(levels, fits) if fit]
      kept = [k for k, fit in zip(kept, fits) if fit]
      if not levels:
        return
  tx = make(levels)

  state = tx.init(params)
  # (c) at init: None exactly for the leaves that are not prunable.
  masks = jaxprune.masks_of(state)
  assert (jax.tree.structure(masks, is_leaf=lambda x: x is None)
          == jax.tree.structure(params))
  for mask, shape in zip(jax.tree.leaves(masks, is_leaf=lambda x: x is None),
                         jax.tree.leaves(shape_tree, is_leaf=_is_shape)):
    assert (mask is None) == (not _prunable(shape))

  @jax.jit
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  group_ids = ([0] * len(kernel_shapes)
               if allocation in ("global", "global_topk")
               else list(range(len(kernel_shapes))))
  alive = [np.ones(s, bool) for s in kernel_shapes]
  for t in range(_STEPS):
    grads = jax.tree.map(
        lambda p: rng.normal(size=np.shape(p)).astype(np.float32), params)
    before = [np.asarray(w) for w in _prunable_leaves(params, shape_tree)]
    params, state = step(params, state, grads)
    masks = [np.asarray(m) for m in
             _prunable_leaves(jaxprune.masks_of(state), shape_tree)]
    if t % 2 == 0 and t // 2 < len(levels):  # (a) a mask update
      level = t // 2
      want = reference.keep_top_k(
          [np.abs(w) for w in before], alive, group_ids, kept[level],
          force_best=allocation == "global")
      for got, w in zip(masks, want):
        np.testing.assert_array_equal(got, w)
      counts = [0] * len(kept[level])
      for m, g in zip(masks, group_ids):
        counts[g] += int(m.sum())
      assert counts == kept[level]
      alive = masks
    else:  # no update: the masks do not change
      for got, a in zip(masks, alive):
        np.testing.assert_array_equal(got, a)
    # (b) pruned weights are exactly zero, (c) the masks keep their form.
    for w, m in zip(_prunable_leaves(params, shape_tree), masks):
      assert m.dtype == np.bool_ and m.shape == np.shape(w)
      assert np.all(np.asarray(w)[~m] == 0.0)
    assert (jax.tree.structure(jaxprune.masks_of(state),
                               is_leaf=lambda x: x is None)
            == jax.tree.structure(params))
