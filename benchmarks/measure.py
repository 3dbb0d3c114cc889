"""The measurements of the suite, each returning records (plain dicts).

Every record has ``kind``, ``model``, ``method``, ``description``,
``ratio`` (pruned over plain), ``plain_median_s`` and ``pruned_median_s``
(``None`` where no time is measured); see ``benchmarks.throughput`` for
the fields of each kind. All ratios compare a method with plain
``optax.adam(1e-3)`` on the same model, measured in the same process.

Example:
  >>> from benchmarks import measure
  >>> record, = measure.measure_memory("lenet300100", "magnitude")
  >>> record["kind"], record["prunable_params"]
  ('memory', 266200)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax

import jaxprune
from benchmarks import methods
from benchmarks import models
from benchmarks import timing

# The L0 gates of every benchmark: one per input neuron of a dense kernel,
# one per output filter of a conv kernel.
GATE_GRANULARITY = "unit"


@dataclasses.dataclass(frozen=True)
class Bench:
  """One model with a fixed batch, its initial variables and its plain step.

  The plain step is compiled once per model and shared by every method's
  comparison. ``plain_compile_s`` is the time of its last compilation;
  ``prepare`` can compile it more than once first, though in a check on a
  2-core CPU a model's first compile took no longer than its later ones.
  """

  model: models.BenchModel
  x: jax.Array
  y: jax.Array
  params: Any
  model_state: dict[str, Any]
  plain_step: Callable
  plain_compile_s: float

  @property
  def batch_size(self) -> int:
    return int(self.x.shape[0])


def host_variables(model: models.BenchModel, seed: int = 0) -> dict[str, Any]:
  """Variables of ``model``'s shapes, drawn with numpy, on the device.

  Kernels (``ndim >= 2``) are ``N(0, 1 / fan_in)``; ``scale`` and ``var``
  leaves (norm scales, running variances) are ones; the rest is zeros.
  Step times do not depend on the values, and Flax's own initialisers,
  run eagerly or jitted, took seconds per model to compile on a 2-core CPU.
  """
  example = jax.ShapeDtypeStruct((1, *model.input_shape), np.float32)
  shapes = jax.eval_shape(model.module.init, jax.random.key(0), example)
  rng = np.random.default_rng(seed)

  def draw(path, shape: jax.ShapeDtypeStruct) -> np.ndarray:
    if getattr(path[-1], "key", None) in ("scale", "var"):
      return np.ones(shape.shape, shape.dtype)
    if len(shape.shape) < 2:
      return np.zeros(shape.shape, shape.dtype)
    fan_in = int(np.prod(shape.shape[:-1]))
    return (rng.standard_normal(shape.shape) / np.sqrt(fan_in)).astype(shape.dtype)

  return jax.device_put(dict(jax.tree.map_with_path(draw, shapes)))


def prepare(model_name: str, batch_size: int, seed: int = 0,
            warm_compiles: int = 0) -> Bench:
  """Builds the :class:`Bench` of ``model_name`` with a random batch.

  Args:
    model_name: a name of ``benchmarks.models``.
    batch_size: examples per step.
    seed: seeds the batch and the initial variables.
    warm_compiles: untimed compiles of the plain step before the timed one.
  """
  model = models.get_model(model_name)
  rng = np.random.default_rng(seed)
  x = jax.device_put(
      rng.standard_normal((batch_size, *model.input_shape)).astype(np.float32))
  y = jax.device_put(rng.integers(0, 10, batch_size).astype(np.int32))
  variables = host_variables(model, seed)
  params = variables.pop("params")
  carry = timing.initial_carry(params, methods.plain_adam().init(params),
                               variables)
  for _ in range(warm_compiles + 1):
    plain_step, seconds = timing.compile_step(
        timing.make_train_step(model.module, methods.plain_adam()), carry, x, y
    )
  return Bench(model, x, y, params, variables, plain_step, seconds)


def trained_params(params, gated: bool):
  """The params a method trains: with L0 gates added if it is ``gated``."""
  if not gated:
    return params
  return jaxprune.add_gates(params, jax.random.key(4),
                            granularity=GATE_GRANULARITY)


def initial_carry(bench: Bench, tx: optax.GradientTransformation,
                  gated: bool = False) -> timing.Carry:
  """Fresh copies of the initial variables (gated if asked) and ``tx``'s state."""
  params = trained_params(timing.copy_tree(bench.params), gated)
  return timing.initial_carry(params, tx.init(params),
                              timing.copy_tree(bench.model_state))


def compiled_pruned_step(bench: Bench, tx: optax.GradientTransformation,
                         carry: timing.Carry, gated: bool = False):
  """The pruned step compiled for ``carry``, and its compile seconds."""
  step = timing.make_train_step(bench.model.module, tx, gated)
  return timing.compile_step(step, carry, bench.x, bench.y)


def achieved_sparsity(pruned: methods.Pruned, carry: timing.Carry) -> float:
  """The sparsity of the prunable weights at the end of a pruned run."""
  if pruned.gated:
    masks = jaxprune.hard_masks(carry.params)
  else:
    try:
      masks = jaxprune.masks_of(carry.opt_state)
    except ValueError:  # projections hold no masks: count the zeros
      masks = carry.params
  return float(jaxprune.sparsity(masks).global_sparsity)


def _base_record(kind: str, model: str, batch: int | None, params, method: str,
                 description: str) -> dict:
  return {
      "kind": kind,
      "model": model,
      "method": method,
      "description": description,
      "batch": batch,
      "params": sum(int(np.size(p)) for p in jax.tree.leaves(params)),
      "prunable_params": timing.prunable_count(params),
  }


def _bench_record(kind: str, bench: Bench, method: str, description: str) -> dict:
  return _base_record(kind, bench.model.name, bench.batch_size, bench.params,
                      method, description)


def _quartiles(ratios: np.ndarray) -> list[float]:
  return [float(q) for q in np.percentile(ratios, [25, 75])]


def _race(bench: Bench, pruned_step: Callable, pruned_carry: timing.Carry,
          steps: int, block: int, warmup: int, seed: int):
  """Warms up the plain and pruned runs, then alternates them ``steps`` steps."""
  plain_carry = initial_carry(bench, methods.plain_adam())
  timing.warm_up(bench.plain_step, plain_carry, bench.x, bench.y, warmup)
  timing.warm_up(pruned_step, pruned_carry, bench.x, bench.y, warmup)
  return timing.alternate(
      {"plain": (bench.plain_step, plain_carry),
       "pruned": (pruned_step, pruned_carry)},
      bench.x, bench.y, steps, block, seed,
  )


def compile_times(bench: Bench, tx: optax.GradientTransformation,
                  carry: timing.Carry, gated: bool, repeats: int):
  """Compiles the plain step and the pruned one ``repeats`` times each,
  alternately, each from a fresh closure (nothing cached).

  Returns:
    The last compiled pruned step, and the plain and pruned compile seconds.
  """
  plain_carry = initial_carry(bench, methods.plain_adam())
  plain_s, pruned_s = [], []
  for _ in range(repeats):
    _, seconds = timing.compile_step(
        timing.make_train_step(bench.model.module, methods.plain_adam()),
        plain_carry, bench.x, bench.y)
    plain_s.append(seconds)
    pruned_step, seconds = compiled_pruned_step(bench, tx, carry, gated)
    pruned_s.append(seconds)
  return pruned_step, plain_s, pruned_s


def measure_step(bench: Bench, method: str, steps: int, block: int = 25,
                 warmup: int = 20, seed: int = 0,
                 compile_repeats: int = 3) -> list[dict]:
  """Step and compile time of ``method`` over plain adam's.

  Returns:
    A ``"step"`` record (the ratio over steps that update no mask); for a
    method that updates masks, an ``"amortised"`` record (the whole run's
    time over the plain run's, mask updates included); and a ``"compile"``
    record (the median of ``compile_repeats`` compiles of the pruned step
    over the median of as many of the plain one, alternated).
  """
  pruned = methods.make(method, steps)
  pruned_carry = initial_carry(bench, pruned.tx, pruned.gated)
  pruned_step, plain_compiles, pruned_compiles = compile_times(
      bench, pruned.tx, pruned_carry, pruned.gated, compile_repeats)
  carries, times = _race(bench, pruned_step, pruned_carry, steps, block,
                         warmup, seed)
  plain, pruned_times = times["plain"], times["pruned"]
  is_update = np.isin(np.arange(steps), sorted(pruned.update_steps))
  ratios = timing.block_ratios(plain, pruned_times, block, pruned.update_steps)
  base = _bench_record("step", bench, method, pruned.description)
  common = {
      **base,
      "steps": steps,
      "block": block,
      "mask_updates": int(is_update.sum()),
      "mask_update_median_s": (float(np.median(pruned_times[is_update]))
                               if is_update.any() else None),
      "final_sparsity": achieved_sparsity(pruned, carries["pruned"]),
      "plain_median_s": float(np.median(plain)),
  }
  records = [{
      **common,
      "ratio": float(np.median(ratios)),
      "ratio_quartiles": _quartiles(ratios),
      "pruned_median_s": float(np.median(pruned_times[~is_update])),
  }]
  if is_update.any():
    records.append({
        **common,
        "kind": "amortised",
        "ratio": float(pruned_times.sum() / plain.sum()),
        "pruned_median_s": float(np.median(pruned_times)),
        "plain_total_s": float(plain.sum()),
        "pruned_total_s": float(pruned_times.sum()),
    })
  records.append({
      **base,
      "kind": "compile",
      "ratio": float(np.median(pruned_compiles) / np.median(plain_compiles)),
      "plain_median_s": float(np.median(plain_compiles)),
      "pruned_median_s": float(np.median(pruned_compiles)),
      "compiles": len(pruned_compiles),
  })
  return records


def every_step_schedule(levels: int) -> jaxprune.schedules.Schedule:
  """Sparsity rising from 0.5 to 0.9 at each of the steps ``0 .. levels - 1``."""
  return jaxprune.schedules.piecewise(
      range(levels), np.linspace(0.5, 0.9, levels).tolist()
  )


def measure_mask_update(bench: Bench, steps: int = 10, block: int = 5,
                        warmup: int = 2, seed: int = 0) -> list[dict]:
  """A step that re-ranks all weights globally, over a dense step.

  ``prune(adam, magnitude)`` on a schedule that raises the sparsity at
  every step, so that each of its steps updates the global mask, races
  plain adam as in :func:`measure_step`.

  Returns:
    One ``"mask_update"`` record.
  """
  tx = jaxprune.prune(methods.plain_adam(), criterion=jaxprune.criteria.magnitude,
                      schedule=every_step_schedule(max(steps, warmup) + 1))
  carry = initial_carry(bench, tx)
  pruned_step, _ = compiled_pruned_step(bench, tx, carry)
  _, times = _race(bench, pruned_step, carry, steps, block, warmup, seed)
  ratios = timing.block_ratios(times["plain"], times["pruned"], block)
  return [{
      **_bench_record("mask_update", bench, "magnitude",
                     "prune(adam, magnitude |w|): global mask update at "
                     "every step"),
      "steps": steps,
      "block": block,
      "ratio": float(np.median(ratios)),
      "ratio_quartiles": _quartiles(ratios),
      "plain_median_s": float(np.median(times["plain"])),
      "pruned_median_s": float(np.median(times["pruned"])),
  }]


def measure_memory(model_name: str, method: str) -> list[dict]:
  """Bytes of training state that ``method`` adds to plain adam.

  The training state is the params and the optimizer state: L0 gates add
  params (their ``log_alpha``), which adam then gives moments, so they
  count as added state. Nothing is timed, and the batch plays no part.

  Returns:
    One ``"memory"`` record; its ``ratio`` is the added bytes over the
    plain params' bytes.
  """
  params = host_variables(models.get_model(model_name))["params"]
  pruned = methods.make(method, steps=1000)
  pruned_params = trained_params(params, pruned.gated)
  params_bytes = timing.tree_bytes(params)
  plain_bytes = params_bytes + timing.tree_bytes(methods.plain_adam().init(params))
  pruned_bytes = (timing.tree_bytes(pruned_params)
                  + timing.tree_bytes(pruned.tx.init(pruned_params)))
  added = pruned_bytes - plain_bytes
  record = _base_record("memory", model_name, None, params, method,
                        pruned.description)
  return [{
      **record,
      "ratio": added / params_bytes,
      "plain_median_s": None,
      "pruned_median_s": None,
      "params_bytes": params_bytes,
      "plain_state_bytes": plain_bytes,
      "pruned_state_bytes": pruned_bytes,
      "added_bytes": added,
      "added_bytes_per_prunable_param": added / record["prunable_params"],
      "added_bytes_per_param": added / record["params"],
  }]
