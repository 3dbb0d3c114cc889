"""Packed masks: the packing against numpy's, and ``prune(packed_masks=True)``
against the same pruning with boolean masks."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import jaxprune
from jaxprune import _packing
from jaxprune import criteria
from jaxprune import schedules

_SHAPES = [(1,), (7,), (8,), (13,), (5, 9), (3, 4, 16), (2, 3, 3, 17)]


@pytest.mark.parametrize("shape", _SHAPES, ids=str)
def test_bits_are_numpys_little_endian_packbits(shape):
  mask = np.random.default_rng(len(shape)).random(shape) < 0.4
  packed = _packing.pack(jnp.asarray(mask))
  expected = np.packbits(mask, axis=-1, bitorder="little")
  np.testing.assert_array_equal(np.asarray(packed.bits), expected)
  assert packed.bits.dtype == jnp.uint8
  assert packed.shape == shape and packed.length == shape[-1]
  np.testing.assert_array_equal(np.asarray(_packing.unpack(packed)), mask)
  jitted = jax.jit(_packing.unpack)(packed)
  np.testing.assert_array_equal(np.asarray(jitted), mask)


@pytest.mark.parametrize("bad", [jnp.ones((3, 4)), jnp.array(True),
                                 jnp.ones(4, jnp.int32)], ids=str)
def test_only_boolean_arrays_are_packed(bad):
  with pytest.raises(ValueError, match="only boolean masks of at least one"):
    _packing.pack(bad)


def _params():
  rng = np.random.default_rng(0)
  return {"dense": {"kernel": jnp.asarray(rng.normal(size=(12, 13)), jnp.float32),
                    "bias": jnp.zeros(13)},
          "conv": jnp.asarray(rng.normal(size=(3, 3, 2, 16)), jnp.float32)}


def _train(tx, params, steps=9):
  state = tx.init(params)
  step = jax.jit(tx.update)
  for t in range(steps):
    grads = jax.tree.map(lambda p, t=t: jnp.sin(p * (t + 1)), params)
    updates, state = step(grads, state, params)
    params = optax.apply_updates(params, updates)
  return params, state


@pytest.mark.parametrize("inner", [optax.adamw(0.05, weight_decay=0.1),
                                   optax.sgd(0.1, momentum=0.9)],
                         ids=["adamw", "sgd-momentum"])
def test_packed_masks_prune_exactly_as_boolean_masks(inner):
  schedule = schedules.polynomial(0.85, begin_step=0, end_step=6, frequency=2)
  runs = [_train(jaxprune.prune(inner, criterion=criteria.magnitude,
                                schedule=schedule, packed_masks=packed),
                 _params()) for packed in (False, True)]
  (plain_params, plain_state), (params, state) = runs
  assert isinstance(state.masks["conv"], jaxprune.PackedMask)
  assert state.masks["dense"]["bias"] is None
  masks = jaxprune.masks_of(state)
  for got, want in zip(jax.tree.leaves(masks),
                       jax.tree.leaves(jaxprune.masks_of(plain_state))):
    assert got.dtype == jnp.bool_
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(plain_params)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  kernel = np.asarray(params["dense"]["kernel"])
  assert np.all(kernel[~np.asarray(masks["dense"]["kernel"])] == 0.0)
  kept = sum(int(m.sum()) for m in jax.tree.leaves(masks))
  assert kept == 156 + 288 - round(0.85 * (156 + 288))
  assert float(jaxprune.sparsity(state.masks).global_sparsity) == (
      float(jaxprune.sparsity(masks).global_sparsity))


def test_state_holds_one_bit_per_weight_padded_to_whole_bytes():
  tx = jaxprune.prune(optax.sgd(0.1), packed_masks=True,
                      masks=jax.tree.map(lambda p: p > 0 if p.ndim > 1 else None,
                                         _params()))
  state = tx.init(_params())
  sizes = [m.bits.nbytes for m in jax.tree.leaves(
      state.masks, is_leaf=_packing.is_packed)]
  assert sizes == [3 * 3 * 2 * 2, 12 * 2]  # 16 and 13 entries a row
  kept = jaxprune.masks_of(state)
  np.testing.assert_array_equal(np.asarray(kept["conv"]),
                                np.asarray(_params()["conv"] > 0))


def test_a_packed_state_survives_a_checkpoint(tmp_path):
  tx = jaxprune.prune(optax.adam(0.1), criterion=criteria.magnitude,
                      schedule=schedules.one_shot(0.5, at_step=0),
                      packed_masks=True)
  params, state = _train(tx, _params(), steps=2)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(tmp_path / "state", state)
    checkpointer.wait_until_finished()
    restored = checkpointer.restore(tmp_path / "state", jax.eval_shape(lambda: state))
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # Training goes on from the restored state as from the original.
  grads = jax.tree.map(jnp.ones_like, params)
  step = jax.jit(tx.update)
  np.testing.assert_array_equal(
      *(np.asarray(step(grads, s, params)[0]["conv"]) for s in (restored, state)))


def test_packed_masks_must_be_a_bool():
  with pytest.raises(TypeError, match="packed_masks must be True or False"):
    jaxprune.prune(optax.sgd(0.1), criterion=criteria.magnitude,
                   schedule=schedules.constant(0.5), packed_masks="yes")


@pytest.mark.parametrize("noise", [0.0, 1.0])
def test_flipout_with_packed_masks_prunes_exactly_as_with_boolean_masks(noise):
  runs = [_train(jaxprune.flipout(optax.sgd(0.3, momentum=0.9), prune_every=2,
                                  rate=0.4, noise=noise, packed_masks=packed),
                 _params(), steps=9) for packed in (False, True)]
  (plain_params, plain_state), (params, state) = runs
  assert isinstance(state.masks["conv"], jaxprune.PackedMask)
  assert not isinstance(plain_state.masks["conv"], jaxprune.PackedMask)
  assert int(state.events) == 4
  for got, want in zip(
      jax.tree.leaves((jaxprune.masks_of(state), jaxprune.flip_counts(state),
                       params)),
      jax.tree.leaves((jaxprune.masks_of(plain_state),
                       jaxprune.flip_counts(plain_state), plain_params))):
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  # Four events of rate 0.4 from 444 weights: 444 -> 267 -> 161 -> 97 -> 59.
  assert sum(int(m.sum()) for m in jax.tree.leaves(jaxprune.masks_of(state))) == 59


def test_flipout_packed_masks_must_be_a_bool():
  with pytest.raises(TypeError, match="packed_masks must be True or False"):
    jaxprune.flipout(optax.sgd(0.1), prune_every=2, packed_masks=1)
