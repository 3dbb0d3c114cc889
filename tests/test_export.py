"""jaxprune.export: exact round trips, the formats' bytes, files, BCOO inference."""

import io
import math

import flax.linen as nn
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

import jaxprune
from jaxprune import export

pytestmark = pytest.mark.usefixtures("strict_dtypes")

_DTYPES = [np.float32, ml_dtypes.bfloat16]
_FORMATS = [("bitmask", None, None), ("csr", None, None), ("n_of_m", 2, 4)]


def _bits(x) -> np.ndarray:
  """The raw bits of an array, for bitwise comparisons."""
  x = np.asarray(x)
  return x.view(np.dtype(f"u{x.dtype.itemsize}"))


def _masked(values, mask) -> np.ndarray:
  """The reference: kept entries as they are, pruned ones +0."""
  values = np.asarray(values)
  return np.where(np.asarray(mask), values, np.zeros((), values.dtype))


def _n_of_m_mask(rng, shape, n, m, keep_fewer=True):
  """A random mask keeping at most n of every m rows of each column (exactly
  n in most groups, fewer in some when ``keep_fewer``)."""
  rows, columns = math.prod(shape[:-1]), shape[-1]
  mask = np.zeros((rows // m, m, columns), bool)
  for g in range(rows // m):
    for c in range(columns):
      count = rng.integers(0, n + 1) if keep_fewer else n
      mask[g, rng.choice(m, count, replace=False), c] = True
  return mask.reshape(shape)


def _awkward_values(rng, shape, dtype, mask):
  """Random values with kept zeros, a kept -0.0 and, for float32, a kept NaN
  with a payload."""
  values = rng.normal(size=shape).astype(dtype)
  flat_values, kept = values.reshape(-1), np.flatnonzero(mask)
  if kept.size >= 3:
    flat_values[kept[0]] = 0.0
    flat_values[kept[1]] = -0.0
    if dtype == np.float32:
      flat_values[kept[2:3]] = np.array([0x7FC00001], np.uint32).view(np.float32)
  return values


def _tree(rng, dtype, n, m):
  """A params tree with odd shapes, an all-pruned and an all-kept leaf, a
  4-D conv kernel, an unmasked leaf, and int keys; and its masks."""
  shapes = {"odd": (12, 7), "conv": (3, 3, 4, 5), "all_pruned": (8, 3),
            "all_kept": (4, 6), "wide": (4, 600)}
  masks = {}
  for name, shape in shapes.items():
    if name == "all_pruned":
      masks[name] = np.zeros(shape, bool)
    elif name == "all_kept" and n is None:
      masks[name] = np.ones(shape, bool)
    elif n is not None:
      masks[name] = _n_of_m_mask(rng, shape, n, m, keep_fewer=name != "all_kept")
    else:
      masks[name] = rng.random(shape) < 0.3
  params = {name: {"kernel": jnp.asarray(_awkward_values(rng, shape, dtype, masks[name])),
                   "bias": jnp.asarray(rng.normal(size=shape[-1:]).astype(dtype))}
            for name, shape in shapes.items()}
  masks = {name: {"kernel": jnp.asarray(mask), "bias": None}
           for name, mask in masks.items()}
  params["stack"] = {0: {"scale": jnp.asarray(np.float32([-0.0, 1.5]))}}
  masks["stack"] = {0: {"scale": None}}
  return params, masks


def _assert_bitwise_masked(restored, params, masks):
  expected = jax.tree.map(
      lambda p, m: np.asarray(p) if m is None else _masked(p, m),
      params, masks, is_leaf=lambda x: x is None)
  assert jax.tree.structure(restored) == jax.tree.structure(expected)
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(expected)):
    assert isinstance(got, jax.Array)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(_bits(got), _bits(want))


@pytest.mark.parametrize("dtype", _DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("format,n,m", _FORMATS, ids=[f[0] for f in _FORMATS])
def test_round_trip_is_bitwise(format, n, m, dtype):
  params, masks = _tree(np.random.default_rng(0), dtype, n, m)
  compressed = export.compress(params, masks, format, n=n, m=m)
  assert {leaf.encoding for leaf in compressed.leaves} == {"dense", format}
  _assert_bitwise_masked(export.decompress(compressed), params, masks)


@pytest.mark.parametrize("format,n,m", _FORMATS, ids=[f[0] for f in _FORMATS])
def test_file_round_trip_is_bitwise(format, n, m, tmp_path):
  params, masks = _tree(np.random.default_rng(1), ml_dtypes.bfloat16, n, m)
  compressed = export.compress(params, masks, format, n=n, m=m)
  path = tmp_path / "model.npz"
  export.save(path, compressed)
  with np.load(path, allow_pickle=False) as archive:  # no object arrays
    assert all(archive[key].dtype != object for key in archive.files)
  loaded = export.load(path)
  assert (loaded.format, loaded.n, loaded.m) == (format, n, m)
  assert loaded.skeleton == compressed.skeleton
  for got, want in zip(loaded.leaves, compressed.leaves):
    assert got[:5] == want[:5]
    assert got.arrays.keys() == want.arrays.keys()
    for name in want.arrays:
      assert got.arrays[name].dtype == want.arrays[name].dtype
      np.testing.assert_array_equal(_bits(got.arrays[name]), _bits(want.arrays[name]))
  _assert_bitwise_masked(export.decompress(loaded), params, masks)


@hypothesis.given(
    shape=st.lists(st.integers(1, 7), min_size=1, max_size=3).map(tuple),
    columns=st.integers(1, 700), density=st.floats(0, 1),
    seed=st.integers(0, 2**31), format=st.sampled_from(["bitmask", "csr"]))
def test_any_mask_round_trips(shape, columns, density, seed, format):
  rng = np.random.default_rng(seed)
  shape = shape[:-1] + (columns,)
  mask = rng.random(shape) < density
  values = _awkward_values(rng, shape, np.float32, mask)
  compressed = export.compress({"w": values}, {"w": mask}, format)
  np.testing.assert_array_equal(
      _bits(export.decompress(compressed)["w"]), _bits(_masked(values, mask)))


@pytest.mark.parametrize("n,m", [(1, 2), (3, 8), (2, 3), (4, 4)])
def test_n_of_m_round_trips_at_other_ratios(n, m):
  rng = np.random.default_rng(n * 10 + m)
  shape = (2, 3 * m, 5)
  mask = _n_of_m_mask(rng, shape, n, m)
  values = _awkward_values(rng, shape, np.float32, mask)
  compressed = export.compress({"w": values}, {"w": mask}, "n_of_m", n=n, m=m)
  np.testing.assert_array_equal(
      _bits(export.decompress(compressed)["w"]), _bits(_masked(values, mask)))


def _pack_msb_first(positions, bits):
  """Reference packing: each position's bits, most significant first, one
  long bit string cut into bytes (the last padded with zeros)."""
  text = "".join(format(int(p), f"0{bits}b") for p in positions)
  text += "0" * (-len(text) % 8)
  return [int(text[i:i + 8], 2) for i in range(0, len(text), 8)]


def test_n_of_m_2_of_4_stores_2_bit_positions_by_hand():
  w = np.arange(1.0, 17.0, dtype=np.float32).reshape(8, 2)
  mask = np.zeros((8, 2), bool)
  mask[[1, 3], 0] = True  # column 0, rows 0-3: positions 1 and 3
  mask[4, 0] = True       # column 0, rows 4-7: position 0, then filler 1
  mask[[0, 2], 1] = True  # column 1, rows 0-3: positions 0 and 2
  # column 1, rows 4-7: nothing kept, fillers at positions 0 and 1
  leaf, = export.compress({"w": w}, {"w": mask}, "n_of_m", n=2, m=4).leaves
  # Slots (group, slot, column) row-major: g0 s0 [1, 0], g0 s1 [3, 2],
  # g1 s0 [0, 0], g1 s1 [1, 1].
  positions = [1, 0, 3, 2, 0, 0, 1, 1]
  assert _pack_msb_first(positions, 2) == [0b01001110, 0b00000101]
  assert leaf.arrays["positions"].tolist() == _pack_msb_first(positions, 2)
  assert leaf.arrays["positions"].dtype == np.uint8
  assert leaf.arrays["values"].tolist() == [
      [w[1, 0], w[0, 1]], [w[3, 0], w[2, 1]], [w[4, 0], 0.0], [0.0, 0.0]]
  assert leaf.kept == 5


def test_n_of_m_3_bit_positions_cross_byte_boundaries():
  mask = np.zeros((8, 3), bool)
  mask[[2, 7], 0] = True
  mask[[5], 1] = True
  mask[[0, 6], 2] = True
  leaf, = export.compress({"w": np.ones((8, 3), np.float32)}, {"w": mask},
                          "n_of_m", n=2, m=8).leaves
  positions = [2, 0, 0, 7, 5, 6]  # slot 0 of columns 0-2, then slot 1
  assert leaf.arrays["positions"].tolist() == _pack_msb_first(positions, 3)


def test_csr_gaps_and_fillers_by_hand():
  w = np.arange(1.0, 1201.0, dtype=np.float32).reshape(2, 600)
  mask = np.zeros((2, 600), bool)
  mask[0, [3, 259, 260, 599]] = True  # row 1 keeps nothing
  leaf, = export.compress({"w": w}, {"w": mask}, "csr").leaves
  # Skipped columns: 3, 255, 0, then 338 = one filler of 255 + 1 (at column
  # 516) and 82 more.
  assert leaf.arrays["gaps"].tolist() == [3, 255, 0, 255, 82]
  assert leaf.arrays["values"].tolist() == [w[0, 3], w[0, 259], w[0, 260], 0.0,
                                            w[0, 599]]
  assert leaf.arrays["row_pointers"].tolist() == [0, 5, 5]
  assert leaf.arrays["gaps"].dtype == np.uint8
  assert leaf.arrays["row_pointers"].dtype == np.uint32


def test_bitmask_packs_row_major_most_significant_bit_first():
  mask = np.array([[True, False, True], [True, True, False], [False, False, True]])
  w = np.arange(9.0, dtype=np.float32).reshape(3, 3)
  leaf, = export.compress({"w": w}, {"w": mask}, "bitmask").leaves
  assert leaf.arrays["bits"].tolist() == [0b10111000, 0b10000000]
  assert leaf.arrays["values"].tolist() == [0.0, 2.0, 3.0, 4.0, 8.0]


def _expected_csr_bytes(mask, itemsize):
  rows = mask.reshape(-1, mask.shape[-1])
  entries = 0
  for row in rows:
    previous = -1
    for column in np.flatnonzero(row):
      entries += 1 + (column - previous - 1) // 256
      previous = column
  return entries * (itemsize + 1) + (rows.shape[0] + 1) * 4


@pytest.mark.parametrize("dtype", _DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("format,n,m", _FORMATS, ids=[f[0] for f in _FORMATS])
def test_size_report_matches_sizes_from_first_principles(format, n, m, dtype):
  params, masks = _tree(np.random.default_rng(2), dtype, n, m)
  report = export.size_report(export.compress(params, masks, format, n=n, m=m))
  itemsize = np.dtype(dtype).itemsize
  expected = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    keys = tuple(p.key for p in path)
    mask = masks
    for key in keys:
      mask = mask[key]
    size, leaf_itemsize = leaf.size, leaf.dtype.itemsize
    if mask is None:
      nbytes = size * leaf_itemsize
    elif format == "bitmask":
      nbytes = math.ceil(size / 8) + int(np.sum(mask)) * itemsize
    elif format == "csr":
      nbytes = _expected_csr_bytes(np.asarray(mask), itemsize)
    else:
      slots = size // m * n
      nbytes = slots * itemsize + math.ceil(slots * 2 / 8)
    expected["/".join(str(k) for k in keys)] = (nbytes, 4 * size)
  assert {leaf.path: (leaf.nbytes, leaf.dense_float32_bytes)
          for leaf in report.leaves} == expected
  total = sum(b for b, _ in expected.values())
  dense = sum(d for _, d in expected.values())
  assert (report.nbytes, report.dense_float32_bytes) == (total, dense)
  assert report.ratio == pytest.approx(total / dense)
  table = str(report)
  assert table.splitlines()[-1].startswith(f"| total | | | | {total} | {dense} |")
  assert len(table.splitlines()) == 3 + len(expected)


def test_bcoo_leaves_hold_exactly_the_kept_entries():
  rng = np.random.default_rng(3)
  params, masks = _tree(rng, ml_dtypes.bfloat16, None, None)
  sparse_params = export.to_bcoo(params, masks)
  for name in ("odd", "conv", "all_pruned", "all_kept", "wide"):
    kernel, mask = sparse_params[name]["kernel"], masks[name]["kernel"]
    assert isinstance(kernel, jax.experimental.sparse.BCOO)
    assert kernel.nse == int(mask.sum()) and kernel.dtype == jnp.bfloat16
    expected = _masked(params[name]["kernel"], mask)
    np.testing.assert_array_equal(kernel.todense(), expected)
    # The data bit for bit; todense() adds into zeros, so -0.0 shows as 0.0.
    np.testing.assert_array_equal(_bits(kernel.data), _bits(expected[np.asarray(mask)]))
    np.testing.assert_array_equal(kernel.indices, np.argwhere(mask))
    assert sparse_params[name]["bias"] is params[name]["bias"]
  kept_zero = sparse_params["odd"]["kernel"].data == 0  # kept zeros stored
  assert int(kept_zero.sum()) >= 2


def test_bcoo_select_keeps_other_masked_leaves_dense_and_masked():
  params, masks = _tree(np.random.default_rng(4), np.float32, None, None)
  sparse_params = export.to_bcoo(params, masks,
                                 select=lambda path, leaf: leaf.ndim == 2)
  conv = sparse_params["conv"]["kernel"]
  assert isinstance(conv, jax.Array)
  np.testing.assert_array_equal(
      _bits(conv), _bits(_masked(params["conv"]["kernel"], masks["conv"]["kernel"])))
  assert isinstance(sparse_params["odd"]["kernel"], jax.experimental.sparse.BCOO)


class _MLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(32)(x))
    x = nn.relu(nn.Dense(16)(x))
    return nn.Dense(4)(x)


def test_linen_model_on_bcoo_kernels_gives_the_masked_outputs():
  model = _MLP()
  x = jax.random.normal(jax.random.key(1), (5, 12))
  params = model.init(jax.random.key(0), x)["params"]
  masks = jaxprune.prune_once(params, sparsity=0.8)
  expected = model.apply({"params": jaxprune.apply_masks(params, masks)}, x)
  apply = jax.jit(export.sparse_apply(model.apply))
  got = apply({"params": export.to_bcoo(params, masks)}, x)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  # Without the masks the outputs differ: the comparison can fail.
  assert not np.allclose(model.apply({"params": params}, x), expected, atol=1e-3)


def test_nnx_model_on_bcoo_kernels_gives_the_masked_outputs():
  model = nnx.Sequential(
      nnx.Linear(12, 32, rngs=nnx.Rngs(0)), nnx.relu,
      nnx.Linear(32, 16, rngs=nnx.Rngs(1)), nnx.relu,
      nnx.Linear(16, 4, rngs=nnx.Rngs(2)))
  x = jax.random.normal(jax.random.key(1), (5, 12))
  masks = jaxprune.prune_once(model, sparsity=0.8)
  sparse_params = export.to_bcoo(model, masks)
  assert isinstance(sparse_params["layers"][0]["kernel"],
                    jax.experimental.sparse.BCOO)
  dense_before = model(x)
  got = jax.jit(export.sparse_apply(model))(sparse_params, x)
  np.testing.assert_array_equal(model(x), dense_before)  # model unchanged
  jaxprune.apply_masks(model, masks)
  np.testing.assert_allclose(got, model(x), rtol=1e-5, atol=1e-6)
  assert not np.allclose(dense_before, model(x), atol=1e-3)


def test_nnx_params_compress_to_their_plain_form(tmp_path):
  model = nnx.Sequential(nnx.Linear(8, 6, rngs=nnx.Rngs(0)), nnx.relu,
                         nnx.Linear(6, 2, rngs=nnx.Rngs(1)))
  masks = jaxprune.prune_once(model, sparsity=0.5)
  export.save(tmp_path / "nnx.npz", export.compress(model, masks, "csr"))
  restored = export.decompress(export.load(tmp_path / "nnx.npz"))
  jaxprune.apply_masks(model, masks)
  expected = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  assert sorted(restored["layers"]) == [0, 2]  # int keys survive the file
  assert jax.tree.structure(restored) == jax.tree.structure(expected)
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(_bits(got), _bits(want))
  state = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(state, restored)  # the documented way back in


class _ConvNet(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3))(x))
    return nn.Dense(3)(x.reshape((x.shape[0], -1)))


def test_conv_kernels_stay_dense_in_sparse_inference():
  model = _ConvNet()
  x = jax.random.normal(jax.random.key(1), (2, 6, 6, 1))
  params = model.init(jax.random.key(0), x)["params"]
  masks = jaxprune.prune_once(params, sparsity=0.7)
  apply = jax.jit(export.sparse_apply(model.apply))
  with pytest.raises(NotImplementedError, match="bcoo convolution"):
    apply({"params": export.to_bcoo(params, masks)}, x)
  matrices = export.to_bcoo(params, masks, select=lambda path, leaf: leaf.ndim == 2)
  got = apply({"params": matrices}, x)
  expected = model.apply({"params": jaxprune.apply_masks(params, masks)}, x)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


_PARAMS = {"dense": {"kernel": jnp.ones((4, 2)), "bias": jnp.ones(2)}}


@pytest.mark.parametrize("masks,error,match", [
    ({"dense": {"kernel": jnp.ones((4, 2), bool)}}, ValueError,
     "no entry for dense/bias"),
    ({"dense": {"kernel": jnp.ones((4, 2), bool), "bias": None, "extra": None}},
     ValueError, "dense/extra, which the params lack"),
    ({"dense": {"kernel": jnp.ones((2, 4), bool), "bias": None}}, ValueError,
     r"mask of dense/kernel has shape \(2, 4\)"),
    ({"dense": {"kernel": jnp.ones((4, 2)), "bias": None}}, TypeError,
     "mask of dense/kernel has dtype float32"),
    ({"dense": [jnp.ones((4, 2), bool), None]}, ValueError,
     "masks hold a list at dense"),
], ids=["missing", "extra", "shape", "dtype", "nesting"])
@pytest.mark.parametrize("function", ["compress", "to_bcoo"])
def test_masks_that_do_not_fit_name_the_leaf(masks, error, match, function):
  with pytest.raises(error, match=f"jaxprune.export.{function}: .*{match}"):
    getattr(export, function)(_PARAMS, masks)


def test_unknown_format_and_misplaced_n_m_are_refused():
  masks = {"dense": {"kernel": jnp.ones((4, 2), bool), "bias": None}}
  with pytest.raises(ValueError, match="unknown format 'coo'.*'bitmask', 'csr', 'n_of_m'"):
    export.compress(_PARAMS, masks, "coo")
  with pytest.raises(ValueError, match="n and m are for format='n_of_m' only"):
    export.compress(_PARAMS, masks, "bitmask", n=2, m=4)
  with pytest.raises(TypeError, match="needs integers n and m"):
    export.compress(_PARAMS, masks, "n_of_m")
  with pytest.raises(ValueError, match="1 <= n <= m"):
    export.compress(_PARAMS, masks, "n_of_m", n=3, m=2)


def test_n_of_m_refuses_masks_that_are_not_n_of_m():
  mask = np.zeros((8, 2), bool)
  mask[4:7, 1] = True  # 3 of rows 4..7 in column 1
  with pytest.raises(ValueError, match=(
      r"compress: dense/kernel is not 2:4 sparse: column 1 keeps 3 of rows "
      r"4..7.*format='bitmask' or 'csr'")):
    export.compress({"dense": {"kernel": np.ones((8, 2), np.float32)}},
                    {"dense": {"kernel": mask}}, "n_of_m", n=2, m=4)
  with pytest.raises(ValueError, match=(
      r"dense/kernel has shape \(6, 2\): its reduction size .* is 6, which "
      r"does not divide into groups of m=4")):
    export.compress({"dense": {"kernel": np.ones((6, 2), np.float32)}},
                    {"dense": {"kernel": np.zeros((6, 2), bool)}}, "n_of_m",
                    n=2, m=4)


def test_trees_other_than_nested_dicts_are_refused_by_path():
  with pytest.raises(TypeError, match=r"compress: the params hold a list at "
                     r"layers \(convert it to a dict keyed by index\)"):
    export.compress({"layers": [jnp.ones((2, 2))]}, {"layers": None})
  with pytest.raises(TypeError, match="key 1.5 of type float"):
    export.compress({1.5: jnp.ones((2, 2))}, {1.5: None})


def test_load_refuses_other_and_damaged_files(tmp_path):
  np.savez(tmp_path / "other.npz", x=np.ones(3))
  with pytest.raises(ValueError, match="not written by jaxprune.export.save"):
    export.load(tmp_path / "other.npz")
  compressed = export.compress(_PARAMS, {"dense": {
      "kernel": jnp.array([[True, False]] * 4), "bias": None}}, "csr")
  kernel = compressed.leaves[1]
  damaged = kernel._replace(arrays={**kernel.arrays, "gaps": kernel.arrays["gaps"][:-1]})
  file = io.BytesIO()
  export.save(file, compressed._replace(leaves=(compressed.leaves[0], damaged)))
  file.seek(0)
  with pytest.raises(ValueError, match="decompress: the arrays of dense/kernel"):
    export.decompress(export.load(file))
  np.savez(tmp_path / "garbled.npz",
           **{"jaxprune_export.json": np.array('{"jaxprune_export": 1}')})
  with pytest.raises(ValueError, match=r"load: the description in .*garbled.npz "
                     r"does not read \(KeyError: 'leaves'\); the file is damaged"):
    export.load(tmp_path / "garbled.npz")
