"""prune_once against the numpy reference: counts, ties, survivors, rates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference
from flax import nnx

import jaxprune
from jaxprune import criteria


def _params():
  rng = np.random.default_rng(0)
  hidden = rng.normal(size=(12, 8)).astype(np.float32)
  hidden[0, :4] = 0.5  # ties, broken by flat index
  out = rng.normal(size=(8, 3)).astype(np.float32)
  return {"hidden": {"kernel": jnp.asarray(hidden), "bias": jnp.zeros(8)},
          "out": {"kernel": jnp.asarray(out), "bias": jnp.zeros(3)}}


def _kernels(tree):
  return [np.asarray(tree["hidden"]["kernel"]), np.asarray(tree["out"]["kernel"])]


def _reference(params, alive, group_ids, kept, force_best):
  scores = [np.abs(k) for k in _kernels(params)]
  return reference.keep_top_k(scores, alive, group_ids, kept, force_best)


@pytest.mark.parametrize("allocation", ["global", "global_topk", "layerwise"])
def test_masks_equal_the_reference_from_scratch_and_among_survivors(allocation):
  params = _params()
  sizes = [96, 24]
  group_ids = [0, 0] if allocation.startswith("global") else [0, 1]
  first = jaxprune.prune_once(params, sparsity=0.5, allocation=allocation)
  kept = [60] if allocation.startswith("global") else [48, 12]
  want = _reference(params, [np.ones((12, 8), bool), np.ones((8, 3), bool)],
                    group_ids, kept, allocation == "global")
  for got, w in zip(_kernels(first), want, strict=True):
    np.testing.assert_array_equal(got, w)
  assert first["hidden"]["bias"] is None

  second = jaxprune.prune_once(params, sparsity=0.8, masks=first, allocation=allocation)
  kept = ([round(0.2 * 120)] if allocation.startswith("global")
          else [n - round(0.8 * n) for n in sizes])
  want = _reference(params, _kernels(first), group_ids, kept, allocation == "global")
  for got, w, before in zip(_kernels(second), want, _kernels(first), strict=True):
    np.testing.assert_array_equal(got, w)
    assert not np.any(got & ~before)  # survivors only


def test_per_leaf_rates_as_the_lottery_ticket_paper_prunes():
  params = _params()
  masks = None
  for r in range(1, 4):
    rates = {"hidden/kernel": 1 - 0.8 ** r, "out/kernel": 1 - 0.9 ** r}
    new = jaxprune.prune_once(params, sparsity=rates, masks=masks, allocation="layerwise")
    counts = [int(k.sum()) for k in _kernels(new)]
    assert counts == [96 - round((1 - 0.8 ** r) * 96), 24 - round((1 - 0.9 ** r) * 24)]
    if masks is not None:
      assert all(not np.any(n & ~o) for n, o in zip(_kernels(new), _kernels(masks)))
    by_function = jaxprune.prune_once(
        params, masks=masks, allocation="layerwise",
        sparsity=lambda path, leaf, r=r: 1 - (0.9 if path[0] == "out" else 0.8) ** r)
    for a, b in zip(_kernels(new), _kernels(by_function), strict=True):
      np.testing.assert_array_equal(a, b)
    masks = new


def test_random_and_saliency_criteria_take_their_key_and_grads():
  params = _params()
  grads = jax.tree.map(lambda p: jnp.cos(p), params)
  got = jaxprune.prune_once(params, sparsity=0.75, criterion=criteria.saliency,
                            grads=grads, allocation="layerwise")
  want = reference.keep_top_k(
      [np.abs(np.cos(k) * k) for k in _kernels(params)],
      [np.ones((12, 8), bool), np.ones((8, 3), bool)], [0, 1], [24, 6])
  for a, b in zip(_kernels(got), want, strict=True):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match="saliency criterion needs gradients"):
    jaxprune.prune_once(params, sparsity=0.5, criterion=criteria.saliency)
  one = jaxprune.prune_once(params, sparsity=0.5, criterion=criteria.random,
                            key=jax.random.key(1))
  two = jaxprune.prune_once(params, sparsity=0.5, criterion=criteria.random,
                            key=jax.random.key(2))
  assert any(np.any(a != b) for a, b in zip(_kernels(one), _kernels(two)))


def test_bad_sparsities_are_refused_naming_the_problem():
  params = _params()
  first = jaxprune.prune_once(params, sparsity=0.8, allocation="layerwise")
  with pytest.raises(ValueError, match="pruned weights would come back"):
    jaxprune.prune_once(params, sparsity=0.5, masks=first, allocation="layerwise")
  with pytest.raises(ValueError, match="need allocation='layerwise'"):
    jaxprune.prune_once(params, sparsity={"hidden/kernel": 0.5, "out/kernel": 0.5})
  with pytest.raises(ValueError, match=r"missing \['out/kernel'\]"):
    jaxprune.prune_once(params, sparsity={"hidden/kernel": 0.5}, allocation="layerwise")
  with pytest.raises(ValueError, match="sparsity of out/kernel must be in"):
    jaxprune.prune_once(params, sparsity=lambda path, leaf: 1.5 if path[0] == "out" else 0.5,
                        allocation="layerwise")
  with pytest.raises(TypeError, match="sparsity must be a number"):
    jaxprune.prune_once(params, sparsity="0.5")


def test_an_nnx_module_gives_the_plain_masks_of_its_params():
  model = nnx.Linear(12, 8, rngs=nnx.Rngs(0))
  masks = jaxprune.prune_once(model, sparsity=0.25)
  plain = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  want = jaxprune.prune_once(plain, sparsity=0.25)
  np.testing.assert_array_equal(masks["kernel"], want["kernel"])
  assert masks["bias"] is None and int(masks["kernel"].sum()) == 72
