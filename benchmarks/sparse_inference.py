"""Inference of pruned MLPs: dense masked kernels, BCOO kernels, shrunk layers.

Run from the repository root:

    python -m benchmarks.sparse_inference --out benchmarks/results/sparse_inference_cpu.json
    python -m benchmarks.sparse_inference --quick --out /tmp/bench/sparse.json

For LeNet-300-100 (784-300-100-10) and a 4M-parameter MLP
(784-2048-1024-256-10), at batch 1 and 128, the jitted forward pass of

- ``dense``: the masked params as dense arrays (the cost of a dense matmul
  does not depend on how many of its weights are 0);
- ``bcoo``: every kernel a BCOO matrix of its kept weights
  (:func:`jaxprune.export.to_bcoo` and :func:`jaxprune.export.sparse_apply`),
  magnitude masks of random weights at 50%, 90% and 99% sparsity in every
  layer (``prune_once(..., allocation="layerwise")``);
- ``shrunk``: a dense model without the removed hidden neurons
  (:func:`jaxprune.shrink`), 50% and 90% of each hidden layer's neurons
  removed, those with the smallest kernel columns.

Times follow ``benchmarks.timing``: every variant is jitted and warmed up,
then all of them run in alternating blocks of calls in a random order per
block, each call timed to ``block_until_ready``; ``ratio`` is the median over
blocks of (variant's block median) / (dense block median): below 1 is
faster than dense.  Every variant's outputs are checked against the dense
masked model's (the node-masked one for ``shrunk``) before timing.

The run also records the bytes of each storage format of
:func:`jaxprune.export.compress` for the same masks (and a 2:4 magnitude
mask for ``n_of_m``), and of the ``.npz`` file :func:`jaxprune.export.save`
writes.

Output (``--out FILE.json``): ``{"environment", "suite", "records",
"storage"}`` and a markdown table beside it (``FILE.md``).  A timing
record has ``model``, ``batch``, ``variant``, ``kind`` (``dense``,
``bcoo``, ``shrunk``), ``sparsity``, ``params`` (weights it computes
with), ``median_s``, ``ratio``, ``ratio_quartiles``, ``calls``, ``block``
and ``max_abs_diff``; a storage record ``model``, ``format``,
``sparsity``, ``nbytes``, ``file_bytes``, ``dense_float32_bytes`` and
``ratio``.
"""

from __future__ import annotations

import argparse
import io
import json
import pathlib
import sys
import time
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import jaxprune
from benchmarks import throughput
from benchmarks import timing
from jaxprune import export


class Stack(nn.Module):
  """``Dense`` layers with ReLU between them, on flat inputs.

  Attributes:
    features: each layer's outputs, the last one's the logits.
  """

  features: tuple[int, ...]

  @nn.compact
  def __call__(self, x):
    for i, width in enumerate(self.features):
      x = nn.Dense(width)(x)
      if i < len(self.features) - 1:
        x = nn.relu(x)
    return x


class Model(NamedTuple):
  """A benchmarked MLP: its input size and its layers' widths."""

  inputs: int
  features: tuple[int, ...]


MODELS = {
    "lenet300100": Model(784, (300, 100, 10)),
    "mlp4m": Model(784, (2048, 1024, 256, 10)),
}
SPARSITIES = (0.5, 0.9, 0.99)
NODE_SPARSITIES = (0.5, 0.9)
BATCHES = (1, 128)


class Plan(NamedTuple):
  """How long each (model, batch) is timed.

  Attributes:
    budget_s: the timed seconds aimed at, over all variants together.
    min_calls: the fewest calls per variant.
    max_calls: the most calls per variant.
    block: calls per variant per alternation block.
    warmup: untimed calls per variant first (the first compiles).
  """

  budget_s: float = 12.0
  min_calls: int = 20
  max_calls: int = 400
  block: int = 10
  warmup: int = 3


FULL = Plan()
QUICK = Plan(budget_s=2.0, min_calls=6, max_calls=60, block=3, warmup=2)


def _layers(model: Model) -> list[str]:
  return [f"Dense_{i}" for i in range(len(model.features))]


def random_params(model: Model, seed: int = 0) -> dict:
  """Kernels ``N(0, 1 / fan_in)`` and zero biases, drawn with numpy."""
  rng = np.random.default_rng(seed)
  params, fan_in = {}, model.inputs
  for name, width in zip(_layers(model), model.features):
    kernel = rng.standard_normal((fan_in, width)) / np.sqrt(fan_in)
    params[name] = {"kernel": jnp.asarray(kernel, jnp.float32),
                    "bias": jnp.zeros(width, jnp.float32)}
    fan_in = width
  return params


def node_masks(params: dict, model: Model, sparsity: float) -> dict:
  """Each hidden layer keeps ``n - round(sparsity * n)`` of its ``n``
  neurons, those with the largest kernel column norms."""
  masks = {}
  for name in _layers(model)[:-1]:
    norms = np.linalg.norm(np.asarray(params[name]["kernel"]), axis=0)
    keep = np.zeros(norms.size, bool)
    keep[np.argsort(-norms, kind="stable")[:norms.size - round(sparsity * norms.size)]] = True
    masks[name] = jnp.asarray(keep)
  return masks


def two_of_four_masks(params: dict) -> dict:
  """2:4 magnitude masks: in every group of 4 consecutive inputs of a
  kernel column, the 2 largest weights kept."""
  return jaxprune.prune_once(params, sparsity=0.5,
                             structure=jaxprune.structures.n_of_m(2, 4))


class Variant(NamedTuple):
  """One forward pass to time."""

  name: str
  kind: str
  sparsity: float
  fn: Callable[[Any, jax.Array], jax.Array]
  params: Any
  reference: jax.Array
  weights: int


def _kernel_weights(params: Mapping) -> int:
  return sum(int(layer["kernel"].nse if isinstance(
      layer["kernel"], jax.experimental.sparse.BCOO) else layer["kernel"].size)
             for layer in params.values())


def variants(model: Model, x: jax.Array, sparsities: Sequence[float],
             node_sparsities: Sequence[float], seed: int = 0) -> list[Variant]:
  """The dense, BCOO and shrunk forward passes of ``model`` on ``x``, each
  with the output it must match."""
  module = Stack(model.features)
  params = random_params(model, seed)
  dense_fn = jax.jit(module.apply)
  sparse_fn = jax.jit(export.sparse_apply(module.apply))
  out = []
  for sparsity in sparsities:
    masks = jaxprune.prune_once(params, sparsity=sparsity, allocation="layerwise")
    masked = {"params": jaxprune.apply_masks(params, masks)}
    if not out:  # one dense baseline: its time does not depend on the zeros
      out.append(Variant("dense", "dense", 0.0, dense_fn, masked,
                         dense_fn(masked, x), _kernel_weights(params)))
    sparse_params = export.to_bcoo(params, masks)
    out.append(Variant(f"bcoo {sparsity:.0%}", "bcoo", sparsity, sparse_fn,
                       {"params": sparse_params}, dense_fn(masked, x),
                       _kernel_weights(sparse_params)))
  layers = _layers(model)
  for sparsity in node_sparsities:
    nodes = node_masks(params, model, sparsity)
    small = jaxprune.shrink(params, nodes, layers=layers)
    small_module = Stack(tuple(small.widths[name] for name in layers))
    node_masked = {"params": jaxprune.mask_nodes(params, nodes, layers=layers)}
    out.append(Variant(f"shrunk {sparsity:.0%}", "shrunk", sparsity,
                       jax.jit(small_module.apply), {"params": small.params},
                       dense_fn(node_masked, x), _kernel_weights(small.params)))
  return out


def _step(fn: Callable) -> Callable:
  """``fn`` as the ``(carry, x, y) -> (carry, output)`` step that
  ``benchmarks.timing`` runs; the params are the carry, passed on as they
  are (outside the jitted call, so they are never copied)."""
  return lambda params, x, y: (params, fn(params, x))


def race(model_name: str, batch: int, plan: Plan = FULL,
         sparsities: Sequence[float] = SPARSITIES,
         node_sparsities: Sequence[float] = NODE_SPARSITIES,
         models: Mapping[str, Model] = MODELS, seed: int = 0) -> list[dict]:
  """Times every variant of one model at one batch size; one record each."""
  model = models[model_name]
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal((batch, model.inputs)), jnp.float32)
  runs, checks, warm_s = {}, {}, 0.0
  found = variants(model, x, sparsities, node_sparsities, seed)
  for variant in found:
    output = variant.fn(variant.params, x)
    checks[variant.name] = float(jnp.max(jnp.abs(output - variant.reference)))
    if not np.allclose(output, variant.reference, rtol=1e-4, atol=1e-4):
      raise AssertionError(
          f"{model_name} {variant.name}: outputs differ from the masked model's "
          f"by {checks[variant.name]}")
    step = _step(variant.fn)
    timing.warm_up(step, variant.params, x, None, plan.warmup)
    _, times = timing.timed_steps(step, variant.params, x, None, 3)
    warm_s += float(np.median(times))
    runs[variant.name] = (step, variant.params)
  calls = int(np.clip(plan.budget_s / max(warm_s, 1e-9), plan.min_calls,
                      plan.max_calls))
  calls = -(-calls // plan.block) * plan.block  # whole blocks
  _, times = timing.alternate(runs, x, None, calls, plan.block, seed)
  records = []
  for variant in found:
    ratios = timing.block_ratios(times["dense"], times[variant.name], plan.block)
    records.append({
        "model": model_name,
        "layers": "-".join(str(n) for n in (model.inputs, *model.features)),
        "batch": batch,
        "variant": variant.name,
        "kind": variant.kind,
        "sparsity": variant.sparsity,
        "params": variant.weights,
        "median_s": float(np.median(times[variant.name])),
        "ratio": float(np.median(ratios)),
        "ratio_quartiles": [float(q) for q in np.percentile(ratios, [25, 75])],
        "calls": calls,
        "block": plan.block,
        "max_abs_diff": checks[variant.name],
    })
  return records


def storage(model_name: str, sparsities: Sequence[float] = SPARSITIES,
            models: Mapping[str, Model] = MODELS, seed: int = 0) -> list[dict]:
  """The bytes of every export format for the masks of :func:`variants`."""
  params = random_params(models[model_name], seed)
  cases = [(format, sparsity, jaxprune.prune_once(
      params, sparsity=sparsity, allocation="layerwise"))
           for sparsity in sparsities for format in ("bitmask", "csr")]
  cases.append(("n_of_m", 0.5, two_of_four_masks(params)))
  records = []
  for format, sparsity, masks in cases:
    n, m = (2, 4) if format == "n_of_m" else (None, None)
    compressed = export.compress(params, masks, format, n=n, m=m)
    report = export.size_report(compressed)
    file = io.BytesIO()
    export.save(file, compressed)
    records.append({
        "model": model_name, "format": format if n is None else "n_of_m 2:4",
        "sparsity": sparsity, "nbytes": report.nbytes,
        "file_bytes": len(file.getvalue()),
        "dense_float32_bytes": report.dense_float32_bytes,
        "ratio": report.ratio})
  return records


def markdown(environment: dict, records: Sequence[dict],
             storage_records: Sequence[dict]) -> str:
  """The timing table and the storage table."""
  lines = [
      "# Sparse inference on "
      f"{environment['backend'].upper()} ({environment['processor']}, "
      f"{environment['cpu_count']} cores, JAX {environment['jax']})",
      "",
      "Forward pass, jitted; ratio = variant / dense masked model, median over "
      "alternating blocks (below 1 is faster).",
      "",
      "| model | batch | variant | weights | median ms | ratio | quartiles | calls |",
      "| --- | ---: | --- | ---: | ---: | ---: | --- | ---: |",
  ]
  for r in records:
    low, high = r["ratio_quartiles"]
    lines.append(
        f"| {r['model']} ({r['layers']}) | {r['batch']} | {r['variant']} | "
        f"{r['params']:,} | {r['median_s'] * 1e3:.3f} | {r['ratio']:.2f} | "
        f"{low:.2f}-{high:.2f} | {r['calls']} |")
  lines += [
      "", "Storage of the same params with `jaxprune.export.compress` (bytes of "
      "the arrays; `.npz` file with headers and the tree's JSON):", "",
      "| model | format | sparsity | bytes | file bytes | float32 bytes | ratio |",
      "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
  ]
  for r in storage_records:
    lines.append(
        f"| {r['model']} | {r['format']} | {r['sparsity']:.0%} | {r['nbytes']:,} "
        f"| {r['file_bytes']:,} | {r['dense_float32_bytes']:,} | {r['ratio']:.3f} |")
  return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--quick", action="store_true",
                      help="LeNet-300-100 only, few calls (under a minute)")
  parser.add_argument("--out", help="write the JSON here, the markdown beside it")
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  plan = QUICK if args.quick else FULL
  names = ["lenet300100"] if args.quick else list(MODELS)
  start, environment = time.perf_counter(), throughput.environment()
  records, storage_records = [], []
  for name in names:
    storage_records += storage(name)
    for batch in BATCHES:
      for record in race(name, batch, plan):
        records.append(record)
        print(f"{name:<12} batch {batch:>3}  {record['variant']:<10} "
              f"{record['median_s'] * 1e3:9.3f} ms  ratio {record['ratio']:.2f}",
              flush=True)
  text = markdown(environment, records, storage_records)
  print(text)
  if args.out:
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    suite = {"mode": "quick" if args.quick else "full", "argv": sys.argv,
             "wall_s": time.perf_counter() - start, "plan": plan._asdict()}
    out.write_text(json.dumps({"environment": environment, "suite": suite,
                               "records": records, "storage": storage_records},
                              indent=1) + "\n")
    out.with_suffix(".md").write_text(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
