"""Step time of a pruned optimizer over the plain optax optimizer it wraps.

Run from the repository root:

    python -m benchmarks.throughput --steps 600

Both train steps are jitted with donated state, warmed up, then timed one
step at a time with ``block_until_ready``, alternating between the two in
blocks so that drift in the machine's speed hits both alike.  The figures
are ratios measured in one process: the median pruned step on steps that do
not update the mask over the median plain step, and the mean over the whole
schedule (mask updates amortised) over the mean plain step.
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


def _train_step(model, tx):
  def step(params, opt_state, x, y):
    def loss_fn(p):
      logits = model.apply({"params": p}, x)
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


def measure(steps: int, batch: int, block: int = 50, warmup: int = 20) -> dict:
  """Times plain adam against prune(adam, magnitude, polynomial) on LeNet-300-100."""
  model = models.LeNet300100()
  x = jax.random.normal(jax.random.key(0), (batch, 28, 28, 1))
  y = jax.random.randint(jax.random.key(1), (batch,), 0, 10)
  init = model.init(jax.random.key(2), x)["params"]
  schedule = jaxprune.schedules.polynomial(
      final_sparsity=0.9, begin_step=0, end_step=steps - 1, frequency=100
  )
  plain_tx = optax.adam(1e-3)
  pruned_tx = jaxprune.prune(
      optax.adam(1e-3), criterion=jaxprune.criteria.magnitude, schedule=schedule
  )
  runs = {}
  for name, tx in (("plain", plain_tx), ("pruned", pruned_tx)):
    step = _train_step(model, tx)
    params = jax.tree.map(jnp.copy, init)
    opt_state = tx.init(params)
    # Warm up on throw-away copies, so the timed run starts at step 0.
    warm = (jax.tree.map(jnp.copy, params), jax.tree.map(jnp.copy, opt_state))
    _timed_steps(step, *warm, x, y, warmup)
    runs[name] = dict(step=step, params=params, opt_state=opt_state, times=[])
  done = 0
  while done < steps:
    count = min(block, steps - done)
    for name in ("plain", "pruned"):
      run = runs[name]
      run["params"], run["opt_state"], times = _timed_steps(
          run["step"], run["params"], run["opt_state"], x, y, count
      )
      run["times"] += times
    done += count
  plain = np.asarray(runs["plain"]["times"])
  pruned = np.asarray(runs["pruned"]["times"])
  update_steps = np.isin(np.arange(steps), schedule.steps)
  final_sparsity = float(
      jaxprune.sparsity(jaxprune.masks_of(runs["pruned"]["opt_state"])).global_sparsity
  )
  return {
      "model": "LeNet-300-100",
      "method": "prune(adam, magnitude, polynomial every 100 steps)",
      "batch": batch,
      "steps": steps,
      "plain_median_s": float(np.median(plain)),
      "pruned_median_s": float(np.median(pruned[~update_steps])),
      "ratio": float(np.median(pruned[~update_steps]) / np.median(plain)),
      "pruned_update_median_s": float(np.median(pruned[update_steps])),
      "amortised_ratio": float(pruned.mean() / plain.mean()),
      "final_sparsity": final_sparsity,
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=600)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--out", help="write the record as JSON to this file")
  args = parser.parse_args()
  print(f"jax {jax.__version__}, devices {jax.devices()}, host {platform.node()}, "
        f"{platform.processor() or platform.machine()}")
  record = measure(args.steps, args.batch)
  print(
      f"{record['model']} batch {record['batch']}, {record['steps']} steps: "
      f"plain adam {record['plain_median_s'] * 1e3:.3f} ms, pruned (no mask "
      f"update) {record['pruned_median_s'] * 1e3:.3f} ms, ratio "
      f"{record['ratio']:.3f}; mask-update step "
      f"{record['pruned_update_median_s'] * 1e3:.3f} ms; amortised ratio "
      f"{record['amortised_ratio']:.3f}; final sparsity "
      f"{record['final_sparsity']:.3f}"
  )
  if args.out:
    with open(args.out, "w") as f:
      json.dump([record], f, indent=2)


if __name__ == "__main__":
  main()
