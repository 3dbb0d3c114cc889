"""Step time of a pruned optimizer over the plain optax optimizer it wraps.

Run from the repository root:

    python -m benchmarks.throughput --steps 600

Both train steps are jitted with donated state, warmed up, then timed one
step at a time with ``block_until_ready``, alternating between the two in
short blocks in a random order, so that drift in the machine's speed hits
both alike.  The figures are ratios measured in one process: the median
over blocks of (pruned step without a mask update) / (plain step), and the
total time of the whole schedule (mask updates amortised) over the plain
run's total.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxprune
from experiments import models


def _train_step(model, tx, forward=None):
  """The jitted train step; ``forward`` maps the trained params to the
  model's (L0 gates: sampled with a fixed key, which costs what a fresh key
  does)."""
  def step(params, opt_state, x, y):
    def loss_fn(p):
      logits = model.apply({"params": p if forward is None else forward(p)}, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return jax.jit(step, donate_argnums=(0, 1))


def _timed_steps(step, params, opt_state, x, y, count):
  times = []
  for _ in range(count):
    start = time.perf_counter()
    params, opt_state, loss = step(params, opt_state, x, y)
    jax.block_until_ready((params, opt_state, loss))
    times.append(time.perf_counter() - start)
  return params, opt_state, times


def _l0_forward(params):
  return jaxprune.apply_gates(params, jax.random.key(3))


def _pruned_optimizer(method: str, steps: int):
  """The pruned adam of ``method``, the steps at which it updates masks, its
  description and, for L0 gates, the forward transform of the params."""
  inner = optax.adam(1e-3)
  if method == "magnitude":
    schedule = jaxprune.schedules.polynomial(
        final_sparsity=0.9, begin_step=0, end_step=steps - 1, frequency=100
    )
    tx = jaxprune.prune(inner, criterion=jaxprune.criteria.magnitude,
                        schedule=schedule)
    return (tx, set(schedule.steps),
            "prune(adam, magnitude, polynomial every 100 steps)", None)
  if method == "flipout":
    tx = jaxprune.flipout(inner, prune_every=100, rate=0.5, final_sparsity=0.9)
    return (tx, set(range(100, steps, 100)),
            "flipout(adam, every 100 steps, noise 1)", None)
  if method == "l0":
    tx = optax.chain(
        jaxprune.dual_ascent(jaxprune.density_constraint(0.5), dual_lr=1e-2),
        inner, jaxprune.clip_log_alpha(),
    )
    return (tx, set(), "L0 unit gates + dual_ascent(density 0.5) + adam + clip",
            _l0_forward)
  if method in ("project_l1", "project_l21"):
    project = getattr(jaxprune, method)
    tx = optax.chain(inner, project(100.0 if method == "project_l1" else 20.0))
    return tx, set(), f"chain(adam, {method})", None
  raise ValueError(
      f"unknown method {method!r}; expected magnitude, flipout, l0, project_l1 "
      "or project_l21")


def _final_sparsity(params, opt_state) -> float:
  try:
    masks = jaxprune.masks_of(opt_state)
  except ValueError:  # L0 gates: the test-time masks
    masks = jaxprune.hard_masks(params)
  return float(jaxprune.sparsity(masks).global_sparsity)


def measure(steps: int, batch: int, block: int = 25, warmup: int = 20,
            seed: int = 0, model_name: str = "lenet300100",
            method: str = "magnitude") -> dict:
  """Times plain adam against a pruned adam on one model.

  The two runs advance in rounds of ``block`` steps each, in a random order
  per round; the ratio is the median over rounds of the pruned block's
  median (steps without a mask update) over the plain block's median, so
  that slow phases of a shared machine cancel.
  """
  model = models.get_model(model_name)
  x = jax.random.normal(jax.random.key(0), (batch, 28, 28, 1))
  y = jax.random.randint(jax.random.key(1), (batch,), 0, 10)
  init = model.init(jax.random.key(2), x)["params"]
  plain_tx = optax.adam(1e-3)
  pruned_tx, update_steps, description, forward = _pruned_optimizer(method, steps)
  runs = {}
  for name, tx in (("plain", plain_tx), ("pruned", pruned_tx)):
    step = _train_step(model, tx, None if name == "plain" else forward)
    params = jax.tree.map(jnp.copy, init)
    if name == "pruned" and forward is not None:
      params = jaxprune.add_gates(params, jax.random.key(4), granularity="unit")
    opt_state = tx.init(params)
    # Warm up on throw-away copies, so the timed run starts at step 0.
    warm = (jax.tree.map(jnp.copy, params), jax.tree.map(jnp.copy, opt_state))
    _timed_steps(step, *warm, x, y, warmup)
    runs[name] = dict(step=step, params=params, opt_state=opt_state, times=[])
  rng = np.random.default_rng(seed)
  ratios, done = [], 0
  while done < steps:
    count = min(block, steps - done)
    for name in rng.permutation(["plain", "pruned"]):
      run = runs[name]
      run["params"], run["opt_state"], times = _timed_steps(
          run["step"], run["params"], run["opt_state"], x, y, count
      )
      run["times"] += times
    plain_block = runs["plain"]["times"][done:]
    pruned_block = [
        t for i, t in enumerate(runs["pruned"]["times"][done:], done)
        if i not in update_steps
    ]
    ratios.append(np.median(pruned_block) / np.median(plain_block))
    done += count
  plain = np.asarray(runs["plain"]["times"])
  pruned = np.asarray(runs["pruned"]["times"])
  is_update = np.isin(np.arange(steps), sorted(update_steps))
  final_sparsity = _final_sparsity(runs["pruned"]["params"], runs["pruned"]["opt_state"])
  return {
      "model": model_name,
      "method": description,
      "batch": batch,
      "steps": steps,
      "plain_median_s": float(np.median(plain)),
      "pruned_median_s": float(np.median(pruned[~is_update])),
      "ratio": float(np.median(ratios)),
      "ratio_quartiles": [float(q) for q in np.percentile(ratios, [25, 75])],
      "pruned_update_median_s": (float(np.median(pruned[is_update]))
                                 if is_update.any() else None),
      "amortised_ratio": float(pruned.sum() / plain.sum()),
      "final_sparsity": final_sparsity,
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=1000)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--model", default="lenet300100",
                      help="a model of experiments.models without batch norm")
  parser.add_argument("--method", default="magnitude", help="magnitude, flipout, l0, project_l1 or project_l21")
  parser.add_argument("--out", help="write the record as JSON to this file")
  args = parser.parse_args()
  print(f"jax {jax.__version__}, devices {jax.devices()}, host {platform.node()}, "
        f"{platform.processor() or platform.machine()}")
  record = measure(args.steps, args.batch, model_name=args.model,
                   method=args.method)
  print(
      f"{record['model']} batch {record['batch']}, {record['steps']} steps, "
      f"{record['method']}: plain adam {record['plain_median_s'] * 1e3:.3f} ms, "
      f"pruned (no mask update) {record['pruned_median_s'] * 1e3:.3f} ms, ratio "
      f"{record['ratio']:.3f} (quartiles {record['ratio_quartiles'][0]:.3f}-"
      f"{record['ratio_quartiles'][1]:.3f}); mask-update step "
      f"{(record['pruned_update_median_s'] or 0) * 1e3:.3f} ms; amortised ratio "
      f"{record['amortised_ratio']:.3f}; final sparsity "
      f"{record['final_sparsity']:.3f}"
  )
  if args.out:
    with open(args.out, "w") as f:
      json.dump([record], f, indent=2)


if __name__ == "__main__":
  main()
