"""Sharded pruning on 8 devices gives the one-device result.

For every transformation of ``tests/transforms.py`` and every before-training
method: the same masks and, to float tolerance, the same params after a few
jitted steps as on one device, with the params replicated (data parallel),
sharded along their largest dimension (fully sharded) or along their last
one (tensor parallel), under automatic and explicit sharding; every state
leaf the shape of a param carries that param's sharding; and the compiled
update holds no all-gather of a whole parameter.

The tests need 8 devices.  In a normal run (one CPU device),
``test_on_8_simulated_devices`` runs this file again in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``; run it directly with
that flag set to see each test.
"""

import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import transforms
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

import jaxprune
from jaxprune import _packing

_DEVICES = 8
_FLAG = f"--xla_force_host_platform_device_count={_DEVICES}"

needs_devices = pytest.mark.skipif(
    jax.device_count() < _DEVICES,
    reason=f"needs {_DEVICES} devices; test_on_8_simulated_devices runs these "
           f"in a subprocess with XLA_FLAGS={_FLAG}")


@pytest.mark.skipif(jax.device_count() >= _DEVICES, reason="on 8 devices already")
@pytest.mark.parametrize("tests", [
    pytest.param(("test_update_matches_one_device_without_gathering_a_parameter",
                  "test_packed_masks_are_split_with_their_kernels",
                  "test_long_leaves_are_projected_in_place",
                  "test_flipout_noise_is_drawn_where_the_weights_lie"),
                 marks=pytest.mark.long_running(115)),
    pytest.param(("test_train_steps_match_one_device",),
                 marks=pytest.mark.long_running(30)),
    pytest.param(("test_before_training_masks_match_one_device",),
                 marks=pytest.mark.long_running(13)),
], ids=lambda tests: tests[0])
def test_on_8_simulated_devices(tests):
  """A subprocess per group of test functions, so that pytest -n spreads
  them."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {_FLAG}".strip()
  result = subprocess.run(
      [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider",
       *(f"{__file__}::{test}" for test in tests)],
      env=env, capture_output=True, text=True, timeout=1200,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
  assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-3000:]
  assert "skipped" not in summary and "passed" in summary, result.stdout[-3000:]


# --- layouts -----------------------------------------------------------------


def _mesh(mode: str) -> jax.sharding.Mesh:
  axis_type = getattr(jax.sharding.AxisType, mode)
  return jax.make_mesh((_DEVICES,), ("x",), axis_types=(axis_type,))


def _spec(layout: str, shape) -> PartitionSpec:
  """Replicated ("dp"), or split along the largest dimension ("fsdp") or the
  last one ("tp") where that divides by the device count."""
  splittable = [d for d, n in enumerate(shape) if n % _DEVICES == 0]
  if layout == "dp" or not splittable:
    return PartitionSpec()
  if layout == "fsdp":
    dim = max(splittable, key=lambda d: (shape[d], -d))
  elif len(shape) - 1 in splittable:
    dim = len(shape) - 1
  else:
    return PartitionSpec()
  return PartitionSpec(*("x" if d == dim else None for d in range(len(shape))))


def _shard(tree, mesh, layout):
  return jax.device_put(tree, jax.tree.map(
      lambda x: NamedSharding(mesh, _spec(layout, np.shape(x))), tree))


def _normalised(spec: PartitionSpec) -> tuple:
  """``spec`` without trailing Nones (P('x', None) is P('x'))."""
  entries = list(spec)
  while entries and entries[-1] is None:
    entries.pop()
  return tuple(entries)


def _assert_shardings_follow_params(tree, layout):
  """Every array leaf of ``tree`` that could be split is split as a param of
  its shape is: masks, counters and moments live beside their weights."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(
      tree, is_leaf=_packing.is_packed)[0]:
    packed = _packing.is_packed(leaf)
    if not packed and (not isinstance(leaf, jax.Array) or leaf.ndim == 0):
      continue
    # A packed mask's bytes are split as its kernel (of leaf.shape) is.
    want = _normalised(_spec(layout, leaf.shape))
    got = _normalised((leaf.bits if packed else leaf).sharding.spec)
    assert got == want, (jax.tree_util.keystr(path), leaf.shape, got, want)


def _assert_same(sharded, single, what):
  # Compared unpacked: the sharded state keeps boolean the masks that do not
  # split into whole bytes.
  sharded, single = (_packing.unpack_tree(t) for t in (sharded, single))
  sharded_leaves = jax.tree_util.tree_flatten_with_path(sharded)[0]
  single_leaves = jax.tree.leaves(single)
  assert len(sharded_leaves) == len(single_leaves)
  for (path, a), b in zip(sharded_leaves, single_leaves):
    if isinstance(a, jax.Array) and jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
      a, b = jax.random.key_data(a), jax.random.key_data(b)
    a, b = np.asarray(a), np.asarray(b)
    where = f"{what} {jax.tree_util.keystr(path)}"
    if np.issubdtype(a.dtype, np.inexact):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=where)
    else:
      np.testing.assert_array_equal(a, b, err_msg=where)


_SHAPE = re.compile(r"\w+\[([\d,]*)\]")


def _largest_gather(hlo: str) -> int:
  """Elements in the largest result of an all-gather or all-to-all."""
  largest = 0
  for line in hlo.splitlines():
    match = re.search(r"=\s*(.*?)\s+(all-gather|all-to-all)(-start)?\(", line)
    if match:
      for dims in _SHAPE.findall(match.group(1)):
        largest = max(largest, int(np.prod([int(d) for d in dims.split(",") if d])))
  return largest


# --- optimizer updates, all transformations ----------------------------------

# Distinct shapes, each with a dimension that divides by 8.
_UPDATE_SHAPES = {"a": {"kernel": (16, 40), "bias": (40,)},
                  "b": {"kernel": (3, 3, 8, 24)},
                  "c": {"kernel": (40, 32)}}


def _update_params():
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s), jnp.float32),
                      _UPDATE_SHAPES, is_leaf=lambda x: isinstance(x, tuple))


def _transform(name, params):
  if name in transforms.MASKED:
    return transforms.MASKED[name](optax.adam(1e-2), params), params
  gated = jaxprune.add_gates(params, jax.random.key(1), granularity="unit")
  return transforms.GATED[name](optax.adam(1e-1), gated), gated


def _update_step(tx):
  def step(params, state, t):
    grads = jax.tree.map(lambda p: jnp.cos(p * (t + 1)), params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state
  return jax.jit(step)


def _run(step, params, state, steps=6):
  for t in range(steps):
    params, state = step(params, state, jnp.float32(t))
  return params, state


_ALL = list(transforms.MASKED) + list(transforms.GATED)
# N:M groups and blocks tile a tensor across its shards: under explicit
# sharding their mask update gathers the tensor's ranking keys (documented
# in jaxprune.structures); the results must match all the same.
_GATHERS_AT_MASK_UPDATES = {"prune-1of2"}


@needs_devices
@pytest.mark.parametrize("name", _ALL)
def test_update_matches_one_device_without_gathering_a_parameter(name):
  tx, params = _transform(name, _update_params())
  single = _run(_update_step(tx), params, tx.init(params))
  smallest_param = min(x.size for x in jax.tree.leaves(params) if x.ndim > 1)
  # Fully sharded under explicit sharding, tensor parallel under automatic.
  for layout, mode in (("fsdp", "Explicit"), ("tp", "Auto")):
    mesh = _mesh(mode)
    with jax.set_mesh(mesh):
      sharded_params = _shard(params, mesh, layout)
      state = tx.init(sharded_params)
      _assert_shardings_follow_params(state, layout)
      compiled = _update_step(tx).lower(sharded_params, state, jnp.float32(0)).compile()
      sharded = _run(compiled, sharded_params, state)
    _assert_same(sharded, single, f"{name} {layout} {mode}")
    _assert_shardings_follow_params(sharded, layout)
    if name not in _GATHERS_AT_MASK_UPDATES:
      assert _largest_gather(compiled.as_text()) < smallest_param, (layout, mode)


_PACKED = "prune-magnitude-packed"


@needs_devices
def test_packed_masks_are_split_with_their_kernels():
  rng = np.random.default_rng(3)
  # Last axes of 16, 8 and 5 entries a device: u's are not whole bytes.
  params = {name: jnp.asarray(rng.normal(size=shape), jnp.float32)
            for name, shape in (("k", (16, 128)), ("c", (8, 3, 64)),
                                ("u", (16, 40)))}
  tx = transforms.MASKED[_PACKED](optax.adam(1e-2), params)
  single = _run(_update_step(tx), params, tx.init(params))
  mesh = _mesh("Explicit")
  with jax.set_mesh(mesh):
    sharded_params = _shard(params, mesh, "tp")
    sharded = _run(_update_step(tx), sharded_params, tx.init(sharded_params))
  _assert_same(sharded, single, "packed")
  _assert_shardings_follow_params(sharded, "tp")
  masks = sharded[1].masks
  assert all(_normalised(masks[n].bits.sharding.spec)[-1] == "x" for n in "kc")
  assert masks["u"].dtype == jnp.bool_  # packing it would gather it


# Long enough for the radix search (jaxprune/_thresholds.py): the l1 leaf
# in 16-bit digits, the 8192 group norms in 11-bit digits.
_LONG_LEAVES = {
    "l1": (lambda x: jaxprune.projections.l1_ball(x, 30.0), (512, 256)),
    "l21": (lambda x: jaxprune.projections.l21_ball(x, 30.0), (8192, 8)),
    "l11": (lambda x: jaxprune.projections.l11_ball(x, 30.0), (8192, 8)),
}


@needs_devices
@pytest.mark.parametrize("name", list(_LONG_LEAVES))
def test_long_leaves_are_projected_in_place(name):
  project, shape = _LONG_LEAVES[name]
  x = jnp.asarray(np.random.default_rng(2).normal(size=shape), jnp.float32)
  single = jax.jit(project)(x)
  assert 0 < np.mean(np.asarray(single) == 0) < 1  # a threshold was found
  for layout, mode in (("fsdp", "Explicit"), ("tp", "Auto")):
    mesh = _mesh(mode)
    with jax.set_mesh(mesh):
      sharded_x = _shard(x, mesh, layout)
      compiled = jax.jit(project).lower(sharded_x).compile()
      sharded = compiled(sharded_x)
    # The thresholds come from sums of some 10**5 float32 magnitudes, added
    # in another order on 8 devices: equal to a few units of their rounding.
    np.testing.assert_allclose(sharded, single, rtol=1e-5, atol=1e-5,
                               err_msg=f"{name} {layout} {mode}")
    _assert_shardings_follow_params(sharded, layout)
    # The histograms are all-reduced; no shard of x travels.
    assert _largest_gather(compiled.as_text()) < x.size // _DEVICES


@needs_devices
def test_flipout_noise_is_drawn_where_the_weights_lie():
  """Each device draws the noise of its own shard: no float array of the
  whole kernel's shape in the compiled update (a replicated draw of it was
  computed whole on every device)."""
  mesh = _mesh("Explicit")
  with jax.set_mesh(mesh):
    params = _shard({"w": jnp.ones((64, 48))}, mesh, "fsdp")
    tx = jaxprune.flipout(optax.sgd(0.1), prune_every=5, noise=1.0)
    hlo = jax.jit(tx.update).lower(params, tx.init(params), params).compile().as_text()
  assert "erf-inv" in hlo or "erf_inv" in hlo  # the noise is there
  assert not re.search(r"f32\[64,48\]", hlo)


# --- train steps: a sharded batch through a model ----------------------------

_MODEL_SHAPES = {"a": {"kernel": (16, 40), "bias": (40,)}, "c": {"kernel": (40, 8)}}


def _model_params():
  rng = np.random.default_rng(1)
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s) / np.sqrt(s[0]), jnp.float32),
                      _MODEL_SHAPES, is_leaf=lambda x: isinstance(x, tuple))


def _forward(params, x):
  hidden = jnp.tanh(x @ params["a"]["kernel"] + params["a"]["bias"][None])
  return hidden @ params["c"]["kernel"]


def _batch(t):
  rng = np.random.default_rng(100 + t)
  x = rng.normal(size=(32, 16)).astype(np.float32)
  return {"x": x, "y": np.sin(x[:, :8] * 2).astype(np.float32)}


def _loss(params, batch):
  return jnp.mean((_forward(params, batch["x"]) - batch["y"]) ** 2)


def _train_step(tx, gated):
  def step(params, state, batch, t):
    def loss(p):
      if gated:
        p = jaxprune.apply_gates(p, jax.random.fold_in(jax.random.key(2), t))
      return _loss(p, batch)
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    return optax.apply_updates(params, updates), state
  return jax.jit(step)


# Every row's update is checked sharded above; training a model runs one row
# of each kind of state (masks, packed masks, N:M and channels, FlipOut's
# counters, a projection, L0 gates, shared centroids) for suite time.
_TRAINED = ("prune-magnitude-global", "prune-magnitude-packed", "prune-1of2",
            "prune-channels-global", "flipout", "project-l21",
            "l0-dual-ascent", "fine-tune-centroids")


def test_the_trained_rows_are_rows_of_the_battery():
  assert set(_TRAINED) <= set(_ALL)


@needs_devices
@pytest.mark.parametrize("name", _TRAINED)
def test_train_steps_match_one_device(name):
  tx, params = _transform(name, _model_params())
  step = _train_step(tx, gated=name in transforms.GATED)
  batches = [_batch(t) for t in range(6)]

  def run(params, state, put):
    for t, batch in enumerate(batches):
      params, state = step(params, state, put(batch), t)
    return params, state

  single = run(params, tx.init(params), lambda b: b)
  mesh = _mesh("Auto")
  with jax.set_mesh(mesh):
    batch_sharding = NamedSharding(mesh, PartitionSpec("x"))
    for layout in ("dp", "fsdp"):  # data parallel, fully sharded
      sharded_params = _shard(params, mesh, layout)
      sharded = run(sharded_params, tx.init(sharded_params),
                    lambda b: jax.device_put(b, batch_sharding))
      _assert_same(sharded, single, f"{name} {layout}")
      _assert_shardings_follow_params(sharded, layout)


# --- before training ---------------------------------------------------------


def _apply(params, x):
  return _forward(params, x)


_BEFORE_TRAINING = {
    "snip": lambda p, b: jaxprune.snip(_loss, p, b, sparsity=0.9),
    "snip_it": lambda p, b: jaxprune.snip_it(_loss, p, b, sparsity=0.9, steps=3,
                                             batches_per_round=2),
    "grasp": lambda p, b: jaxprune.grasp(_loss, p, b, sparsity=0.9),
    "synflow": lambda p, b: jaxprune.synflow(_apply, p, (16,), sparsity=0.9,
                                             rounds=5),
    "snap_it": lambda p, b: jaxprune.snap_it(_loss, p, b, sparsity=0.5,
                                             layers=["a", "c"], steps=2),
}


@needs_devices
@pytest.mark.parametrize("name", list(_BEFORE_TRAINING))
def test_before_training_masks_match_one_device(name):
  prune = _BEFORE_TRAINING[name]
  params = _model_params()
  batches = [_batch(t) for t in range(4)]
  single = prune(params, batches)
  mesh = _mesh("Auto")
  with jax.set_mesh(mesh):
    sharded_params = _shard(params, mesh, "fsdp")
    sharded_batches = jax.device_put(batches, NamedSharding(mesh, PartitionSpec("x")))
    sharded = prune(sharded_params, sharded_batches)
  _assert_same(sharded, single, name)
  if name != "snap_it":  # node masks are per layer, not per weight
    _assert_shardings_follow_params(sharded, "fsdp")
