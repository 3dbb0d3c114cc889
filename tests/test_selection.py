"""Exact top-k selection against a numpy sort, ties and NaN included."""

from unittest import mock

import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference

from jaxprune import _selection

pytestmark = pytest.mark.usefixtures("strict_dtypes")

# Few distinct values so that ties are common; NaN, infinities and -0.0 too.
_VALUES = [0.0, -0.0, 1.0, -1.0, 2.5, 1e-30, np.inf, -np.inf, np.nan, 7.0]


# A few fixed layouts keep compilations few; hypothesis varies the values.
_LAYOUTS = [
    [(5,)],
    [(3, 4), (7,)],
    [(2, 3, 2), (1,), (4, 1)],
]


@st.composite
def _problems(draw):
  shapes = draw(st.sampled_from(_LAYOUTS))
  scores = [
      draw(hnp.arrays(np.float32, s, elements=st.sampled_from(_VALUES)))
      for s in shapes
  ]
  alive = [draw(hnp.arrays(np.bool_, s)) for s in shapes]
  one_group = draw(st.booleans())
  group_ids = [0] * len(shapes) if one_group else list(range(len(shapes)))
  sizes = [0] * (max(group_ids) + 1)
  for g, s in zip(group_ids, scores):
    sizes[g] += s.size
  kept = [draw(st.integers(0, n)) for n in sizes]
  force_best = draw(st.booleans())
  return scores, alive, group_ids, sizes, kept, force_best


def _select(scores, alive, group_ids, sizes, kept, force_best):
  keys = [
      _selection.ranking_keys(jnp.asarray(s), jnp.asarray(a))
      for s, a in zip(scores, alive)
  ]
  return _selection.keep_top_k(keys, group_ids, sizes, jnp.asarray(kept),
                               keep_best=force_best).kept


def _assert_matches_numpy(scores, alive, sizes, k, force_best=False,
                          chunk=None):
  """The jitted selection of one group of ``scores`` (chunks of ``chunk``
  keys, or the default) against the numpy reference."""
  group_ids = (0,) * len(scores)
  with mock.patch.object(_selection, "_CHUNK", chunk or _selection._CHUNK):
    # A new function each time: a trace made with other chunks is not reused.
    got = jax.jit(lambda *a: _select(*a), static_argnums=(2, 3, 5))(
        scores, alive, group_ids, tuple(sizes), [k], force_best)
  want = reference.keep_top_k(scores, alive, list(group_ids), [k], force_best)
  for g, w in zip(got, want):
    np.testing.assert_array_equal(np.asarray(g), w)


@hypothesis.given(_problems())
@hypothesis.settings(max_examples=100)
def test_matches_numpy_sort(problem):
  scores, alive, group_ids, sizes, kept, force_best = problem
  got = jax.jit(_select, static_argnums=(2, 3, 5))(
      scores, alive, tuple(group_ids), tuple(sizes), kept, force_best
  )
  want = reference.keep_top_k(scores, alive, group_ids, kept, force_best)
  for g, w in zip(got, want):
    np.testing.assert_array_equal(np.asarray(g), w)


@hypothesis.given(_problems())
@hypothesis.settings(max_examples=5)
def test_jit_and_no_jit_agree(problem):
  scores, alive, group_ids, sizes, kept, force_best = problem
  jitted = jax.jit(_select, static_argnums=(2, 3, 5))(
      scores, alive, tuple(group_ids), tuple(sizes), kept, force_best
  )
  with jax.disable_jit():
    eager = _select(scores, alive, tuple(group_ids), tuple(sizes), kept, force_best)
  for a, b in zip(jitted, eager):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@hypothesis.given(_problems())
@hypothesis.settings(max_examples=30)
@pytest.mark.long_running(20)
def test_chunked_passes_match_numpy_sort(problem):
  # Chunks of 3 elements: arrays of one chunk, of several, with a remainder.
  scores, alive, group_ids, sizes, kept, force_best = problem
  with mock.patch.object(_selection, "_CHUNK", 3):
    # A new function each time: a trace made with other chunks is not reused.
    got = jax.jit(lambda *a: _select(*a), static_argnums=(2, 3, 5))(
        scores, alive, tuple(group_ids), tuple(sizes), kept, force_best)
  want = reference.keep_top_k(scores, alive, group_ids, kept, force_best)
  for g, w in zip(got, want):
    np.testing.assert_array_equal(np.asarray(g), w)


def test_chunked_passes_on_many_random_scores():
  rng = np.random.default_rng(1)
  scores = [rng.normal(size=(300, 200)).astype(np.float32),
            np.round(rng.normal(size=(1000,)), 1).astype(np.float32)]
  alive = [rng.random(s.shape) < 0.9 for s in scores]
  scores[0][:, :3] = 0.1  # ties at the cut, spread over the chunks
  for k in [1, 3000, 40000]:
    for force_best in (False, True):
      _assert_matches_numpy(scores, alive, (61000,), k, force_best, chunk=4096)


def test_small_arrays_read_together_match_numpy_sort():
  # Chunks of 4: on one device the arrays of a group of at most 4 elements
  # in all are read as one run.  Groups interleaved; a run closed by an
  # array that would overflow it and by a larger array between two small
  # ones; ties and a group whose best elements must be forced.
  rng = np.random.default_rng(3)
  shapes = [(2,), (1,), (3,), (2, 3), (2,), (1, 1), (2,), (4,)]
  group_ids = (0, 1, 0, 0, 0, 1, 1, 0)
  scores = [np.round(rng.normal(size=s), 1).astype(np.float32) for s in shapes]
  scores[4][:] = -5.0  # an array whose best is far below the others
  alive = [rng.random(s) < 0.9 for s in shapes]
  sizes = [sum(int(np.prod(s)) for s, g in zip(shapes, group_ids)
               if g == group) for group in (0, 1)]
  for kept in ([1, 0], [4, 2], [9, 3], [sizes[0], sizes[1]]):
    for force_best in (False, True):
      if force_best and kept[0] < 5:
        continue  # fewer places than arrays that keep their best
      with mock.patch.object(_selection, "_CHUNK", 4):
        got = jax.jit(lambda *a: _select(*a), static_argnums=(2, 3, 5))(
            scores, alive, group_ids, tuple(sizes), kept, force_best)
      want = reference.keep_top_k(scores, alive, list(group_ids), kept,
                                  force_best)
      for g, w in zip(got, want):
        np.testing.assert_array_equal(np.asarray(g), w,
                                      err_msg=str((kept, force_best)))


def test_compiled_passes_do_not_grow_with_small_arrays():
  # The histogram passes are one scatter each for 24 small kernels as for
  # one.  With a run per array the compiled code grew with the number of
  # kernels: 192 scatters here, and 9.1 s to compile against 4.0 s now
  # (on the 2-core CPU with both cores busy).
  def scatters(n):
    keys = [jax.ShapeDtypeStruct((100, 10), jnp.uint32)] * n
    select = jax.jit(lambda keys, k: _selection.keep_top_k(
        keys, (0,) * n, (1000 * n,), k).kept)
    hlo = select.lower(keys, jax.ShapeDtypeStruct((1,), jnp.int32)).as_text()
    return hlo.count("stablehlo.scatter")

  assert scatters(1) > 0
  assert scatters(24) == scatters(1)


@pytest.mark.parametrize("keep_best", [False, True])
def test_scratch_does_not_grow_with_the_keys(keep_best):
  # On one CPU device the passes go through the keys in chunks, so the
  # compiled selection's scratch is the same for 1M and 16M keys (it was
  # several times the keys' bytes, which made XLA:CPU map it afresh, and
  # fault on every page, at every step).
  def scratch(n):
    keys = [jax.ShapeDtypeStruct((n // 4, 4), jnp.uint32),
            jax.ShapeDtypeStruct((1000,), jnp.uint32)]
    select = jax.jit(lambda keys, k: _selection.keep_top_k(
        keys, (0, 0), (n + 1000,), k, keep_best=keep_best))
    compiled = select.lower(keys, jax.ShapeDtypeStruct((1,), jnp.int32)).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  small, large = scratch(2**20), scratch(2**24)
  assert large == small
  assert large < 4 * _selection._CHUNK * 4  # a few chunks of 4-byte keys


def test_exact_count_on_many_random_scores():
  rng = np.random.default_rng(0)
  scores = [rng.normal(size=(300, 200)).astype(np.float32),
            rng.normal(size=(1000,)).astype(np.float32)]
  alive = [np.ones(s.shape, bool) for s in scores]
  for k in [0, 1, 12345, 60999, 61000]:
    got = _select(scores, alive, (0, 0), (61000,), [k], False)
    assert sum(int(g.sum()) for g in got) == k
    want = reference.keep_top_k(scores, alive, [0, 0], [k])
    for g, w in zip(got, want):
      np.testing.assert_array_equal(np.asarray(g), w)


def test_all_equal_scores_keep_the_lowest_indices():
  scores = [np.full((4, 5), 3.0, np.float32)]
  got, = _select(scores, [np.ones((4, 5), bool)], (0,), (20,), [7], False)
  assert np.asarray(got).ravel().tolist() == [True] * 7 + [False] * 13


def test_keys_follow_float_order():
  # Normal numbers only: XLA may flush subnormals to zero, ranking them as 0.0.
  values = np.array(
      [-np.inf, -3e38, -1.0, -2e-38, -0.0, 0.0, 2e-38, 1.0, 3e38, np.inf],
      np.float32,
  )
  keys = np.asarray(_selection.ranking_keys(jnp.asarray(values), jnp.ones(10, bool)))
  assert keys.dtype == np.uint32
  assert keys[4] == keys[5]  # -0.0 ranks with 0.0
  assert np.all(np.diff(np.delete(keys, 4).astype(np.int64)) > 0)


def test_nan_ranks_below_minus_inf_and_above_pruned():
  scores = jnp.array([np.nan, -np.inf, 0.5, 0.5], jnp.float32)
  alive = jnp.array([True, True, True, False])
  keys = np.asarray(_selection.ranking_keys(scores, alive))
  assert keys[2] > keys[1] > keys[0] > keys[3] == _selection.PRUNED_KEY
  assert keys[0] == _selection.NAN_KEY


def test_nan_counts_per_group():
  rng = np.random.default_rng(0)
  scores = [rng.normal(size=s).astype(np.float32) for s in [(30,), (4, 5), (9,)]]
  alive = [rng.random(s.shape) < 0.8 for s in scores]
  for s in scores:
    s[rng.random(s.shape) < 0.3] = np.nan
  keys = [_selection.ranking_keys(jnp.asarray(s), jnp.asarray(a))
          for s, a in zip(scores, alive)]
  selection = jax.jit(_selection.keep_top_k, static_argnums=(1, 2))(
      keys, (0, 1, 0), (39, 20), jnp.array([10, 5]))
  nans = [int(np.count_nonzero(np.isnan(s) & a)) for s, a in zip(scores, alive)]
  assert selection.nan_counts.tolist() == [nans[0] + nans[2], nans[1]]


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_low_precision_scores(dtype):
  scores = jnp.array([0.25, -4.0, 3.0, 1.0], dtype)
  (got,), _ = _selection.keep_top_k(
      [_selection.ranking_keys(scores, jnp.ones(4, bool))], (0,), (4,),
      jnp.array([2]),
  )
  assert np.asarray(got).tolist() == [False, False, True, True]


def test_keep_best_forces_an_array_that_ranks_below_the_threshold():
  scores = [jnp.array([0.1, 0.2, 0.2]), jnp.array([5.0, 8.0, 7.0, 6.0])]
  keys = [_selection.ranking_keys(s, jnp.ones(s.shape, bool)) for s in scores]
  plain = _selection.keep_top_k(keys, (0, 0), (7,), jnp.array([2])).kept
  forced = jax.jit(_selection.keep_top_k, static_argnums=(1, 2, 4))(
      keys, (0, 0), (7,), jnp.array([2]), True).kept
  assert [m.tolist() for m in plain] == [[False] * 3, [False, True, True, False]]
  # The first 0.2 of the first array is forced; one place is left for 8.0.
  assert [m.tolist() for m in forced] == [[False, True, False],
                                          [False, True, False, False]]


@pytest.mark.parametrize("chunk", [None, 5, 4096])
def test_keep_best_forces_the_first_of_maxima_repeated_across_chunks(chunk):
  # Each array's maximum recurs in later chunks, and in the second array it
  # ties with the threshold: only the first occurrence may be forced, and the
  # count stays exact with the forced weights counted once.
  rng = np.random.default_rng(4)
  scores = [np.round(rng.uniform(0, 1, size=(60, 70)), 1).astype(np.float32),
            np.round(rng.uniform(0, 3, size=(9000,)), 1).astype(np.float32)]
  scores[0][[7, 20, 45], [3, 60, 11]] = 2.0  # below the threshold
  alive = [rng.random(s.shape) < 0.9 for s in scores]
  alive[0][[7, 20, 45], [3, 60, 11]] = True
  n_above = int(np.sum(scores[1][alive[1]] > 2.95))
  for k in [1, 2, n_above + 3, 6000]:
    _assert_matches_numpy(scores, alive, (13200,), k, force_best=True,
                          chunk=chunk)


def test_lazy_keys_match_computed_keys_and_need_one_shape():
  w = jnp.array([[0.5, -2.0, 1.0], [0.0, 3.0, -0.1]])
  alive = jnp.array([[True, True, False], [True, True, True]])
  keys_of = lambda w, m: _selection.ranking_keys(jnp.abs(w), m)
  lazy = _selection.keep_top_k([_selection.LazyKeys(keys_of, (w, alive))],
                               (0,), (6,), jnp.array([3])).kept[0]
  whole = _selection.keep_top_k([keys_of(w, alive)], (0,), (6,),
                                jnp.array([3])).kept[0]
  assert lazy.tolist() == whole.tolist() == [[True, True, False],
                                             [False, True, False]]
  with pytest.raises(ValueError, match="arrays of one shape"):
    _selection.keep_top_k([_selection.LazyKeys(keys_of, (w, alive[0]))],
                          (0,), (6,), jnp.array([3]))


@pytest.mark.parametrize("chunk", [None, 4096])
@pytest.mark.parametrize("places", [1, 4, 5])
def test_few_places_among_ties_keep_the_lowest_indices(chunk, places):
  # A few places among the tied weights: the lowest indices must be kept,
  # with the tied weights spread over two arrays and many chunks.
  rng = np.random.default_rng(3)
  scores = [np.round(rng.normal(size=(300, 100)), 2).astype(np.float32),
            np.round(rng.normal(size=(20000,)), 2).astype(np.float32)]
  alive = [rng.random(s.shape) < 0.9 for s in scores]
  # The first tied weights are neighbours, so a search that skipped the next
  # index would keep the wrong ones.
  scores[0][0, 5:12], alive[0][0, 5:12] = 0.0, True
  alive_scores = np.concatenate([s[a] for s, a in zip(scores, alive)])
  threshold = 0.0
  k = int(np.sum(alive_scores > threshold)) + places
  assert np.sum(alive_scores == threshold) > places  # a tie to break
  _assert_matches_numpy(scores, alive, (50000,), k, chunk=chunk)


@pytest.mark.parametrize("chunk", [None, 4096])
def test_ties_broken_among_indices_past_two_to_the_sixteen(chunk):
  # Scores rounded to 2 decimals: the threshold value is shared by about a
  # thousand weights spread over 300k indices, so the tie search needs both
  # halves of the index (its radix search reads 16 bits at a time).
  rng = np.random.default_rng(2)
  scores = [np.round(rng.normal(size=(600, 500)), 2).astype(np.float32),
            np.round(rng.normal(size=(70000,)), 2).astype(np.float32)]
  alive = [rng.random(s.shape) < 0.95 for s in scores]
  for k in [123457, 300001]:
    _assert_matches_numpy(scores, alive, (370000,), k, chunk=chunk)
