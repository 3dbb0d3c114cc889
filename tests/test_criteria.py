"""Criteria against numpy."""

import jax
import numpy as np
import pytest

from jaxprune import criteria

pytestmark = pytest.mark.usefixtures("strict_dtypes")

_RNG = np.random.default_rng(0)
_PARAMS = {"a": _RNG.normal(size=(4, 3)).astype(np.float32),
           "b": _RNG.normal(size=(5,)).astype(np.float32)}
_GRADS = {"a": _RNG.normal(size=(4, 3)).astype(np.float32),
          "b": _RNG.normal(size=(5,)).astype(np.float32)}


def test_magnitude():
  got = criteria.magnitude(_PARAMS, None, jax.random.key(0))
  for name in _PARAMS:
    np.testing.assert_array_equal(got[name], np.abs(_PARAMS[name]))


def test_saliency_is_abs_g_times_w():
  got = jax.jit(criteria.saliency)(_PARAMS, _GRADS, jax.random.key(0))
  for name in _PARAMS:
    np.testing.assert_allclose(got[name], np.abs(_PARAMS[name] * _GRADS[name]))


def test_saliency_needs_gradients():
  with pytest.raises(ValueError, match="needs gradients"):
    criteria.saliency(_PARAMS, None, jax.random.key(0))


def test_random_is_uniform_and_reproducible():
  a = criteria.random(_PARAMS, None, jax.random.key(1))
  b = criteria.random(_PARAMS, None, jax.random.key(1))
  c = criteria.random(_PARAMS, None, jax.random.key(2))
  for name in _PARAMS:
    assert a[name].shape == _PARAMS[name].shape
    np.testing.assert_array_equal(a[name], b[name])
    assert not np.array_equal(a[name], c[name])
    assert np.all((0 <= a[name]) & (a[name] < 1))
  assert not np.array_equal(a["a"].ravel()[:5], a["b"])  # leaves differ
