"""imp: masks nest, counts are exact, each rewinding rule starts each round
from the right weights, Accelerated IMP's lengths, resume by round."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxprune


def _params():
  rng = np.random.default_rng(0)
  return {"hidden": {"kernel": jnp.asarray(rng.normal(size=(10, 8)), jnp.float32),
                     "bias": jnp.zeros(8)},
          "out": {"kernel": jnp.asarray(rng.normal(size=(8, 3)), jnp.float32),
                  "bias": jnp.zeros(3)}}


def _lottery_rate(path, leaf):
  return 0.1 if path[0] == "out" else 0.2


class _Recorder:
  """A stand-in for training: each step adds ``0.01 * (round + 1)`` to every
  weight, so trained weights differ from round to round; records the calls."""

  def __init__(self, fail_at=None):
    self.calls, self.fail_at = [], fail_at

  def __call__(self, params, round):
    if round.index == self.fail_at:
      raise KeyboardInterrupt("killed")
    self.calls.append((params, round))
    def at(step):
      return jaxprune.apply_masks(jax.tree.map(
          lambda p: p + 0.01 * (round.index + 1) * step, params), round.masks)
    saved = at(round.save_step) if round.save_step is not None else None
    return jaxprune.Trained(at(round.steps), {"round": round.index}, saved)


def _kernels(tree):
  return [np.asarray(tree["hidden"]["kernel"]), np.asarray(tree["out"]["kernel"])]


def test_masks_nest_and_each_round_keeps_the_exact_count():
  train = _Recorder()
  result = jaxprune.imp(train, _params(), rounds=4, rate=_lottery_rate, steps=10)
  counts = [[int(k.sum()) for k in _kernels(r.masks)] for r in result.rounds]
  assert counts == [[80 - round((1 - 0.8 ** r) * 80), 24 - round((1 - 0.9 ** r) * 24)]
                    for r in range(5)]
  for before, after in zip(result.rounds, result.rounds[1:]):
    assert all(not np.any(a & ~b) for a, b in zip(_kernels(after.masks), _kernels(before.masks)))
  assert [r.metrics["round"] for r in result.rounds] == [0, 1, 2, 3, 4]
  assert [r.remaining for r in result.rounds] == pytest.approx(
      [1 - r.sparsity for r in result.rounds])
  # Each round pruned the smallest of the previous round's trained weights.
  for r in range(1, 5):
    trained = train.calls[r - 1][1]  # the previous round
    previous = result.rounds[r - 1].masks
    want = jaxprune.prune_once(
        jax.tree.map(lambda p: p, _trained(train, r - 1)), masks=previous,
        sparsity=lambda path, leaf, r=r: 1 - (1 - _lottery_rate(path, leaf)) ** r,
        allocation="layerwise")
    assert trained.index == r - 1
    for a, b in zip(_kernels(result.rounds[r].masks), _kernels(want), strict=True):
      np.testing.assert_array_equal(a, b)


def _trained(train, index):
  params, round = train.calls[index]
  return jaxprune.apply_masks(jax.tree.map(
      lambda p: p + 0.01 * (round.index + 1) * round.steps, params), round.masks)


@pytest.mark.parametrize("rewind", ["init", 3, "lr"])
def test_each_round_starts_from_the_rewound_weights_masked(rewind):
  train = _Recorder()
  initial = _params()
  jaxprune.imp(train, initial, rounds=3, rate=0.3, steps=10, rewind=rewind)
  assert train.calls[0][1].save_step == (3 if rewind == 3 else None)
  for index in range(1, 4):
    params, round = train.calls[index]
    if rewind == "init":
      source, start = initial, 0
    elif rewind == 3:
      first_params, first = train.calls[0]
      source = jax.tree.map(lambda p: p + 0.01 * 3, first_params)
      start = 3
    else:
      source, start = _trained(train, index - 1), 0
    want = jaxprune.apply_masks(source, round.masks)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(want), strict=True):
      np.testing.assert_allclose(a, b, rtol=0, atol=1e-7)
    assert (round.start_step, round.steps) == (start, 10 - start)
    pruned = ~np.asarray(round.masks["hidden"]["kernel"])
    assert np.all(np.asarray(params["hidden"]["kernel"])[pruned] == 0)


def test_accelerated_imp_shortens_every_round_but_the_last():
  train = _Recorder()
  result = jaxprune.imp(train, _params(), rounds=3, rate=0.2, steps=10, short_steps=4)
  assert [round.steps for _, round in train.calls] == [4, 4, 4, 10]
  assert [round.final for _, round in train.calls] == [False, False, False, True]
  assert [r.steps for r in result.rounds] == [4, 4, 4, 10]


def test_a_killed_run_continues_at_its_round(tmp_path):
  whole = jaxprune.imp(_Recorder(), _params(), rounds=3, rate=0.3, steps=10, rewind=2)
  with pytest.raises(KeyboardInterrupt):
    jaxprune.imp(_Recorder(fail_at=2), _params(), rounds=3, rate=0.3, steps=10,
                 rewind=2, workdir=tmp_path)
  resumed_train = _Recorder()
  resumed = jaxprune.imp(resumed_train, _params(), rounds=3, rate=0.3, steps=10,
                         rewind=2, workdir=tmp_path)
  assert [round.index for _, round in resumed_train.calls] == [2, 3]
  for a, b in zip(resumed.rounds, whole.rounds, strict=True):
    assert (a.index, a.sparsity, a.steps, a.metrics) == (b.index, b.sparsity, b.steps, b.metrics)
    for x, y in zip(_kernels(a.masks), _kernels(b.masks), strict=True):
      np.testing.assert_array_equal(x, y)
  for x, y in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(whole.params), strict=True):
    np.testing.assert_array_equal(x, y)
  with pytest.raises(ValueError, match="other arguments .*rate: 0.3 -> 0.5"):
    jaxprune.imp(_Recorder(), _params(), rounds=3, rate=0.5, steps=10, rewind=2,
                 workdir=tmp_path)


def test_bad_arguments_and_outcomes_are_named():
  with pytest.raises(ValueError, match=r"rewind step 10 must be in \[0, steps=10\)"):
    jaxprune.imp(_Recorder(), _params(), rounds=1, rate=0.2, steps=10, rewind=10)
  with pytest.raises(ValueError, match=r"rate must be in \(0, 1\)"):
    jaxprune.imp(_Recorder(), _params(), rounds=1, rate=1.0, steps=10)
  with pytest.raises(TypeError, match="must return a jaxprune.Trained, got dict"):
    jaxprune.imp(lambda p, r: p, _params(), rounds=1, rate=0.2, steps=10)
  with pytest.raises(ValueError, match="Trained.saved=None"):
    jaxprune.imp(lambda p, r: jaxprune.Trained(p), _params(), rounds=1, rate=0.2,
                 steps=10, rewind=2)


def _loss(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def test_real_training_of_an_nnx_module_keeps_each_rounds_pruned_weights_zero():
  x = jax.random.normal(jax.random.key(0), (64, 10))
  y = jnp.arange(64) % 3

  class Mlp(nnx.Module):
    def __init__(self, rngs):
      self.hidden = nnx.Linear(10, 8, rngs=rngs)
      self.out = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
      return self.out(nnx.relu(self.hidden(x)))

  @nnx.jit
  def step(model, optimizer):
    optimizer.update(model, nnx.grad(lambda m: _loss(m(x), y))(model))

  def train(model, round):
    optimizer = nnx.Optimizer(model, jaxprune.prune(optax.adam(1e-2), masks=round.masks),
                              wrt=nnx.Param)
    for _ in range(round.steps):
      step(model, optimizer)
    return jaxprune.Trained(model, {"loss": float(_loss(model(x), y))})

  model = Mlp(nnx.Rngs(1))
  before = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  result = jaxprune.imp(train, model, rounds=2, rate=0.5, steps=5)
  after = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True):
    np.testing.assert_array_equal(a, b)  # the caller's module is left alone
  final = np.asarray(result.params["hidden"]["kernel"])
  assert np.all(final[~np.asarray(result.masks["hidden"]["kernel"])] == 0)
  assert [int(r.masks["hidden"]["kernel"].sum()) for r in result.rounds] == [80, 40, 20]
