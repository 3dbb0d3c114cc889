"""Why a non-update pruned step can cost more than a plain one on CPU.

Races three compiled train steps of one model in one process and reports,
for each, the median step time, its ratio to plain adam, the minor page
faults per step (``getrusage``) and the compiled program's temporary
arena: plain ``optax.adam``; ``prune(adam, magnitude)`` on a gradual
schedule, measured on steps that update no mask; and ``prune(adam,
masks=...)`` with fixed masks, the same masked step without the mask
refresh in the program.  The refresh's scratch arrays enlarge the arena,
and XLA:CPU maps a large arena afresh at every execution, so the pages a
step touches fault again each time.

Usage (from the repository root)::

  python -m benchmarks.page_faults --model mlp4m --rounds 8
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

import jaxprune
from benchmarks import measure
from benchmarks import methods


def _minor_faults() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def race(model: str, rounds: int = 8, block: int = 10, batch: int = 32
         ) -> list[dict]:
  """One record per step kind: ``kind``, ``median_ms``, ``ratio``,
  ``faults_per_step``, ``temp_bytes``."""
  bench = measure.prepare(model, batch)
  scheduled = jaxprune.prune(
      methods.plain_adam(), criterion=jaxprune.criteria.magnitude,
      schedule=jaxprune.schedules.polynomial(0.9, 0, 900, 100,
                                             initial_sparsity=0.5))
  masks = jax.tree.map(lambda p: jnp.ones(p.shape, bool) if p.ndim >= 2 else None,
                       bench.params)
  fixed = jaxprune.prune(methods.plain_adam(), masks=masks)
  runs = {"plain": [bench.plain_step,
                    measure.initial_carry(bench, methods.plain_adam())]}
  for kind, tx in (("scheduled, no update", scheduled), ("fixed masks", fixed)):
    carry = measure.initial_carry(bench, tx)
    step, _ = measure.compiled_pruned_step(bench, tx, carry)
    carry, _ = step(carry, bench.x, bench.y)  # step 0 updates the masks
    runs[kind] = [step, carry]
  times = {kind: [] for kind in runs}
  faults = dict.fromkeys(runs, 0)
  for _ in range(rounds):  # alternating blocks: the same machine state
    for kind, run in runs.items():
      step, carry = run
      carry, _ = step(carry, bench.x, bench.y)
      jax.block_until_ready(carry)
      before = _minor_faults()
      for _ in range(block):
        start = time.perf_counter()
        carry, _ = step(carry, bench.x, bench.y)
        jax.block_until_ready(carry)
        times[kind].append(time.perf_counter() - start)
      faults[kind] += _minor_faults() - before
      run[1] = carry
  plain = float(np.median(times["plain"]))
  records = []
  for kind, (step, _) in runs.items():
    median = float(np.median(times[kind]))
    records.append({
        "model": model, "kind": kind, "median_ms": 1e3 * median,
        "ratio": median / plain,
        "faults_per_step": faults[kind] / (rounds * block),
        "temp_bytes": int(step.memory_analysis().temp_size_in_bytes),
    })
  return records


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.page_faults")
  parser.add_argument("--model", default="mlp4m")
  parser.add_argument("--rounds", type=int, default=8)
  args = parser.parse_args(argv)
  print(f"jax {jax.__version__}, {jax.devices()[0].platform}")
  print("| step | median ms | ratio | minor faults / step | temp arena MB |")
  print("| --- | --- | --- | --- | --- |")
  for r in race(args.model, args.rounds):
    print(f"| {r['kind']} | {r['median_ms']:.2f} | {r['ratio']:.3f} | "
          f"{r['faults_per_step']:.0f} | {r['temp_bytes'] / 1e6:.1f} |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
