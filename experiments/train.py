"""Training and evaluation of one experiment: ``train_and_evaluate``.

Writes into the work directory:

- ``metrics.jsonl``: one JSON line per logged training step
  (``{"kind": "train", "step", "loss", "accuracy", "sparsity"}`` and the
  method's ``train_metrics``) and per evaluation (``{"kind": "eval", "step",
  "test_loss", "test_accuracy", "sparsity"}``);
- ``summary.json``: final and best test accuracy, sparsity (global and per
  layer), steps, wall time, the method's ``report`` and the config;
- ``training.png`` and ``layer_sparsity.png`` (see ``experiments.plots``);
- ``checkpoints/``: Orbax checkpoints of the whole train state, each with
  the sha256 of every array, checked when it is restored; ``bad_checkpoints/``:
  those that a resumed run found corrupt and set aside (see
  :mod:`experiments.checkpoints`, whose :func:`load_checkpoint` and
  :class:`CheckpointError` are re-exported here).

What the run's method changes (its transformation, its pruning at
initialisation, the params the model is applied with, its reports) comes
from its record in :data:`experiments.methods.METHODS`; the initial state is
:func:`experiments.state.initial_state`.

Data parallel: the batch is split over all devices along a 1-D mesh axis
``"data"`` and the train state is replicated, so the same code runs on one
CPU, several (simulated) devices, a GPU or a TPU host.

Several processes (``jax.distributed``, e.g. the hosts of a TPU pod slice)
run one job: each one builds the same global batch, a pure function of the
step, and feeds only its part of it (``batching.process_part``), so that the
devices see the batches of a one-process run.  Evaluation is split the same
way.  Every process takes part in the checkpoints (Orbax writes each
replicated array once; the work directory must be one folder that all
processes see, e.g. a GCS bucket); only process 0 writes the metrics, the
summary and the plots.
"""

from __future__ import annotations

import contextlib
import functools
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import optax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

from experiments import batching
from experiments import checkpoint_writer
from experiments import checkpoints
from experiments import data
from experiments import files
from experiments import methods
from experiments import models
from experiments import plots
from experiments import progress as progress_lib
from experiments import reports
from experiments import resume_check
from experiments import stopping
from experiments.checkpoints import CheckpointError
from experiments.checkpoints import load_checkpoint
from experiments.config import Config
from experiments.config import to_dict
from experiments.state import TrainState
from experiments.state import initial_state

__all__ = [
    "CheckpointError",
    "TrainState",
    "evaluate",
    "load_checkpoint",
    "train_and_evaluate",
]


def _loss_and_accuracy(logits, labels, mask=None):
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  if mask is None:
    return losses.mean(), correct.mean()
  mask = mask.astype(jnp.float32)
  return (losses * mask).sum(), (correct * mask).sum()


def _train_step(state: TrainState, batch, model_params):
  """One step; ``model_params(params, step)`` are the params the model is
  applied with (the method's ``model_params``)."""

  def loss_fn(params):
    logits, updates = state.apply_fn(
        {"params": model_params(params, state.step),
         "batch_stats": state.batch_stats},
        batch["image"], train=True, mutable=["batch_stats"],
    )
    loss, accuracy = _loss_and_accuracy(logits, batch["label"])
    return loss, (accuracy, updates.get("batch_stats", {}))

  (loss, (accuracy, batch_stats)), grads = jax.value_and_grad(
      loss_fn, has_aux=True
  )(state.params)
  state = state.apply_gradients(grads=grads).replace(batch_stats=batch_stats)
  return state, {"loss": loss, "accuracy": accuracy}


def _eval_step(state: TrainState, batch, model_params):
  logits = state.apply_fn(
      {"params": model_params(state.params),
       "batch_stats": state.batch_stats},
      batch["image"], train=False,
  )
  loss_sum, correct = _loss_and_accuracy(logits, batch["label"], batch["mask"])
  return loss_sum, correct


def evaluate(eval_step, state, split, batch_size: int,
             mesh) -> tuple[float, float]:
  """Test loss and accuracy over the whole ``split``, in batches of
  ``batch_size``, on all devices.

  Each process feeds its part of every batch; the sums over the batch are
  global, so every process gets the numbers of a one-process run.
  """
  loss_sum, correct = 0.0, 0.0
  for batch in batching.eval_batches(split, batch_size):
    l, c = eval_step(state, batching.shard(batching.process_part(batch, mesh), mesh))
    loss_sum += float(l)
    correct += float(c)
  n = len(split.labels)
  return loss_sum / n, correct / n


def _earlier_records(path: pathlib.Path, after: int) -> list[dict]:
  """The records of a resumed run's log up to step ``after``: the later ones
  will be logged again, and a last line that a kill cut short is dropped.
  Process 0 rewrites the log with them alone, once every process has read
  it."""
  kept = []  # (line, record)
  if path.exists():  # not on another host without shared storage
    text = path.read_text()
    lines = text.splitlines()
    if not text.endswith("\n"):
      lines = lines[:-1]
    kept = [(l, r) for l, r in zip(lines, _records(path, lines))
            if r["step"] <= after]
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("jaxprune: log read")
  if jax.process_index() == 0 and path.exists():
    files.write_text_atomically(path, "".join(l + "\n" for l, _ in kept))
  return [r for _, r in kept]


class LogError(ValueError):
  """A line of a resumed run's metrics log is not one of its records."""


def _records(path: pathlib.Path, lines: list[str]) -> list[dict]:
  records = []
  for number, line in enumerate(lines, 1):
    try:
      record = json.loads(line)
    except json.JSONDecodeError as error:
      raise LogError(
          f"{path}, line {number}: not a JSON record ({error.msg} at column "
          f"{error.colno}: {line[:60]!r}); mend or delete that line to resume"
      ) from None
    if not isinstance(record, dict) or not isinstance(record.get("step"), int):
      raise LogError(f"{path}, line {number}: not a record with a step "
                     f"({line[:60]!r}); mend or delete that line to resume")
    records.append(record)
  return records


def _check_fresh(manager, workdir: pathlib.Path, overwrite: bool) -> None:
  """A fresh run deletes the checkpoints in its work directory only when
  asked to (``overwrite``): they may be another run's."""
  steps = manager.all_steps()
  if not steps:
    return
  if not overwrite:
    raise FileExistsError(
        f"{manager.directory} holds the checkpoints of steps {list(steps)}: "
        "--resume continues from them, --overwrite deletes them and starts "
        f"afresh, or choose another --workdir than {workdir}")
  if jax.process_index() == 0:
    print(f"warning: --overwrite: deleting the checkpoints of steps "
          f"{list(steps)} in {manager.directory}", file=sys.stderr)
  for step in steps:
    manager.delete(step)


def _resumed_run(manager, config: Config) -> dict:
  """The run record of the newest checkpoint, checked against ``config``
  ({} for checkpoints written without one)."""
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      run = checkpoints.saved_run(manager, step)
    except CheckpointError as error:
      print(f"warning: {error}", file=sys.stderr)
      continue
    if run is not None:
      resume_check.check(run.get("config", {}), config,
                         pathlib.Path(manager.directory) / str(step), step)
      return run
  return {}


def _run_at(manager, step: int) -> dict:
  try:
    return checkpoints.saved_run(manager, step) or {}
  except CheckpointError as error:
    print(f"warning: {error}", file=sys.stderr)
    return {}


def _better(best: dict | None, new: dict) -> dict:
  """The best evaluation: the highest test accuracy, the earliest step."""
  return new if best is None or new["test_accuracy"] > best["test_accuracy"] else best


def _best_of(records: list[dict]) -> dict | None:
  best = None
  for r in records:
    if r["kind"] == "eval":
      best = _better(best, {"test_accuracy": r["test_accuracy"], "step": r["step"]})
  return best


def load_splits(config: Config):
  """The training and test splits.  With several processes, process 0
  prepares the data set first; the others then find it prepared rather than
  prepare it into the same folder at the same time (on host-local storage
  they prepare their own copy)."""

  def load():
    return tuple(data.load(config.dataset, split, source_dir=config.source_dir,
                           tfds_dir=config.tfds_dir)
                 for split in ("train", "test"))

  if jax.process_count() == 1:
    return load()
  if jax.process_index() == 0:
    splits = load()
  multihost_utils.sync_global_devices("jaxprune: data prepared")
  if jax.process_index() > 0:
    splits = load()
  return splits


def train_and_evaluate(
    config: Config, workdir: str | pathlib.Path, resume: bool = False,
    progress: bool = True, overwrite: bool = False,
    stop: stopping.StopSignals | None = None,
) -> dict:
  """Trains ``config`` and writes metrics, summary, plots and checkpoints.

  Args:
    config: the run.
    workdir: output directory, created if needed.
    resume: continue from the latest checkpoint in ``workdir``; refused
      (``resume_check.ConfigMismatch``) if it was written by a config that
      differs in more than ``resume_check.CHANGEABLE``.
    progress: show the progress on stderr: a bar on a terminal, a plain
      line every 30 s or so otherwise (:class:`experiments.progress.Progress`).
    overwrite: a fresh run (not ``resume``) deletes the checkpoints it finds
      in ``workdir``; without it, it refuses to start (``FileExistsError``).
    stop: signals that stop the run at the end of a step, its state saved
      (:class:`experiments.stopping.Stopped` is raised).

  Returns:
    The summary, as process 0 writes it to ``summary.json``.  (Another
    process that cannot read the log of a resumed run reports the best
    accuracy of its own evaluations only.)

  Raises:
    experiments.checkpoint_writer.CheckpointWriteError: a checkpoint could
      not be written; the run stops at the first one (the manager is left
      open: Orbax's threads may still wait for the failed write).
  """
  workdir = pathlib.Path(workdir).absolute()  # Orbax needs absolute paths
  workdir.mkdir(parents=True, exist_ok=True)
  started = time.perf_counter()
  chief = jax.process_index() == 0  # writes the metrics, summary and plots
  train_split, test_split = load_splits(config)
  mesh = batching.data_mesh()
  replicated = NamedSharding(mesh, PartitionSpec())
  manager = checkpoints.checkpoint_manager(workdir)
  resuming = resume and manager.latest_step() is not None
  saved_run = _resumed_run(manager, config) if resuming else {}
  if not resuming:
    _check_fresh(manager, workdir, overwrite)
  method = methods.get(config.method)
  needs_data = not resuming or method.shrinks
  state = initial_state(config, train_split if needs_data else None)

  metrics_path = workdir / "metrics.jsonl"
  records = []
  if resuming:
    state = checkpoints.restore_newest_good(manager, state, workdir)
    if chief and not metrics_path.exists():
      print(f"warning: {metrics_path} is missing: the plots lack the steps up "
            f"to {int(state.step)}; the summary's bests come from the "
            "checkpoint", file=sys.stderr)
    records = _earlier_records(metrics_path, after=int(state.step))
    saved_run = _run_at(manager, int(state.step))  # maybe an older one
  else:  # a fresh run starts a fresh log
    if chief:
      metrics_path.unlink(missing_ok=True)
  writer = checkpoint_writer.Writer(manager)
  # The bests so far: from the checkpoint, so that the log is not their only
  # source; from the log for a checkpoint written without them.
  best = saved_run.get("best") or _best_of(records)

  model_params = functools.partial(method.model_params, config)
  train_step = jax.jit(functools.partial(_train_step, model_params=model_params),
                       donate_argnums=0, out_shardings=(replicated, replicated))
  eval_step = jax.jit(functools.partial(_eval_step, model_params=model_params))
  first = int(state.step)
  shown = progress_lib.Progress(config.steps, first, config.name,
                                enabled=progress and chief)
  with open(metrics_path, "a") if chief else contextlib.nullcontext() as log:

    def write(record):
      records.append(record)
      if chief:
        log.write(json.dumps(record) + "\n")
        log.flush()

    for step in range(first, config.steps):
      batch = batching.train_batch(train_split, config.batch_size, config.seed, step)
      batch = batching.shard(batching.process_part(batch, mesh), mesh)
      state = method.between_steps(config, state, step, functools.partial(
          batching.train_batch, train_split, config.init_batch_size,
          config.seed + 1))
      state, metrics = train_step(state, batch)
      done = step + 1
      if done % config.log_every == 0 or done == config.steps:
        sparsity = float(reports.sparsity_report(state).global_sparsity)
        record = {"kind": "train", "step": done, "loss": float(metrics["loss"]),
                  "accuracy": float(metrics["accuracy"]), "sparsity": sparsity,
                  **method.train_metrics(state)}
        write(record)
        shown.record(record)
      if (config.eval_every and done % config.eval_every == 0) or done == config.steps:
        test_loss, test_accuracy = evaluate(eval_step, state, test_split,
                                           config.eval_batch_size, mesh)
        sparsity = float(reports.sparsity_report(state).global_sparsity)
        write({"kind": "eval", "step": done, "test_loss": test_loss,
               "test_accuracy": test_accuracy, "sparsity": sparsity})
        best = _better(best, {"test_accuracy": test_accuracy, "step": done})
      stopping_now = stop is not None and stop.signum is not None
      if ((config.checkpoint_every and done % config.checkpoint_every == 0)
          or done == config.steps or stopping_now):
        writer.save(done, state, {"config": to_dict(config), "best": best})
      writer.check()
      shown.update(done)
      if stopping_now:
        shown.close()
        writer.finish()
        raise stopping.Stopped(stop.signum, done, saved=True)
  shown.close()
  writer.finish()

  evals = [r for r in records if r["kind"] == "eval"]
  if first < config.steps:  # the last step evaluated
    final = evals[-1]
  else:  # resumed at the end; every process evaluates (a collective)
    test_loss, test_accuracy = evaluate(eval_step, state, test_split,
                                        config.eval_batch_size, mesh)
    final = {"step": config.steps, "test_loss": test_loss, "test_accuracy": test_accuracy}
  best_accuracy = max(final["test_accuracy"],
                      best["test_accuracy"] if best else final["test_accuracy"])
  report = reports.sparsity_report(state)
  params = model_params(state.params)
  summary = {
      "final_test_accuracy": final["test_accuracy"],
      "final_test_loss": final["test_loss"],
      "best_test_accuracy": best_accuracy,
      "global_sparsity": float(report.global_sparsity),
      "per_layer_sparsity": reports.per_layer_sparsity(report),
      "params": models.count_params(params),
      "nonzero_params": int(sum(int(jnp.sum(p != 0)) for p in jax.tree.leaves(params))),
      "steps": config.steps,
      "wall_time_s": time.perf_counter() - started,
      "devices": jax.device_count(),
      **method.summary(state, config),
      "config": to_dict(config),
  }
  if chief:
    files.write_text_atomically(workdir / "summary.json",
                                json.dumps(summary, indent=2) + "\n")
    plots.write_plots(records, summary, workdir)
  return summary
