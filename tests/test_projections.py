"""Projections onto l1, l2,1 and l1,1 balls against numpy; the transforms."""

import itertools

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import stepping

import jaxprune
from jaxprune import _thresholds

_PROJECTIONS = {  # by name: (x, radius, axis) -> projection
    "l1": lambda x, r, axis=-1: jaxprune.projections.l1_ball(x, r),
    "l21": lambda x, r, axis=-1: jaxprune.projections.l21_ball(x, r, axis),
    "l11": lambda x, r, axis=-1: jaxprune.projections.l11_ball(x, r, axis),
}
_TRANSFORMS = {  # by name: (radius, axis=..., prunable=...) -> transformation
    "l1": lambda radius, axis=-1, **kw: jaxprune.project_l1(radius, **kw),
    "l21": lambda *args, **kw: jaxprune.project_l21(*args, **kw),
    "l11": lambda *args, **kw: jaxprune.project_l11(*args, **kw),
}


# --------------------------------------------------------- numpy references


def _ref_l1(x, r):
  """The l1 projection by bisection on the soft threshold, in float64."""
  x = np.asarray(x, np.float64)
  a = np.abs(x)
  if a.sum() <= r:
    return x
  lo, hi = 0.0, a.max()
  for _ in range(200):  # sum(max(a - tau, 0)) decreases in tau
    mid = 0.5 * (lo + hi)
    lo, hi = (mid, hi) if np.maximum(a - mid, 0).sum() > r else (lo, mid)
  return np.sign(x) * np.maximum(a - 0.5 * (lo + hi), 0)


def _axes(axis, ndim):
  axis = axis if isinstance(axis, tuple) else (axis,)
  return tuple(sorted(a % ndim for a in axis))


def _ref_l21(x, r, axis=-1):
  x = np.asarray(x, np.float64)
  norms = np.sqrt(np.sum(x**2, axis=_axes(axis, x.ndim), keepdims=True))
  new = _ref_l1(norms.ravel(), r).reshape(norms.shape)
  return x * np.divide(new, norms, out=np.zeros_like(norms), where=norms > 0)


def _ref_l11(x, r, axis=-1):
  """The bilevel operator, one group at a time."""
  x = np.asarray(x, np.float64)
  axes = _axes(axis, x.ndim)
  kept = tuple(i for i in range(x.ndim) if i not in axes)
  moved = np.transpose(x, kept + axes)
  rows = moved.reshape(-1, int(np.prod([x.shape[i] for i in axes])))
  budgets = _ref_l1(np.abs(rows).sum(axis=1), r)
  out = np.stack([_ref_l1(row, b) for row, b in zip(rows, budgets)])
  return np.transpose(out.reshape(moved.shape), np.argsort(kept + axes))


_REFERENCES = {"l1": _ref_l1, "l21": _ref_l21, "l11": _ref_l11}


def _norm(kind, y, axis=-1):
  y = np.asarray(y, np.float64)
  if kind == "l21":
    return np.sqrt(np.sum(y**2, axis=_axes(axis, y.ndim))).sum()
  return np.abs(y).sum()  # l1, and l1,1: the sum of the group l1 norms


def _random(shape, seed, scale=1.0, dtype=np.float32):
  rng = np.random.default_rng(seed)
  return jnp.asarray((scale * rng.normal(size=shape)).astype(dtype))


# ------------------------------------------------------ the pure projections


# A few shapes, so that the compiled programs are reused across examples.
_SHAPES = [(1,), (9,), (1, 5), (6, 1), (4, 7), (3, 2, 5)]


@st.composite
def _problem(draw):
  shape = draw(st.sampled_from(_SHAPES))
  ndim = len(shape)
  axis = draw(st.sampled_from([-1, 0] + ([(0, ndim - 1)] if ndim > 1 else [])))
  fraction = draw(st.sampled_from([0.0, 0.05, 0.3, 0.7, 0.99, 1.0, 1.5]))
  return shape, axis, fraction, draw(st.integers(0, 2**16))


@pytest.mark.usefixtures("strict_dtypes")
@pytest.mark.parametrize("kind", list(_PROJECTIONS))
@hypothesis.given(problem=_problem())
@hypothesis.settings(max_examples=20)
def test_projections_match_numpy_references(kind, problem):
  shape, axis, fraction, seed = problem
  x = _random(shape, seed)
  radius = fraction * _norm(kind, x, axis)
  y = _PROJECTIONS[kind](x, np.float32(radius), axis)
  want = _REFERENCES[kind](x, radius, axis) if kind != "l1" else _ref_l1(x, radius)
  assert y.dtype == x.dtype and y.shape == x.shape
  np.testing.assert_allclose(y, want, rtol=1e-5, atol=2e-6)
  got_norm = _norm(kind, y, axis)
  assert got_norm <= radius * (1 + 1e-5) + 1e-6  # feasible
  if fraction < 1.0:
    assert got_norm == pytest.approx(radius, rel=1e-5, abs=1e-6)  # on the sphere
  elif fraction > 1.0:
    np.testing.assert_array_equal(y, x)  # inside: unchanged, bit for bit


@pytest.mark.usefixtures("strict_dtypes")
@pytest.mark.parametrize("kind", list(_PROJECTIONS))
@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.6])
def test_projections_are_idempotent(kind, fraction):
  x = _random((6, 5), 3)
  radius = fraction * _norm(kind, x)
  once = _PROJECTIONS[kind](x, radius)
  twice = _PROJECTIONS[kind](once, radius)
  np.testing.assert_allclose(twice, once, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(twice == 0, once == 0)


@pytest.mark.usefixtures("strict_dtypes")
@pytest.mark.parametrize("kind", list(_PROJECTIONS))
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_inside_points_come_back_unchanged_in_their_dtype(kind, dtype):
  x = _random((6, 5), 5).astype(dtype)
  for radius in (_norm(kind, x) * 1.01, jnp.inf):
    y = _PROJECTIONS[kind](x, radius)
    assert y.dtype == dtype
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(x, np.float32))
  y = _PROJECTIONS[kind](x, 0.5)
  assert y.dtype == dtype
  assert _norm(kind, y) <= 0.5 * 1.01


@pytest.mark.usefixtures("strict_dtypes")
@pytest.mark.parametrize("kind", list(_PROJECTIONS))
def test_radius_zero_gives_zeros(kind):
  y = _PROJECTIONS[kind](_random((6, 5), 1), 0.0)
  assert not np.any(np.asarray(y))


def _certificate(kind, x, y, radius):
  """``max_{z in ball} <x - y, z - y>``: <= 0 iff y is the projection of x.

  A linear function's maximum over the ball is ``radius`` times the dual
  norm of its gradient: the max-abs entry for the l1 ball, the largest
  group l2 norm for the l2,1 ball.
  """
  g = np.asarray(x, np.float64) - np.asarray(y, np.float64)
  if kind == "l21":
    dual = np.sqrt(np.sum(g**2, axis=-1)).max()
  else:
    dual = np.abs(g).max()
  return radius * dual - np.sum(g * np.asarray(y, np.float64))


@pytest.mark.usefixtures("strict_dtypes")
@pytest.mark.parametrize("kind", ["l1", "l21"])
@pytest.mark.parametrize("seed", range(5))
def test_l1_and_l21_are_the_euclidean_projections(kind, seed):
  x = _random((6, 5), seed)
  radius = 0.3 * _norm(kind, x)
  y = _PROJECTIONS[kind](x, radius)
  # The optimality certificate, exact for these balls.
  assert _certificate(kind, x, y, radius) <= 1e-5 * radius
  # No random point of the ball is closer.
  rng = np.random.default_rng(seed)
  distance = np.linalg.norm(np.asarray(x) - np.asarray(y))
  for _ in range(200):
    z = rng.normal(size=x.shape) * (rng.random(x.shape) < 0.3)
    z *= radius / max(_norm(kind, z), 1e-12) * rng.random()
    assert distance <= np.linalg.norm(np.asarray(x) - z) + 1e-6


@pytest.mark.usefixtures("strict_dtypes")
def test_l11_zeroes_whole_groups_is_feasible_and_is_not_the_l1_projection():
  x = _random((10, 8), 11) * jnp.linspace(0.2, 2.0, 10, dtype=jnp.float32)[:, None]
  radius = 0.1 * float(jnp.abs(x).sum())
  y11 = np.asarray(jaxprune.projections.l11_ball(x, radius))
  y1 = np.asarray(jaxprune.projections.l1_ball(x, radius))
  assert np.abs(y11).sum() == pytest.approx(radius, rel=1e-5)
  # Whole rows vanish: those whose l1 norm is below the first threshold.
  norms = np.abs(np.asarray(x)).sum(axis=1)
  zero_rows = ~np.any(y11, axis=1)
  tau = np.sort(norms)[::-1][0] - _ref_l1(norms, radius).max()
  np.testing.assert_array_equal(zero_rows, norms <= tau + 1e-5)
  assert 0 < zero_rows.sum() < len(norms)
  assert zero_rows.sum() > (~np.any(y1, axis=1)).sum()  # more structured
  # In the same ball, but farther from x than the Euclidean projection.
  assert _certificate("l11", x, y11, radius) > 1e-3
  assert np.linalg.norm(np.asarray(x) - y11) > np.linalg.norm(np.asarray(x) - y1)


@pytest.mark.usefixtures("strict_dtypes")
def test_groups_may_span_several_axes():
  x = _random((3, 3, 4, 5), 2)  # a conv kernel (h, w, in, out)
  radius = 2.0
  for kind in ("l21", "l11"):
    y = _PROJECTIONS[kind](x, radius, (0, 1, 3))
    np.testing.assert_allclose(y, _REFERENCES[kind](x, radius, (0, 1, 3)),
                               rtol=1e-5, atol=2e-6)
    alive = np.any(np.asarray(y) != 0, axis=(0, 1, 3))  # per input channel
    assert 0 < alive.sum() < 4


@pytest.mark.usefixtures("strict_dtypes")
def test_long_vectors_stay_feasible():
  x = _random((300_000,), 0, scale=10.0)
  for radius in (1.0, 1e3, 1e5):
    y = jaxprune.projections.l1_ball(x, radius)
    assert float(jnp.sum(jnp.abs(y))) == pytest.approx(radius, rel=1e-5)
    np.testing.assert_allclose(y, _ref_l1(x, radius), atol=2e-5 * 10)


@pytest.mark.usefixtures("strict_dtypes")
@pytest.mark.parametrize("kind", list(_PROJECTIONS))
def test_jit_vmap_and_traced_radii(kind):
  x = _random((6, 5), 7)
  fn = _PROJECTIONS[kind]
  jitted = jax.jit(lambda x, r: fn(x, r))
  for radius in (0.0, 0.5, 2.0, 100.0):
    np.testing.assert_allclose(
        jitted(x, jnp.float32(radius)), fn(x, radius), rtol=1e-6, atol=1e-7)
  radii = jnp.asarray([0.5, 1.0, 3.0], jnp.float32)
  batched = jax.vmap(lambda r: fn(x, r))(radii)
  for r, y in zip(radii, batched):
    np.testing.assert_allclose(y, fn(x, r), rtol=1e-6, atol=1e-7)
  # A negative radius cannot raise once traced: the result is NaN, not wrong.
  assert np.all(np.isnan(jitted(x, jnp.float32(-1.0))))


@pytest.mark.parametrize("call, error, match", [
    (lambda f: f(jnp.ones((2, 2)), -1.0), ValueError, "radius must be >= 0"),
    (lambda f: f(jnp.ones((2, 2)), float("nan")), ValueError, "radius must be >= 0"),
    (lambda f: f(jnp.ones((2, 2)), jnp.ones(2)), ValueError, "radius must be a scalar"),
    (lambda f: f(jnp.ones((2, 2)), "1"), TypeError, "radius must be a number"),
    (lambda f: f(jnp.ones((2, 2), jnp.int32), 1.0), TypeError,
     "floating-point array, got dtype int32"),
    (lambda f: f(jnp.ones((2, 2), jnp.complex64), 1.0), TypeError,
     "floating-point array, got dtype complex64"),
])
@pytest.mark.parametrize("kind", list(_PROJECTIONS))
def test_bad_projection_arguments(kind, call, error, match):
  with pytest.raises(error, match=match):
    call(_PROJECTIONS[kind])


@pytest.mark.parametrize("kind", ["l21", "l11"])
def test_bad_axes(kind):
  fn = _PROJECTIONS[kind]
  x = jnp.ones((2, 3))
  out_of_range = (r"axis 2 is out of range for an array of shape \(2, 3\) "
                  "with 2 dimensions$")
  with pytest.raises(ValueError, match=out_of_range):
    fn(x, 1.0, axis=2)
  with pytest.raises(ValueError, match="names the same axis twice"):
    fn(x, 1.0, axis=(1, -1))
  with pytest.raises(ValueError, match="at least one axis"):
    fn(x, 1.0, axis=())
  with pytest.raises(TypeError, match="axis must be an int"):
    fn(x, 1.0, axis=1.0)
  with pytest.raises(ValueError, match="out of range for .* with 0 dimensions$"):
    fn(jnp.float32(1.0), 1.0)  # a scalar has no axis
  with pytest.raises(ValueError, match="out of range for .* with 1 dimension$"):
    fn(jnp.ones(3), 1.0, axis=1)


# ------------------------------------------------- the sort-free thresholds


def _sorted_threshold(a, r):
  """The l1 threshold by sorting, in float64: ``max_k (c_k - r) / k``."""
  a = np.sort(np.asarray(a, np.float64).ravel())[::-1]
  if a.sum() <= r:
    return 0.0
  return float(np.max((np.cumsum(a) - r) / np.arange(1, a.size + 1)))


def _threshold_scale(a, r, tau):
  """The size of the float32 rounding of ``tau = (sum_A a - r) / |A|``."""
  a = np.asarray(a, np.float64).ravel()
  support = a > tau
  return (a[support].sum() + r) / max(support.sum(), 1)


def _magnitudes(kind, n, seed):
  rng = np.random.default_rng(seed)
  if kind == "normal":
    a = rng.normal(size=n)
  elif kind == "ties":  # a few values, each shared by many entries
    a = rng.choice([0.0, 0.25, 0.5, 1.0, 3.0], size=n)
  elif kind == "wide":  # sixty orders of magnitude
    a = 10.0 ** rng.uniform(-30, 30, size=n)
  else:  # sparse
    a = rng.normal(size=n) * (rng.random(n) < 0.05)
  return np.abs(a).astype(np.float32)


_SEARCHES = {"radix": _thresholds.radix_search,
             "bisection": _thresholds.bisection}
_threshold_by = jax.jit(_thresholds.refined_threshold, static_argnums=(0, 3))


@pytest.mark.usefixtures("strict_dtypes")
@pytest.mark.parametrize("n", [1, 7, 1000, 70_000, 300_000])
@pytest.mark.parametrize("kind", ["normal", "ties", "wide", "sparse"])
def test_thresholds_match_a_float64_sort(kind, n):
  a = _magnitudes(kind, n, n)
  norm = float(np.sum(a, dtype=np.float64))
  for fraction in (0.0, 1e-7, 1e-3, 0.3, 0.99, 2.0):
    r = np.float32(fraction * norm)
    want = _sorted_threshold(a, float(r))
    # Both searches, on one row and on three.
    for search, rows in itertools.product(_SEARCHES.values(), (1, 3)):
      got = np.asarray(_threshold_by(
          search, jnp.tile(jnp.asarray(a), (rows, 1)), jnp.full((rows, 1), r),
          (1,)))[:, 0]
      if fraction > 1:
        np.testing.assert_array_equal(got, 0)
      else:
        tol = 1e-6 * _threshold_scale(a, float(r), want)
        np.testing.assert_allclose(got, want, rtol=0, atol=tol)


@pytest.mark.usefixtures("strict_dtypes")
def test_both_searches_find_the_same_support():
  a = jnp.asarray(_magnitudes("normal", 5 * 3000, 1).reshape(5, 3000))
  keys = jax.lax.bitcast_convert_type(a, jnp.int32)
  fractions = jnp.asarray([0.0, 1e-4, 0.1, 0.5, 0.9], jnp.float32)
  radius = jnp.sum(a, axis=1, keepdims=True) * fractions[:, None]
  radix = jax.jit(_thresholds.radix_search, static_argnums=(3, 4))(
      a, keys, radius, (1,), jnp.float32)
  bisection = jax.jit(_thresholds.bisection, static_argnums=(3, 4))(
      a, keys, radius, (1,), jnp.float32)
  # The same support; its lowest key is within rounding of the threshold.
  np.testing.assert_array_equal(radix.count, bisection.count)
  np.testing.assert_allclose(
      jax.lax.bitcast_convert_type(radix.base, jnp.float32),
      jax.lax.bitcast_convert_type(bisection.base, jnp.float32), rtol=1e-6)
  np.testing.assert_allclose(radix.total, bisection.total, rtol=1e-6)


@pytest.mark.usefixtures("strict_dtypes")
@pytest.mark.parametrize("kind", ["normal", "ties", "wide"])
def test_l1_projection_of_a_long_vector_matches_a_float64_sort(kind):
  rng = np.random.default_rng(3)
  shape = (250, 400)  # more than 65536 entries: every bin of a digit
  a = _magnitudes(kind, 250 * 400, 3).reshape(shape)
  x = jnp.asarray(np.where(rng.random(shape) < 0.5, -a, a))
  norm = float(np.sum(a, dtype=np.float64))
  jitted = jax.jit(jaxprune.projections.l1_ball)
  for r in (1e-30, 1e-6 * norm, 0.5 * norm):
    r = np.float32(r)
    y = jaxprune.projections.l1_ball(x, r)
    tau = _sorted_threshold(a, float(r))
    want = np.sign(x) * np.maximum(a.astype(np.float64) - tau, 0)
    tol = 1e-6 * _threshold_scale(a, float(r), tau) + np.spacing(a)
    assert np.all(np.abs(np.asarray(y, np.float64) - want) <= tol)
    np.testing.assert_array_equal(jitted(x, r), y)


@pytest.mark.usefixtures("strict_dtypes")
def test_vmap_over_long_vectors_and_radii():
  x = _random((3, 10_000), 6)  # rows long enough for the radix search
  radii = jnp.asarray([1.0, 10.0, 1e5], jnp.float32)
  project = jaxprune.projections.l1_ball
  rows = [project(x[i], radii[i]) for i in range(3)]
  np.testing.assert_array_equal(jax.vmap(project)(x, radii), jnp.stack(rows))
  same_x = [project(x[0], r) for r in radii]
  np.testing.assert_array_equal(
      jax.vmap(lambda r: project(x[0], r))(radii), jnp.stack(same_x))


@pytest.mark.usefixtures("strict_dtypes")
def test_the_searches_agree_with_and_without_jit():
  a = _magnitudes("ties", 20_000, 5)
  signs = np.where(np.arange(a.size) % 3 == 0, -1, 1).astype(np.float32)
  x = jnp.asarray(a * signs)
  radius = 0.2 * float(np.sum(a, dtype=np.float64))
  groups = x.reshape(200, 100)
  with jax.disable_jit():
    eager = (jaxprune.projections.l1_ball(x, radius),
             jaxprune.projections.l11_ball(groups, radius))
  jitted = (jax.jit(jaxprune.projections.l1_ball)(x, radius),
            jax.jit(jaxprune.projections.l11_ball)(groups, radius))
  for e, j in zip(eager, jitted):
    np.testing.assert_allclose(e, j, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(e == 0, j == 0)


@pytest.mark.usefixtures("strict_dtypes")
@pytest.mark.parametrize("x, radius, want", [
    ([3.0, -3.0, 3.0, 1.0], 3.0, [1.0, -1.0, 1.0, 0.0]),  # ties in the support
    ([4.0, 2.0, -2.0, 1.0], 2.0, [2.0, 0.0, 0.0, 0.0]),  # tied at the threshold
    ([-5.0, 0.0, 0.0, 0.0], 2.0, [-2.0, 0.0, 0.0, 0.0]),
    ([-5.0, 0.0, 0.0, 0.0], 0.0, [0.0, 0.0, 0.0, 0.0]),
    ([0.0, 0.0, 0.0, 0.0], 0.0, [0.0, 0.0, 0.0, 0.0]),
    ([0.0, 0.0, 0.0, 0.0], 1.0, [0.0, 0.0, 0.0, 0.0]),
    ([1e30, -1e-30, 1e-30, 0.0], 1e30, [1e30, -1e-30, 1e-30, 0.0]),  # inside
])
def test_exact_small_cases(x, radius, want):
  x = jnp.asarray(x, jnp.float32)
  np.testing.assert_allclose(jaxprune.projections.l1_ball(x, radius), want,
                             rtol=1e-6)
  for search in _SEARCHES.values():
    tau = _threshold_by(search, jnp.abs(x), jnp.full((1,), radius, jnp.float32),
                        (0,))
    np.testing.assert_allclose(x - jnp.clip(x, -tau, tau), want, rtol=1e-6)


@pytest.mark.usefixtures("strict_dtypes")
def test_equal_magnitudes_share_the_threshold():
  x = jnp.full((100_000,), -0.75, jnp.float32)
  y = jaxprune.projections.l1_ball(x, 7500.0)  # tau = 0.675
  np.testing.assert_allclose(y, -0.075, rtol=1e-5)
  assert float(jnp.sum(jnp.abs(y))) == pytest.approx(7500.0, rel=1e-5)


@pytest.mark.usefixtures("strict_dtypes")
def test_nan_and_inf_inputs():
  nan, inf = float("nan"), float("inf")
  project = jaxprune.projections.l1_ball
  # A NaN makes every entry NaN, inside the ball or not.
  for radius in (1.0, 100.0):
    assert np.all(np.isnan(project(jnp.asarray([1.0, nan, -2.0]), radius)))
  # An infinite entry needs an infinite threshold: NaN there, 0 elsewhere.
  y = project(jnp.asarray([1.0, -inf, 2.0]), 1.0)
  np.testing.assert_array_equal(y, [0.0, nan, 0.0])
  # An infinite radius leaves finite entries alone.
  np.testing.assert_array_equal(project(jnp.asarray([1.0, -2.0, 0.0]), inf),
                                [1.0, -2.0, 0.0])
  # The same thresholds from both searches.
  a = jnp.asarray([[1.0, nan, 2.0], [1.0, inf, 2.0], [1.0, 2.0, 0.0],
                   [1.0, inf, 2.0]])
  radius = jnp.asarray([1.0, 1.0, inf, inf])
  for search in _SEARCHES.values():
    np.testing.assert_array_equal(
        _threshold_by(search, a, radius[:, None], (1,))[:, 0],
        [nan, inf, 0.0, nan])


@pytest.mark.usefixtures("strict_dtypes")
def test_float64_inputs_keep_float64_precision():
  rng = np.random.default_rng(4)
  with jax.enable_x64(True):
    x = rng.normal(size=(300, 40))
    r = 0.3 * np.abs(x).sum()
    tau = _sorted_threshold(np.abs(x), r)
    want = np.sign(x) * np.maximum(np.abs(x) - tau, 0)
    y = jaxprune.projections.l1_ball(jnp.asarray(x), r)  # 63-bit keys
    assert y.dtype == jnp.float64
    np.testing.assert_allclose(y, want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        jaxprune.projections.l11_ball(jnp.asarray(x), r),
        _ref_l11(x, r), rtol=0, atol=1e-12)


# ---------------------------------------------------------- transformations


def _params(seed=0):
  return {"a": {"kernel": _random((6, 5), seed), "bias": _random((5,), seed + 1)},
          "b": {"kernel": _random((3, 2, 4), seed + 2)}}


def _random_grads(params, t):
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(t), len(leaves))
  return jax.tree.unflatten(
      treedef, [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])


@pytest.mark.parametrize("inner", [optax.sgd(0.3), optax.adam(0.1)],
                         ids=["sgd", "adam"])
@pytest.mark.parametrize("kind", list(_TRANSFORMS))
def test_params_plus_updates_are_the_projection(kind, inner):
  params, radius = _params(), 1.5
  tx = optax.chain(inner, _TRANSFORMS[kind](radius))
  state = tx.init(params)
  inner_state = inner.init(params)
  for t in range(2):  # without jit, so that both run the same operations
    grads = _random_grads(params, t)
    inner_updates, inner_state = inner.update(grads, inner_state, params)
    updates, state = tx.update(grads, state, params)
    new = optax.apply_updates(params, updates)
    for name in ("a", "b"):
      want = _PROJECTIONS[kind](params[name]["kernel"]
                                + inner_updates[name]["kernel"], radius)
      np.testing.assert_allclose(new[name]["kernel"], want, rtol=1e-5, atol=1e-6)
      np.testing.assert_array_equal(new[name]["kernel"] == 0, want == 0)
      assert _norm(kind, new[name]["kernel"]) <= radius * (1 + 1e-5)
    np.testing.assert_array_equal(updates["a"]["bias"], inner_updates["a"]["bias"])
    masks = jaxprune.masks_of(state)
    assert masks["a"]["bias"] is None
    for name in ("a", "b"):
      np.testing.assert_array_equal(masks[name]["kernel"], new[name]["kernel"] != 0)
    params = new


@pytest.mark.parametrize("kind", list(_TRANSFORMS))
def test_jit_and_no_jit_agree(kind):
  tx = optax.chain(optax.sgd(0.1, momentum=0.9), _TRANSFORMS[kind](2.0))
  jitted, traces = stepping.run_steps(tx, _params(4), _random_grads, 3)
  eager, _ = stepping.run_steps(tx, _params(4), _random_grads, 3, jit=False)
  assert traces == 1
  for (pj, sj), (pe, se) in zip(jitted, eager):
    for a, b in zip(jax.tree.leaves(pj), jax.tree.leaves(pe)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(jaxprune.masks_of(sj)),
                    jax.tree.leaves(jaxprune.masks_of(se))):
      np.testing.assert_array_equal(a, b)


def test_projected_least_squares_reaches_the_constrained_optimum():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(40, 12))
  w_true = np.zeros(12)
  w_true[[1, 5, 8]] = [2.0, -3.0, 1.5]
  b = a @ w_true + 0.1 * rng.normal(size=40)
  radius = 3.0  # below ||w_true||_1 = 6.5: the constraint is active

  def loss_fn(params):
    residual = jnp.asarray(a, jnp.float32) @ params["w"][:, 0] - jnp.asarray(
        b, jnp.float32)
    return 0.5 * jnp.sum(residual**2)

  lr = 1.0 / np.linalg.norm(a, 2) ** 2  # projected gradient descent
  tx = optax.chain(optax.sgd(lr), jaxprune.project_l1(radius))
  params = {"w": jnp.zeros((12, 1))}

  def body(carry, _):
    params, state = carry
    updates, state = tx.update(jax.grad(loss_fn)(params), state, params)
    params = optax.apply_updates(params, updates)
    return (params, state), jnp.sum(jnp.abs(params["w"]))

  (params, state), norms = jax.jit(
      lambda c: jax.lax.scan(body, c, None, length=1000)
  )((params, tx.init(params)))
  assert np.all(np.asarray(norms) <= radius * (1 + 1e-5))  # inside, every step
  w = np.asarray(params["w"][:, 0], np.float64)
  assert np.abs(w).sum() == pytest.approx(radius, rel=1e-5)
  # Optimality in float64: -grad is in the normal cone of the ball at w,
  # max_{|z|_1 <= r} <-g, z - w> = r |g|_inf + <g, w> = 0.
  g = a.T @ (a @ w - b)
  assert radius * np.abs(g).max() + g @ w <= 1e-3 * np.abs(g).max()
  assert int(jaxprune.masks_of(state)["w"].sum()) == np.count_nonzero(w) < 12


@pytest.mark.parametrize("kind", list(_TRANSFORMS))
def test_radius_can_be_injected(kind):
  tx = optax.inject_hyperparams(
      lambda radius: optax.chain(optax.sgd(0.1), _TRANSFORMS[kind](radius))
  )(radius=3.0)
  params = _params()
  state = tx.init(params)
  step = jax.jit(tx.update)
  for t in range(2):
    updates, state = step(_random_grads(params, t), state, params)
    params = optax.apply_updates(params, updates)
  assert _norm(kind, params["a"]["kernel"]) == pytest.approx(3.0, rel=1e-5)
  state.hyperparams["radius"] = jnp.asarray(0.5, jnp.float32)
  updates, state = step(_random_grads(params, 2), state, params)
  params = optax.apply_updates(params, updates)
  assert _norm(kind, params["a"]["kernel"]) == pytest.approx(0.5, rel=1e-5)
  assert step._cache_size() == 1


def test_radius_can_follow_a_schedule():
  schedule = optax.linear_schedule(4.0, 1.0, transition_steps=3)
  tx = optax.inject_hyperparams(
      lambda radius: optax.chain(optax.sgd(0.1), jaxprune.project_l1(radius))
  )(radius=schedule)
  history, traces = stepping.run_steps(tx, _params(), _random_grads, 4)
  assert traces == 1
  got = [float(jnp.abs(p["b"]["kernel"]).sum()) for p, _ in history]
  np.testing.assert_allclose(got, [4.0, 3.0, 2.0, 1.0], rtol=1e-5)


def test_per_layer_radii_and_custom_predicates():
  first = lambda path, leaf: path[0] == "a"  # a's kernel, and its bias too
  rest = lambda path, leaf: path[0] == "b"
  tx = optax.chain(optax.sgd(0.1),
                   jaxprune.project_l1(1.0, prunable=first),
                   jaxprune.project_l21(0.5, prunable=rest))
  params = _params()
  updates, state = tx.update(_random_grads(params, 0), tx.init(params), params)
  new = optax.apply_updates(params, updates)
  assert float(jnp.abs(new["a"]["kernel"]).sum()) == pytest.approx(1.0, rel=1e-5)
  assert float(jnp.abs(new["a"]["bias"]).sum()) == pytest.approx(1.0, rel=1e-5)
  assert _norm("l21", new["b"]["kernel"]) == pytest.approx(0.5, rel=1e-5)
  with pytest.raises(ValueError, match="found 2 pruning states"):
    jaxprune.masks_of(state)
  assert jaxprune.masks_of(state[1])["a"]["bias"].shape == (5,)


_BAD_RADII = [
    (dict(radius=-1.0), ValueError, "radius must be >= 0"),
    (dict(radius=jnp.ones(3)), ValueError, "radius must be a scalar"),
    (dict(radius=None), TypeError, "radius must be a number"),
    (dict(radius=1.0, prunable="kernel"), TypeError, "prunable must be a"),
]
_BAD_AXES = [
    (dict(radius=1.0, axis=1.5), TypeError, "axis must be an int"),
    (dict(radius=1.0, axis=()), ValueError, "axis must name at least one axis"),
    (dict(radius=1.0, axis=(0, True)), TypeError, "axis must be an int"),
]


@pytest.mark.parametrize("kind, kwargs, error, match", [
    (kind, *case) for kind in _TRANSFORMS for case in _BAD_RADII
] + [(kind, *case) for kind in ("l21", "l11") for case in _BAD_AXES])
def test_bad_transform_arguments(kind, kwargs, error, match):
  with pytest.raises(error, match=match):
    _TRANSFORMS[kind](**kwargs)


@pytest.mark.parametrize("kind", list(_TRANSFORMS))
def test_bad_params_at_init_and_update(kind):
  make = _TRANSFORMS[kind]
  params = _params()
  nothing = f"project_{kind}: the prunable predicate selects no leaf"
  with pytest.raises(ValueError, match=nothing):
    make(1.0, prunable=lambda path, leaf: False).init(params)
  with pytest.raises(TypeError, match="leaf table has dtype int32"):
    make(1.0, prunable=lambda path, leaf: jnp.ndim(leaf) >= 2).init(
        {**params, "table": jnp.zeros((4, 4), jnp.int32)})
  with pytest.raises(TypeError, match="leaf table has dtype complex64"):
    make(1.0, prunable=lambda path, leaf: jnp.ndim(leaf) >= 2).init(
        {**params, "table": jnp.zeros((4, 4), jnp.complex64)})
  tx = make(1.0)
  with pytest.raises(ValueError, match=f"{kind} needs the current params"):
    tx.update(params, tx.init(params))
  with pytest.raises(ValueError, match="structure of the updates tree is not that"):
    tx.update({"a": params["a"]}, tx.init(params), params)
  with pytest.raises(ValueError, match="masks in the optimizer state"):
    tx.update(params, tx.init({"w": jnp.ones((3, 3))}), params)
  if kind != "l1":
    leaf = r"axis 2 is out of range for leaf a/kernel of shape \(6, 5\)"
    with pytest.raises(ValueError, match=leaf):
      make(1.0, axis=2).init(params)
