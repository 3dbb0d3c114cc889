"""Quantization keeps pruned weights exactly zero: jaxprune.sharing's own
per-channel symmetric quantization, and qwix's PTQ and QAT (skipped when
qwix is not installed)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxprune
from jaxprune import sharing


@pytest.mark.parametrize("bits", [2, 4, 8, 12])
def test_quantize_is_symmetric_per_channel_and_keeps_zeros(bits):
  rng = np.random.default_rng(bits)
  w = rng.normal(size=(3, 3, 4, 5)).astype(np.float32)
  w[..., 2] = 0.0  # a channel of zeros
  params = {"conv": {"kernel": w, "bias": np.ones(5, np.float32)}}
  masks = jaxprune.prune_once(params, sparsity=0.6)
  q = sharing.quantize(params, masks, bits=bits)["conv"]["kernel"]
  qmax = 2 ** (bits - 1) - 1
  mask = np.asarray(masks["conv"]["kernel"])
  kept = np.where(mask, w, 0)
  peak = np.abs(kept).max(axis=(0, 1, 2))
  np.testing.assert_allclose(q.scale, np.where(peak > 0, peak / qmax, 1), rtol=1e-6)
  values = np.asarray(q.values)
  assert values.dtype == (np.int8 if bits <= 8 else np.int16)
  assert np.all(values[~mask] == 0) and np.abs(values).max() <= qmax
  back = np.asarray(sharing.dequantize({"k": q})["k"])
  assert np.all(back[~mask] == 0) and not np.any(np.signbit(back[~mask]))
  assert np.all(np.abs(back - kept) <= np.asarray(q.scale) / 2 + 1e-7)


def test_quantize_refuses_a_pruned_leaf_it_leaves_out():
  params = {"w": np.ones((2, 2), np.float32)}
  with pytest.raises(ValueError, match="w is pruned but not quantized"):
    sharing.quantize(params, {"w": np.ones((2, 2), bool)}, prunable=lambda p, x: False)
  with pytest.raises(ValueError, match="bits must be an integer from 2 to 16"):
    sharing.quantize(params, bits=1)


class _MLP(nnx.Module):

  def __init__(self, rngs):
    self.hidden = nnx.Linear(8, 6, rngs=rngs)
    self.out = nnx.Linear(6, 3, rngs=rngs)

  def __call__(self, x):
    return self.out(nnx.relu(self.hidden(x)))


def _qvalues(module):
  """The int8 values of a qwix PTQ kernel."""
  return np.asarray(nnx.state(module)["kernel"]["array"]["qvalue"][...])


def test_qwix_ptq_keeps_pruned_weights_zero_nnx():
  qwix = pytest.importorskip("qwix")
  model = _MLP(nnx.Rngs(0))
  x = jnp.ones((2, 8))
  masks = jaxprune.prune_once(model, sparsity=0.7)
  jaxprune.apply_masks(model, masks)
  rules = [qwix.QuantizationRule(module_path=".*", weight_qtype="int8")]
  quantized = qwix.quantize_model(model, qwix.PtqProvider(rules), x)
  for layer in ("hidden", "out"):
    q = _qvalues(getattr(quantized, layer))
    mask = np.asarray(masks[layer]["kernel"])
    assert q.dtype == np.int8 and np.all(q[~mask] == 0)
    ours = sharing.quantize(model, masks)[layer]["kernel"].values
    assert np.abs(q.astype(int) - np.asarray(ours, int)).max() <= 1  # same scheme
  assert np.abs(np.asarray(quantized(x) - model(x))).max() < 0.05


def test_qwix_ptq_keeps_pruned_weights_zero_linen():
  qwix = pytest.importorskip("qwix")
  model = nn.Dense(4)
  x = jnp.ones((2, 6))
  params = model.init(jax.random.key(0), x)["params"]
  masks = jaxprune.prune_once(params, sparsity=0.5)
  params = jaxprune.apply_masks(params, masks)
  rules = [qwix.QuantizationRule(module_path=".*", weight_qtype="int8")]
  ptq = qwix.quantize_model(model, qwix.PtqProvider(rules))
  abstract = jax.eval_shape(ptq.init, jax.random.key(0), x)["params"]
  quantized = qwix.quantize_params(params, abstract)
  q = np.asarray(quantized["kernel"].array.qvalue)
  assert np.all(q[~np.asarray(masks["kernel"])] == 0)
  y = ptq.apply({"params": quantized}, x)
  assert np.abs(np.asarray(y - model.apply({"params": params}, x))).max() < 0.05


def test_prune_composes_with_qwix_qat_nnx():
  qwix = pytest.importorskip("qwix")
  model = _MLP(nnx.Rngs(1))
  x = jax.random.normal(jax.random.key(2), (16, 8))
  y = jax.random.normal(jax.random.key(3), (16, 3))
  masks = jaxprune.prune_once(model, sparsity=0.6)
  rules = [qwix.QuantizationRule(module_path=".*", weight_qtype="int8")]
  qat = qwix.quantize_model(model, qwix.QtProvider(rules), x)
  optimizer = nnx.Optimizer(qat, jaxprune.prune(optax.adam(1e-2), masks=masks),
                            wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer):
    loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
    optimizer.update(model, grads)
    return loss

  first = step(qat, optimizer)
  for _ in range(10):
    last = step(qat, optimizer)
  assert last < first
  for layer in ("hidden", "out"):
    mask = np.asarray(masks[layer]["kernel"])
    w = np.asarray(getattr(qat, layer).kernel[...])
    assert np.all(w[~mask] == 0) and np.all(w[mask] != 0)
  kept = jaxprune.masks_of(optimizer.opt_state)
  assert all(np.array_equal(np.asarray(a), np.asarray(b))
             for a, b in zip(jax.tree.leaves(kept), jax.tree.leaves(masks)))
  # The trained float weights, quantized for serving: still zero where pruned.
  served = qwix.quantize_model(qat, qwix.PtqProvider(rules), x)
  for layer in ("hidden", "out"):
    assert np.all(_qvalues(getattr(served, layer))[~np.asarray(masks[layer]["kernel"])] == 0)
