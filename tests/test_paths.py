"""SynFlow and connectivity: path scores against numpy, collapse detection."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference

import jaxprune
from experiments import models


def _mlp_params(seed=0):
  rng = np.random.default_rng(seed)
  return {
      "a": {"kernel": jnp.asarray(rng.normal(size=(5, 7)), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=7), jnp.float32)},
      "b": {"kernel": jnp.asarray(rng.normal(size=(7, 3)), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=3), jnp.float32)},
  }


def _mlp(params, x):
  h = jax.nn.relu(x @ params["a"]["kernel"] + params["a"]["bias"][None])
  return h @ params["b"]["kernel"] + params["b"]["bias"][None]


def _one_round_numpy_masks(params, zero_biases):
  a = np.abs(np.asarray(params["a"]["kernel"], np.float64))
  b = np.abs(np.asarray(params["b"]["kernel"], np.float64))
  bias = 0 if zero_biases else np.abs(np.asarray(params["a"]["bias"], np.float64))
  # R = sum(relu(1^T a + |bias_a|) b + |bias_b|), every unit active:
  # score_a[i, j] = a[i, j] * sum_k b[j, k] and
  # score_b[j, k] = b[j, k] * (sum_i a[i, j] + |bias_a[j]|).
  scores = [a * b.sum(axis=1)[None, :], b * (a.sum(axis=0) + bias)[:, None]]
  return reference.keep_top_k(scores, [np.ones(s.shape, bool) for s in scores],
                              [0, 0], [56 - round(0.75 * 56)], force_best=True)


@pytest.mark.parametrize("zero_biases", [False, True])
def test_one_synflow_round_keeps_the_numpy_path_scores(zero_biases):
  params = _mlp_params()
  want = _one_round_numpy_masks(params, zero_biases)
  masks = jaxprune.synflow(_mlp, params, (5,), sparsity=0.75, rounds=1,
                           zero_biases=zero_biases)
  np.testing.assert_array_equal(np.asarray(masks["a"]["kernel"]), want[0])
  np.testing.assert_array_equal(np.asarray(masks["b"]["kernel"]), want[1])
  assert masks["a"]["bias"] is None


def test_synflow_takes_the_biases_absolute_values_by_default():
  # The authors' linearisation makes every parameter |p|, biases included;
  # with non-zero biases the masks differ from those of zeroed biases.
  params = _mlp_params()
  authors = _one_round_numpy_masks(params, zero_biases=False)
  zeroed = _one_round_numpy_masks(params, zero_biases=True)
  assert not np.array_equal(authors[1], zeroed[1])
  masks = jaxprune.synflow(_mlp, params, (5,), sparsity=0.75, rounds=1)
  np.testing.assert_array_equal(np.asarray(masks["b"]["kernel"]), authors[1])
  # And over many rounds, on a network with a bias at every layer.
  many = jaxprune.synflow(_mlp, params, (5,), sparsity=0.9, rounds=5)
  many_zeroed = jaxprune.synflow(_mlp, params, (5,), sparsity=0.9, rounds=5,
                                 zero_biases=True)
  assert not all(np.array_equal(many[l]["kernel"], many_zeroed[l]["kernel"])
                 for l in ("a", "b"))


def test_synflow_reaches_extreme_sparsity_exactly_without_collapse():
  model = models.get_model("lenet5")
  params = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
  apply_fn = lambda p, x: model.apply({"params": p}, x)
  masks = jaxprune.synflow(apply_fn, params, (28, 28, 1), sparsity=0.999,
                           rounds=20)
  total = sum(m.size for m in jax.tree.leaves(masks))
  kept = sum(int(m.sum()) for m in jax.tree.leaves(masks))
  assert kept == total - round(0.999 * total)
  report = jaxprune.connectivity(apply_fn, params, masks, (28, 28, 1))
  assert report.connected and not report.disconnected


def test_connectivity_finds_a_cut_layer_and_dead_weights():
  params = _mlp_params()
  full = {"a": {"kernel": np.ones((5, 7), bool), "bias": None},
          "b": {"kernel": np.ones((7, 3), bool), "bias": None}}
  report = jaxprune.connectivity(_mlp, params, full, (5,))
  assert report.connected and report.effective == {"a/kernel": 35, "b/kernel": 21}

  # Hidden unit 6 is read by nothing: the 5 weights into it are dead.
  dead = {"a": {"kernel": np.ones((5, 7), bool), "bias": None},
          "b": {"kernel": np.arange(21).reshape(7, 3) < 18, "bias": None}}
  report = jaxprune.connectivity(_mlp, params, dead, (5,))
  assert report.kept == {"a/kernel": 35, "b/kernel": 18}
  assert report.effective == {"a/kernel": 30, "b/kernel": 18}
  assert report.connected and report.disconnected == ()

  # Layer a keeps only weights into units that b never reads: cut.
  cut = {"a": {"kernel": np.zeros((5, 7), bool), "bias": None},
         "b": {"kernel": np.ones((7, 3), bool), "bias": None}}
  cut["a"]["kernel"][:, 6] = True
  cut["b"]["kernel"][6] = False
  report = jaxprune.connectivity(_mlp, params, cut, (5,))
  assert not report.connected
  assert report.disconnected == ("a/kernel", "b/kernel")


def test_connectivity_survives_extreme_sparsity_in_float32():
  # A 12-layer chain with one weight per layer: a path sum of 1/n^12 would
  # underflow; the unit averages keep it at 1.
  n = 64
  params = {f"l{i:02d}": {"kernel": jnp.ones((n, n))} for i in range(12)}
  masks = {k: {"kernel": np.eye(n, dtype=bool) & (np.arange(n) == 0)[:, None]}
           for k in params}

  def chain(p, x):
    for k in sorted(p):
      x = jax.nn.relu(x @ p[k]["kernel"])
    return x

  report = jaxprune.connectivity(chain, params, masks, (n,))
  assert report.connected
  assert all(v == 1 for v in report.effective.values())


def test_bad_input_is_named():
  params = _mlp_params()
  with pytest.raises(ValueError, match="input_shape"):
    jaxprune.synflow(_mlp, params, 5, sparsity=0.5)
  with pytest.raises(ValueError, match="rounds"):
    jaxprune.synflow(_mlp, params, (5,), sparsity=0.5, rounds=0)
  with pytest.raises(ValueError, match="sparsity"):
    jaxprune.synflow(_mlp, params, (5,), sparsity=-0.1)
  with pytest.raises(ValueError, match="masks"):
    jaxprune.connectivity(_mlp, params, {"a": None}, (5,))


@pytest.mark.parametrize("allocation", ["global", "global_topk"])
def test_synflow_keeps_one_weight_at_the_half_to_even_edge(allocation):
  # 1000 weights at 1 - 0.5 / 1000: round(999.5) = 1000 would prune them all.
  params = {"w": jax.random.normal(jax.random.key(0), (40, 25))}
  apply_fn = lambda p, x: x @ p["w"]
  masks = jaxprune.synflow(apply_fn, params, (40,), sparsity=0.9995,
                           rounds=10, allocation=allocation)
  assert int(masks["w"].sum()) == 1
