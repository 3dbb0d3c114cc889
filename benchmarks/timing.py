"""How the benchmarks time train steps: one method for every measurement.

A train step is jitted with its state donated (params, optimizer state and
the model's mutable collections, e.g. ``batch_stats``), warmed up on
throw-away copies of the state so that the timed run starts at step 0, then
run one step at a time, each timed to ``block_until_ready``. Two runs (plain
and pruned) advance in alternating blocks of a few steps, in a random order
per block, so that a slow phase of a shared machine hits both alike; the
ratio of the two is the median over blocks of the per-block medians' ratio.
Compilation is timed on its own (:func:`compile_step`), never inside step
times.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from collections.abc import Collection
from collections.abc import Mapping
from typing import Any
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxprune

# L0 gates are sampled from fold_in(key(GATE_SEED), step): a fresh key per
# step, traced, so that XLA cannot fold the sampling into a constant.
GATE_SEED = 3


class Carry(NamedTuple):
  """What a train step updates, all donated to it.

  Attributes:
    params: the trained params.
    opt_state: the optimizer's state.
    model_state: the model's other collections, e.g. ``batch_stats``.
    step: int32, the number of steps taken.
  """

  params: Any
  opt_state: Any
  model_state: Mapping[str, Any]
  step: jax.Array


def initial_carry(params, opt_state, model_state) -> Carry:
  """The carry of step 0."""
  return Carry(params, opt_state, model_state, jnp.zeros((), jnp.int32))


def make_train_step(module: nn.Module, tx: optax.GradientTransformation,
                    gated: bool = False) -> Callable:
  """The un-jitted step ``(carry, x, y) -> (carry, loss)``.

  Args:
    module: a Flax module called as ``module.apply(variables, x, train=True)``.
    tx: the optimizer.
    gated: the params carry L0 gates; the forward pass applies them,
      sampled with a fresh key every step.

  Returns:
    The step. Mutable collections (batch norm statistics) are updated as in
    training.
  """

  def loss_and_model_state(params, model_state, step, x, y):
    if gated:
      key = jax.random.fold_in(jax.random.key(GATE_SEED), step)
      params = jaxprune.apply_gates(params, key)
    variables = {"params": params, **model_state}
    if model_state:
      logits, model_state = module.apply(variables, x, train=True,
                                         mutable=list(model_state))
    else:
      logits = module.apply(variables, x, train=True)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, model_state

  def step(carry: Carry, x, y):
    (loss, model_state), grads = jax.value_and_grad(
        loss_and_model_state, has_aux=True
    )(carry.params, carry.model_state, carry.step, x, y)
    updates, opt_state = tx.update(grads, carry.opt_state, carry.params)
    params = optax.apply_updates(carry.params, updates)
    return Carry(params, opt_state, model_state, carry.step + 1), loss

  return step


def jit_step(step: Callable) -> Callable:
  """``step`` jitted with its carry donated."""
  return jax.jit(step, donate_argnums=0)


def copy_tree(tree):
  """Fresh buffers for every leaf (a donated tree is consumed)."""
  return jax.tree.map(jnp.copy, tree)


def timed_steps(step, carry: Carry, x, y, count: int) -> tuple[Carry, list[float]]:
  """Runs ``count`` steps; returns the final carry and each step's seconds."""
  times = []
  for _ in range(count):
    start = time.perf_counter()
    carry, loss = step(carry, x, y)
    jax.block_until_ready((carry, loss))
    times.append(time.perf_counter() - start)
  return carry, times


def warm_up(step, carry: Carry, x, y, count: int) -> None:
  """Compiles and runs ``step`` on a copy of ``carry``, which stays untouched."""
  timed_steps(step, copy_tree(carry), x, y, count)


def alternate(
    runs: Mapping[str, tuple[Callable, Carry]], x, y, steps: int, block: int,
    seed: int = 0,
) -> tuple[dict[str, Carry], dict[str, np.ndarray]]:
  """Advances every run ``steps`` steps, in blocks of ``block``, in random order.

  Args:
    runs: name -> (jitted step, initial carry), already warmed up.
    x: the fixed input batch.
    y: its labels.
    steps: steps per run.
    block: steps per run per round.
    seed: seeds the order of the runs in each round.

  Returns:
    The final carry of each run, and each run's step times in step order.
  """
  rng = np.random.default_rng(seed)
  carries = {name: carry for name, (_, carry) in runs.items()}
  times = {name: [] for name in runs}
  for start in range(0, steps, block):
    count = min(block, steps - start)
    for name in rng.permutation(sorted(runs)):
      carries[name], block_times = timed_steps(runs[name][0], carries[name], x,
                                               y, count)
      times[name] += block_times
  return carries, {name: np.asarray(t) for name, t in times.items()}


def block_ratios(plain: np.ndarray, pruned: np.ndarray, block: int,
                 skipped: Collection[int] = ()) -> np.ndarray:
  """Per block, the median pruned step over the median plain step.

  Args:
    plain: the plain run's step times.
    pruned: the pruned run's, same length.
    block: the block length used by :func:`alternate`.
    skipped: steps left out of the pruned medians (mask updates); a block
      with no pruned step left gives no ratio.
  """
  ratios = []
  for start in range(0, len(plain), block):
    kept = [t for i, t in enumerate(pruned[start:start + block], start)
            if i not in skipped]
    if kept:
      ratios.append(np.median(kept) / np.median(plain[start:start + block]))
  return np.asarray(ratios)


def compile_step(step: Callable, carry: Carry, x, y) -> tuple[Callable, float]:
  """``step`` jitted (carry donated) and compiled for these arguments.

  Tracing, lowering and compiling are timed together, on their own: the
  executable returned is what the timed steps then run, so no step time
  holds any compilation. Pass a fresh ``step`` (a new closure from
  :func:`make_train_step`) for a compile that nothing is cached for.

  Returns:
    The compiled step and the seconds its compilation took.
  """
  start = time.perf_counter()
  compiled = jit_step(step).lower(carry, x, y).compile()
  return compiled, time.perf_counter() - start


def leaf_bytes(leaf) -> int:
  """Bytes of one array; a typed PRNG key counts its key data."""
  if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
    leaf = jax.random.key_data(leaf)
  return int(leaf.nbytes)


def tree_bytes(tree) -> int:
  """Bytes of every array in ``tree``."""
  return sum(leaf_bytes(leaf) for leaf in jax.tree.leaves(tree))


def prunable_count(params) -> int:
  """Weights of jaxprune's default prunable leaves: floating, ``ndim >= 2``."""
  return sum(
      int(np.size(leaf)) for leaf in jax.tree.leaves(params)
      if jnp.issubdtype(leaf.dtype, jnp.floating) and np.ndim(leaf) >= 2
  )
