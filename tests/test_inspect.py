"""masks_of finds the masks wherever the state sits; sparsity against numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxprune
from jaxprune import criteria
from jaxprune import schedules

_PARAMS = {
    "dense": {"kernel": jnp.arange(1.0, 13.0).reshape(3, 4), "bias": jnp.ones(4)},
    "out": {"kernel": jnp.arange(1.0, 9.0).reshape(4, 2)},
}
# Fixed masks that keep every weight (the masks replace_masks replaces).
_ALL_KEPT = {"dense": {"kernel": jnp.ones((3, 4), bool), "bias": None},
             "out": {"kernel": jnp.ones((4, 2), bool)}}


def _prune(inner):
  return jaxprune.prune(inner, criterion=criteria.magnitude,
                        schedule=schedules.constant(0.5))


def _step(tx):
  state = tx.init(_PARAMS)
  grads = jax.tree.map(jnp.ones_like, _PARAMS)
  _, state = jax.jit(tx.update)(grads, state, _PARAMS)
  return state


def _check(masks):
  assert masks["dense"]["bias"] is None
  assert masks["dense"]["kernel"].shape == (3, 4)
  assert masks["dense"]["kernel"].dtype == jnp.bool_
  # 20 weights, 10 kept: magnitudes 12..9 of 'dense', then the pairs 8, 7, 6
  # that 'dense' and 'out' share.
  np.testing.assert_array_equal(
      np.asarray(masks["dense"]["kernel"]).ravel(), [False] * 5 + [True] * 7
  )
  np.testing.assert_array_equal(
      np.asarray(masks["out"]["kernel"]).ravel(), [False] * 5 + [True] * 3
  )


@pytest.mark.parametrize(
    "make",
    [
        lambda: _prune(optax.adam(1e-3)),
        lambda: optax.chain(optax.clip_by_global_norm(1.0), _prune(optax.adam(1e-3))),
        lambda: _prune(optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))),
        lambda: _prune(optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)),
        lambda: optax.inject_hyperparams(
            lambda learning_rate: _prune(optax.adam(learning_rate))
        )(learning_rate=1e-3),
        lambda: optax.chain(optax.add_decayed_weights(1e-4),
                            _prune(optax.sgd(0.1, momentum=0.9))),
    ],
    ids=["plain", "in-chain", "wrapping-chain", "wrapping-inject",
         "inside-inject", "after-weight-decay"],
)
def test_masks_of_finds_the_state(make):
  _check(jaxprune.masks_of(_step(make())))


def test_masks_of_without_pruning_state():
  with pytest.raises(ValueError, match="no pruning state"):
    jaxprune.masks_of(optax.adam(1e-3).init(_PARAMS))


def test_masks_of_with_two_pruning_states():
  tx = optax.chain(_prune(optax.sgd(0.1)), _prune(optax.sgd(0.1)))
  with pytest.raises(ValueError, match="found 2 pruning states"):
    jaxprune.masks_of(tx.init(_PARAMS))


def test_sparsity_of_params_and_masks_against_numpy():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(6, 7)).astype(np.float32)
  a[rng.random((6, 7)) < 0.4] = 0
  b = rng.normal(size=(5, 2, 3)).astype(np.float32)
  b[rng.random((5, 2, 3)) < 0.8] = 0
  params = {"a": jnp.asarray(a), "b": jnp.asarray(b), "bias": jnp.zeros(7)}
  report = jax.jit(jaxprune.sparsity)(params)
  want = ((a == 0).sum() + (b == 0).sum()) / (a.size + b.size)
  assert float(report.global_sparsity) == pytest.approx(want)
  assert float(report.per_leaf["a"]) == pytest.approx((a == 0).mean())
  assert float(report.per_leaf["b"]) == pytest.approx((b == 0).mean())
  assert list(report.per_leaf) == ["a", "b"]

  masks = {"a": jnp.asarray(a != 0), "b": jnp.asarray(b != 0), "bias": None}
  from_masks = jaxprune.sparsity(masks)
  assert float(from_masks.global_sparsity) == pytest.approx(want)
  assert list(from_masks.per_leaf) == ["a", "b"]
  assert str(from_masks).splitlines() == [
      f"global  {want:7.2%}", f"a       {(a == 0).mean():7.2%}",
      f"b       {(b == 0).mean():7.2%}"]


def test_sparsity_with_a_predicate():
  params = {"a": jnp.zeros((2, 2)), "bias": jnp.array([0.0, 1.0])}
  report = jaxprune.sparsity(params, prunable=lambda path, leaf: True)
  assert float(report.global_sparsity) == pytest.approx(5 / 6)
  assert float(report.per_leaf["bias"]) == 0.5


def test_sparsity_of_nothing():
  with pytest.raises(ValueError, match="counted no leaf"):
    jaxprune.sparsity({"bias": jnp.zeros(3)})


@pytest.mark.parametrize("packed", [False, True])
def test_replace_masks_sets_the_masks_wherever_the_state_sits(packed):
  tx = optax.chain(optax.clip(1.0), jaxprune.prune(optax.adam(0.1),
                                                   masks=_ALL_KEPT,
                                                   packed_masks=packed))
  state = tx.init(_PARAMS)
  grads = jax.tree.map(jnp.ones_like, _PARAMS)
  _, state = tx.update(grads, state, _PARAMS)
  masks = {"dense": {"kernel": jnp.arange(12).reshape(3, 4) % 3 == 0,
                     "bias": None},
           "out": {"kernel": jnp.arange(8).reshape(4, 2) < 2}}
  new = jaxprune.replace_masks(state, masks)
  got = jaxprune.masks_of(new)
  for layer in ("dense", "out"):
    np.testing.assert_array_equal(got[layer]["kernel"], masks[layer]["kernel"])
  stored = new[1].masks["out"]["kernel"]
  assert isinstance(stored, jaxprune.PackedMask) == packed
  # The inner state is kept (Adam's count and moments), and the next update
  # zeroes what the new masks prune.
  assert int(new[1].inner_state[0].count) == 1
  np.testing.assert_array_equal(new[1].inner_state[0].mu["out"]["kernel"],
                                state[1].inner_state[0].mu["out"]["kernel"])
  updates, _ = jax.jit(tx.update)(grads, new, _PARAMS)
  params = optax.apply_updates(_PARAMS, updates)
  assert np.all(np.asarray(params["out"]["kernel"])[1:] == 0)
  assert np.all(np.asarray(params["out"]["kernel"])[:1] != 0)


def test_replace_masks_checks_its_input():
  state = jaxprune.prune(optax.sgd(0.1), masks=_ALL_KEPT).init(_PARAMS)
  masks = jaxprune.masks_of(state)
  with pytest.raises(ValueError, match="no pruning state"):
    jaxprune.replace_masks(optax.sgd(0.1).init(_PARAMS), masks)
  with pytest.raises(ValueError, match="structure"):
    jaxprune.replace_masks(state, {"dense": masks["dense"]})
  with pytest.raises(ValueError, match="shape"):
    jaxprune.replace_masks(state, {**masks, "out": {"kernel": jnp.ones((2, 4), bool)}})
  with pytest.raises(TypeError, match="boolean"):
    jaxprune.replace_masks(state, {**masks, "out": {"kernel": jnp.ones((4, 2))}})
