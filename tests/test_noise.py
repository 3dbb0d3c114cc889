"""The fast Gaussian noise: a numpy reference, its statistics, its keys."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special
from scipy import stats

from jaxprune import _noise

pytestmark = pytest.mark.usefixtures("strict_dtypes")

_MILLION = (1000, 1000)


def _numpy_draws(key_data, size):
  """The same draws, computed independently in numpy (float64 at the end)."""

  def lowbias32(x):
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x7FEB352D)
    x = x ^ (x >> np.uint32(15))
    x = x * np.uint32(0x846CA68B)
    return x ^ (x >> np.uint32(16))

  k0, k1 = (np.uint32(k) for k in key_data)
  bits = lowbias32(lowbias32(np.arange(size, dtype=np.uint32) ^ k0) + k1)
  points = (bits >> np.uint32(9)).astype(np.float64)  # 0 .. 2**23 - 1
  uniform = -1.0 + (2.0 * points + 1.0) * 2.0**-23
  return np.sqrt(2.0) * special.erfinv(uniform)


def test_draws_match_a_numpy_reference():
  key = jax.random.key(11)
  got = np.asarray(_noise.standard_normal(key, (300, 7)), np.float64)
  want = _numpy_draws(np.asarray(jax.random.key_data(key)), 2100)
  np.testing.assert_allclose(got.reshape(-1), want, rtol=1e-4, atol=2e-6)


def test_statistics_of_a_million_draws():
  draws = np.asarray(_noise.standard_normal(jax.random.key(0), _MILLION),
                     np.float64).reshape(-1)
  assert abs(draws.mean()) < 0.005 and abs(draws.std() - 1) < 0.005
  assert stats.kstest(draws, "norm").pvalue > 0.01
  # Neighbours, along the last axis and across it, are uncorrelated.
  assert abs(np.corrcoef(draws[:-1], draws[1:])[0, 1]) < 0.005
  assert abs(np.corrcoef(draws[:-1000], draws[1000:])[0, 1]) < 0.005
  # Tails as a normal's: 4.55% beyond 2 sigma, 0.27% beyond 3.
  assert abs(np.mean(np.abs(draws) > 2) - 0.0455) < 0.002
  assert abs(np.mean(np.abs(draws) > 3) - 0.0027) < 0.0003


def test_keys_give_independent_draws():
  first, second = jax.random.split(jax.random.key(1))
  a = np.asarray(_noise.standard_normal(first, _MILLION)).reshape(-1)
  b = np.asarray(_noise.standard_normal(second, _MILLION)).reshape(-1)
  assert abs(np.corrcoef(a, b)[0, 1]) < 0.005
  # Keys one bit apart, in either word.
  for data in ([0, 1], [1, 0]):
    c = np.asarray(_noise.standard_normal(jnp.asarray(data, jnp.uint32),
                                          _MILLION)).reshape(-1)
    d = np.asarray(_noise.standard_normal(jnp.zeros(2, jnp.uint32),
                                          _MILLION)).reshape(-1)
    assert abs(np.corrcoef(c, d)[0, 1]) < 0.005


def test_draws_are_a_pure_function_of_key_and_flat_index():
  key = jax.random.key(5)
  eager = _noise.standard_normal(key, (4, 5, 6))
  jitted = jax.jit(lambda k: _noise.standard_normal(k, (4, 5, 6)))(key)
  np.testing.assert_array_equal(eager, jitted)
  np.testing.assert_array_equal(  # the key or its data
      eager, _noise.standard_normal(jax.random.key_data(key), (4, 5, 6)))
  np.testing.assert_array_equal(  # only the flat index matters
      eager.reshape(-1), _noise.standard_normal(key, (120,)))
  assert _noise.standard_normal(key, ()).shape == ()


def test_draws_like_an_array_are_the_draws_of_its_shape():
  key = jax.random.key(2)
  x = jnp.zeros((6, 7), jnp.bfloat16)
  np.testing.assert_array_equal(_noise.standard_normal_like(key, x),
                                _noise.standard_normal(key, (6, 7)))
