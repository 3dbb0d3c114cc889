"""Cost of a step that updates a global mask, over a dense step, on an MLP.

Run from the repository root:

    python -m benchmarks.mask_update --width 1155 --width 2944

A 4-layer MLP (``width -> width`` three times, then ``width -> 10``; width
1155 is 4.0M parameters, 2944 is 26.0M, 5773 is 100M) trains on a fixed batch of 32 with
plain adam and with ``prune(adam, magnitude)`` on a schedule that raises the
global sparsity at every step, so every pruned step ranks all weights.
Both use the jitted train step of ``benchmarks.throughput`` (donated state),
warmed up by one step; the medians of the timed steps
(``block_until_ready``) and their ratio are printed.
"""

from __future__ import annotations

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxprune
from benchmarks import throughput


class _MLP(nn.Module):
  width: int

  @nn.compact
  def __call__(self, x):
    for _ in range(3):
      x = nn.relu(nn.Dense(self.width)(x))
    return nn.Dense(10)(x)


def _median_step_time(model, x, y, params, tx, steps: int) -> float:
  step = throughput._train_step(model, tx)
  params = jax.tree.map(jnp.copy, params)
  opt_state = tx.init(params)
  params, opt_state, _ = throughput._timed_steps(step, params, opt_state, x, y, 1)
  _, _, times = throughput._timed_steps(step, params, opt_state, x, y, steps)
  return float(np.median(times))


def measure(width: int, steps: int, batch: int = 32) -> dict:
  model = _MLP(width)
  x = jax.random.normal(jax.random.key(0), (batch, width))
  y = jnp.zeros((batch,), jnp.int32)
  params = model.init(jax.random.key(1), x)["params"]
  levels = steps + 2
  schedule = jaxprune.schedules.piecewise(
      range(levels), np.linspace(0.5, 0.9, levels).tolist()
  )
  pruned = jaxprune.prune(optax.adam(1e-3), criterion=jaxprune.criteria.magnitude,
                          schedule=schedule)
  dense = _median_step_time(model, x, y, params, optax.adam(1e-3), steps)
  update = _median_step_time(model, x, y, params, pruned, steps)
  return {"params": sum(p.size for p in jax.tree.leaves(params)), "batch": batch,
          "dense_median_s": dense, "mask_update_median_s": update,
          "ratio": update / dense}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--width", type=int, action="append",
                      help="hidden width; repeatable (default 1155, i.e. 4.0M params)")
  parser.add_argument("--steps", type=int, default=10)
  args = parser.parse_args()
  print(f"jax {jax.__version__}, devices {jax.devices()}")
  for width in args.width or [1155]:
    r = measure(width, args.steps)
    print(f"{r['params'] / 1e6:.1f}M params, batch {r['batch']}: dense step "
          f"{r['dense_median_s'] * 1e3:.1f} ms, mask-update step "
          f"{r['mask_update_median_s'] * 1e3:.1f} ms, ratio {r['ratio']:.2f}")


if __name__ == "__main__":
  main()
