"""The benchmark suite: what pruning costs over plain ``optax.adam(1e-3)``.

Run from the repository root:

    python -m benchmarks.throughput --quick --out /tmp/bench/quick.json
    python -m benchmarks.throughput --out /tmp/bench/full.json   # ~30 min
    python -m benchmarks.throughput --only lenet5:flipout --steps 300
    python -m benchmarks.throughput --list           # the jobs, not run

``--quick`` runs a small plan in under two minutes on a 2-core CPU; the
default full plan covers every model and method. ``--only MODEL[:METHOD]``
(repeatable) keeps the matching jobs of the chosen plan, ``--kind`` keeps
the jobs of some kinds, ``--steps`` overrides the steps of the step jobs.
No code here depends on the backend: the same command runs on CPU, GPU
or TPU, on ``jax.devices()[0]``.

What is measured, always as pruned over plain adam on the same model in
the same process (methods in ``benchmarks.methods``, models in
``benchmarks.models``):

- ``step``: the median time of a train step that updates no mask.
- ``amortised``: the total time of the run, mask updates included, for
  the methods that update masks (every 100 steps, the schedule spanning
  the run).
- ``compile``: tracing + lowering + compiling the pruned step
  (``jax.jit(step).lower(...).compile()``), over the plain step's: the
  median of three compiles of each, alternated, each from a fresh closure,
  timed on its own (no step time holds compilation).
- ``mask_update``: a step of ``prune(adam, magnitude)`` that re-ranks every
  weight globally, over a dense step, on the 4-layer MLP at batch 32.
- ``memory``: the bytes of params + optimizer state that pruning adds.

Step times follow one method (``benchmarks.timing``): the step is jitted
with its state donated, warmed up on throw-away copies of the state, and
timed step by step with ``block_until_ready``; the plain and pruned runs
alternate in short blocks, in a random order per block, and ``ratio`` is
the median over blocks of (pruned block median) / (plain block median).

Output (``--out FILE``) is JSON::

    {"environment": {"devices", "backend", "jax", "jaxlib", "host",
                     "processor", "machine", "python", "cpu_count"},
     "suite": {"mode", "argv", "wall_s", "errors"},
     "records": [record, ...]}

Every record has ``kind``, ``model``, ``method`` (a key of
``benchmarks.methods.METHODS``; ``magnitude`` for ``mask_update``),
``description``, ``batch``, ``params``, ``prunable_params``, ``ratio``,
``plain_median_s``, ``pruned_median_s`` (``null`` for ``memory``, whose
``batch`` is ``null`` too), ``target`` (the bound of
``benchmarks.report.target_of``, or ``null``), ``target_ratio_max`` and
``passed`` (``true``/``false``/``null``). By kind, also:

- ``step``: ``steps``, ``block``, ``ratio_quartiles`` (over blocks),
  ``mask_updates``, ``mask_update_median_s``, ``final_sparsity``.
- ``amortised``: the same, with ``pruned_median_s`` over all steps and
  ``plain_total_s``, ``pruned_total_s``; ``ratio`` is their quotient.
- ``mask_update``: ``steps``, ``block``, ``ratio_quartiles``.
- ``compile``: medians over ``compiles`` compiles of each step.
- ``memory``: ``params_bytes``, ``plain_state_bytes``,
  ``pruned_state_bytes``, ``added_bytes``,
  ``added_bytes_per_prunable_param``, ``added_bytes_per_param``; ``ratio``
  is ``added_bytes / params_bytes``.

A markdown table (``--markdown``, by default the JSON's path with ``.md``)
and a PNG plot of the ratios (``--plot``, by default ``.png``) go beside it.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import sys
import time
import traceback
from collections.abc import Iterable
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jaxlib

from benchmarks import measure
from benchmarks import methods
from benchmarks import report


class Job(NamedTuple):
  """One measurement of the plan.

  Attributes:
    kind: ``"step"`` (gives step, amortised and compile records),
      ``"mask_update"`` or ``"memory"``.
    model: a name of ``benchmarks.models``.
    method: a key of ``benchmarks.methods.METHODS``.
    batch: the batch size (unused by memory jobs).
    steps: timed steps per run (step and mask_update jobs).
    block: steps per alternating block.
    warmup: warm-up steps, on throw-away copies.
  """

  kind: str
  model: str
  method: str
  batch: int = 0
  steps: int = 0
  block: int = 0
  warmup: int = 0


QUICK_METHODS = ("magnitude", "flipout", "l0", "project_l21")
ALL_METHODS = tuple(methods.METHODS)


def _step_jobs(models: Iterable[str], method_names: Iterable[str], batch: int,
               steps: int, block: int, warmup: int) -> list[Job]:
  return [Job("step", model, method, batch, steps, block, warmup)
          for model in models for method in method_names]


def _mask_update_jobs(models: Iterable[str], steps: int = 20, block: int = 5,
                      warmup: int = 2) -> list[Job]:
  # Whether an update meets a tie at its threshold (a few more passes) varies
  # from step to step, so these rows need more steps than a plain step.
  return [Job("mask_update", model, "magnitude", 32, steps, block, warmup)
          for model in models]


def _memory_jobs(models: Iterable[str], method_names: Iterable[str]) -> list[Job]:
  return [Job("memory", model, method) for model in models
          for method in method_names]


def quick_plan() -> list[Job]:
  """Under two minutes on a 2-core CPU, compilation included.

  Compiling takes most of it (a pruned step 3-10 s on that CPU, FlipOut's
  the longest), so the conv net and the transformer run fewer methods.
  """
  return [
      *_step_jobs(["lenet300100"], QUICK_METHODS, 128, 100, 10, 3),
      *_step_jobs(["lenet5"], ("magnitude",), 16, 100, 10, 3),
      *_step_jobs(["transformer_small"], ("magnitude", "l0"), 16, 100, 10, 3),
      *_mask_update_jobs(["mlp1m", "mlp4m"], steps=6, block=3, warmup=1),
      *_memory_jobs(["lenet300100"], ALL_METHODS),
  ]


def full_plan() -> list[Job]:
  """Every model and method; about 30 minutes on a loaded 2-core CPU.

  The larger models run fewer steps and methods.
  """
  scaled = ("magnitude", "magnitude_packed", "flipout", "l0")
  return [
      *_step_jobs(["lenet300100"], ALL_METHODS, 128, 1000, 25, 20),
      *_step_jobs(["lenet5"], ALL_METHODS, 32, 300, 25, 10),
      *_step_jobs(["resnet20"], QUICK_METHODS, 32, 100, 10, 3),
      *_step_jobs(["transformer"], QUICK_METHODS, 16, 100, 10, 3),
      *_step_jobs(["mlp1m"], ALL_METHODS, 32, 1000, 25, 20),
      *_mask_update_jobs(["mlp1m"]),
      *_step_jobs(["mlp4m"], scaled, 32, 500, 25, 10),
      *_mask_update_jobs(["mlp4m"]),
      *_step_jobs(["mlp26m"], scaled, 32, 100, 10, 2),
      *_mask_update_jobs(["mlp26m"]),
      *_step_jobs(["mlp100m"], ("magnitude", "magnitude_packed"), 32, 100, 10,
                  2),
      *_mask_update_jobs(["mlp100m"], steps=6, block=3, warmup=1),
      *_memory_jobs(["lenet300100", "lenet5", "resnet20", "transformer",
                     "mlp4m"], ALL_METHODS),
  ]


def select(jobs: Sequence[Job], only: Sequence[str] = (),
           kinds: Sequence[str] = ()) -> list[Job]:
  """The jobs matching one of ``only`` (``MODEL`` or ``MODEL:METHOD``) and
  one of ``kinds``; an empty filter keeps everything."""

  def wanted(job: Job) -> bool:
    model_method = (job.model, f"{job.model}:{job.method}")
    return ((not only or any(o in model_method for o in only))
            and (not kinds or job.kind in kinds))

  return [job for job in jobs if wanted(job)]


def environment() -> dict:
  """The device, the JAX versions and the host the numbers come from."""
  return {
      "devices": [str(d) for d in jax.devices()],
      "backend": jax.default_backend(),
      "jax": jax.__version__,
      "jaxlib": jaxlib.__version__,
      "host": platform.node(),
      "processor": platform.processor() or platform.machine(),
      "machine": platform.machine(),
      "python": platform.python_version(),
      "cpu_count": os.cpu_count(),
  }


class Suite:
  """Runs jobs in order, reusing one model's :class:`measure.Bench`."""

  def __init__(self):
    self._bench: measure.Bench | None = None

  def _bench_for(self, job: Job) -> measure.Bench:
    current = self._bench
    if current is None or (current.model.name, current.batch_size) != (
        job.model, job.batch):
      self._bench = None  # let the previous model's arrays go first
      self._bench = measure.prepare(job.model, job.batch)
    return self._bench

  def run(self, job: Job) -> list[dict]:
    """The records of ``job``, judged against their targets."""
    if job.kind == "memory":
      records = measure.measure_memory(job.model, job.method)
    elif job.kind == "mask_update":
      records = measure.measure_mask_update(
          self._bench_for(job), job.steps, job.block, job.warmup)
    elif job.kind == "step":
      records = measure.measure_step(
          self._bench_for(job), job.method, job.steps, job.block, job.warmup)
    else:
      raise ValueError(f"unknown job kind {job.kind!r}")
    return [report.judge(r) for r in records]


def _progress_line(record: dict) -> str:
  if record["kind"] == "memory":
    measured = (f"added {record['added_bytes']:,} B = "
                f"{record['added_bytes_per_prunable_param']:.4f} B/prunable param")
  else:
    measured = (f"plain {record['plain_median_s'] * 1e3:9.3f} ms  pruned "
                f"{record['pruned_median_s'] * 1e3:9.3f} ms")
  verdict = "" if record["passed"] is None else (
      f"  [{record['target']}: {'pass' if record['passed'] else 'MISS'}]")
  return (f"{record['kind']:<11} {record['model']:<17} {record['method']:<14} "
          f"{measured}  ratio {record['ratio']:.3f}{verdict}")


def _outputs(args: argparse.Namespace) -> tuple[str | None, str | None, str | None]:
  stem = pathlib.Path(args.out).with_suffix("") if args.out else None
  markdown = args.markdown or (f"{stem}.md" if stem else None)
  plot = args.plot or (f"{stem}.png" if stem else None)
  return args.out, markdown, plot


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("--quick", action="store_true",
                      help="the small plan (under 2 minutes on a 2-core CPU)")
  parser.add_argument("--only", action="append", default=[],
                      metavar="MODEL[:METHOD]",
                      help="keep only these jobs; repeatable")
  parser.add_argument("--kind", action="append", default=[],
                      choices=("step", "mask_update", "memory"),
                      help="keep only jobs of this kind; repeatable")
  parser.add_argument("--steps", type=int,
                      help="timed steps per run of every step job")
  parser.add_argument("--list", action="store_true",
                      help="print the selected jobs and exit")
  parser.add_argument("--out", help="write the JSON report here")
  parser.add_argument("--markdown", help="markdown table (default: --out as .md)")
  parser.add_argument("--plot", help="PNG plot (default: --out as .png)")
  return parser


def _selected_jobs(args: argparse.Namespace) -> list[Job]:
  jobs = select(quick_plan() if args.quick else full_plan(), args.only, args.kind)
  if args.steps:
    jobs = [job._replace(steps=args.steps) if job.kind == "step" else job
            for job in jobs]
  if not jobs:
    raise SystemExit("no job matches the filters")
  return jobs


def run_jobs(jobs: Sequence[Job], env: dict, suite_info: dict,
             json_path: str | None = None) -> list[dict]:
  """Runs ``jobs``, printing each record; a failing job is reported in
  ``suite_info["errors"]`` and skipped. The JSON is rewritten after every
  job, so that a crash keeps what was measured."""
  records, suite, start = [], Suite(), time.perf_counter()
  for job in jobs:
    job_start = time.perf_counter()
    try:
      new = suite.run(job)
    except Exception:  # pylint: disable=broad-except
      # One broken job should not cost the rest of a 30-minute run.
      traceback.print_exc()
      suite_info["errors"].append(f"{job}: {traceback.format_exc(limit=1)}")
      continue
    for record in new:
      print(_progress_line(record), flush=True)
    print(f"  ({job.kind} {job.model}:{job.method}: "
          f"{time.perf_counter() - job_start:.1f} s)", flush=True)
    records += new
    suite_info["wall_s"] = time.perf_counter() - start
    if json_path:
      report.write_json(json_path, env, records, suite_info)
  return records


def main(argv: Sequence[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  jobs = _selected_jobs(args)
  if args.list:
    print("\n".join(str(job) for job in jobs))
    return 0
  # Compile times are measured: no program may come from a persistent
  # compilation cache (JAX_COMPILATION_CACHE_DIR).
  jax.config.update("jax_enable_compilation_cache", False)
  env = environment()
  print("\n".join(f"{key}: {value}" for key, value in env.items()))
  json_path, markdown_path, plot_path = _outputs(args)
  for path in filter(None, (json_path, markdown_path, plot_path)):
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  suite_info = {"mode": "quick" if args.quick else "full",
                "argv": sys.argv[1:] if argv is None else list(argv),
                "wall_s": 0.0, "errors": []}
  records = run_jobs(jobs, env, suite_info, json_path)
  print(f"\n{len(records)} records in {suite_info['wall_s']:.1f} s\n")
  print(report.markdown(env, records))
  if markdown_path:
    report.write_markdown(markdown_path, env, records)
  if plot_path and records:
    report.write_plot(plot_path, records)
  return 1 if suite_info["errors"] else 0


if __name__ == "__main__":
  sys.exit(main())
