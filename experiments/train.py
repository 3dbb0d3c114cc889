"""Training and evaluation of one experiment: ``train_and_evaluate``.

Writes into the work directory:

- ``metrics.jsonl``: one JSON line per logged training step
  (``{"kind": "train", "step", "loss", "accuracy", "sparsity"}``) and per
  evaluation (``{"kind": "eval", "step", "test_loss", "test_accuracy",
  "sparsity"}``);
- ``summary.json``: final and best test accuracy, sparsity (global and per
  layer), steps, wall time and the config;
- ``training.png`` and ``layer_sparsity.png`` (see ``experiments.plots``);
- ``checkpoints/``: Orbax checkpoints of the whole train state, each with
  the sha256 of every array, checked when it is restored (see
  :func:`load_checkpoint`); ``bad_checkpoints/``: those that a resumed run
  found corrupt and set aside.

Data parallel: the batch is split over all devices along a 1-D mesh axis
``"data"`` and the train state is replicated, so the same code runs on one
CPU, several (simulated) devices, a GPU or a TPU host.

Several processes (``jax.distributed``, e.g. the hosts of a TPU pod slice)
run one job: each one builds the same global batch, a pure function of the
step, and feeds only its part of it (``data.process_part``), so that the
devices see the batches of a one-process run.  Evaluation is split the same
way.  Every process takes part in the checkpoints (Orbax writes each
replicated array once; the work directory must be one folder that all
processes see, e.g. a GCS bucket); only process 0 writes the metrics, the
summary and the plots.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import pathlib
import sys
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

import jaxprune
from experiments import data
from experiments import files
from experiments import methods
from experiments import models
from experiments import plots
from experiments import structure
from experiments.config import Config, to_dict


class TrainState(jaxprune.TrainState):
  """jaxprune's TrainState plus batch-norm statistics (empty if none)."""

  batch_stats: Any = None


def _optimizer(config: Config, masks=None) -> optax.GradientTransformation:
  if config.lr_schedule == "constant":
    lr = config.learning_rate
  elif config.lr_schedule == "cosine":
    lr = optax.cosine_decay_schedule(config.learning_rate, config.steps)
  elif config.lr_schedule == "step":  # FlipOut's recipe: /10 at 43% and 71%
    lr = optax.piecewise_constant_schedule(
        config.learning_rate,
        {int(0.43 * config.steps): 0.1, int(0.71 * config.steps): 0.1},
    )
  else:
    raise ValueError(f"unknown lr_schedule {config.lr_schedule!r}")
  if config.optimizer == "adam":
    inner = optax.adam(lr)
    if config.gate_learning_rate and config.method in methods.GATED_METHODS:
      inner = optax.partition(
          {"weights": inner, "gates": optax.adam(config.gate_learning_rate)},
          jaxprune.gate_labels,
      )
  elif config.optimizer == "adamw":
    inner = optax.adamw(lr, weight_decay=config.weight_decay)
  elif config.optimizer == "sgd":
    inner = optax.chain(
        optax.add_decayed_weights(config.weight_decay),
        optax.sgd(lr, momentum=config.momentum or None),
    )
  else:
    raise ValueError(f"unknown optimizer {config.optimizer!r}")
  return methods.build(inner, config, masks)


def _init_batches(config: Config, train_split):
  """The batches of a before-training method: a stream of its own (seed + 1),
  so that training sees the same batches whatever the method."""
  for i in itertools.count():
    yield data.train_batch(train_split, config.init_batch_size,
                           config.seed + 1, i)


def create_state(config: Config, model, sample: np.ndarray,
                 train_split=None) -> TrainState:
  """The initial train state, a pure function of the config's seed.

  A before-training method prunes here, on ``train_split``; without it
  (a template to restore a checkpoint into) its masks keep everything.
  """
  # One compiled program: eagerly, each initializer compiles on its own.
  init = jax.jit(functools.partial(model.init, train=False))
  variables = init(jax.random.key(config.seed), sample)
  params, masks = variables["params"], None
  if config.method in methods.BEFORE_TRAINING and train_split is not None:
    masks = methods.initial_masks(config, model, variables,
                                  _init_batches(config, train_split))
    params = jaxprune.apply_masks(params, masks)
  if config.method in methods.STRUCTURED:
    if train_split is None:
      raise ValueError(f"{config.method} needs the training split to prune")
    widths, params = methods.shrunk_network(
        config, model, variables, _init_batches(config, train_split))
    model = models.get_model(config.model, num_classes=10, widths=widths)
  return TrainState.create(
      apply_fn=model.apply,
      params=methods.init_params(config, params),
      tx=_optimizer(config, masks),
      batch_stats=variables.get("batch_stats", {}),
  )


def _loss_and_accuracy(logits, labels, mask=None):
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  if mask is None:
    return losses.mean(), correct.mean()
  mask = mask.astype(jnp.float32)
  return (losses * mask).sum(), (correct * mask).sum()


def _train_step(state: TrainState, batch, config: Config):
  def loss_fn(params):
    logits, updates = state.apply_fn(
        {"params": methods.model_params(config, params, state.step),
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


def _eval_step(state: TrainState, batch, config: Config):
  logits = state.apply_fn(
      {"params": methods.model_params(config, state.params),
       "batch_stats": state.batch_stats},
      batch["image"], train=False,
  )
  loss_sum, correct = _loss_and_accuracy(logits, batch["label"], batch["mask"])
  return loss_sum, correct


def final_masks(state: TrainState):
  """The masks of the pruning state, or the hard masks of L0 gates, or None."""
  try:
    return state.masks
  except ValueError:  # no pruning state
    pass
  try:
    return jaxprune.hard_masks(state.params)
  except ValueError:  # no gates either: a dense run
    return None


def sparsity_report(state: TrainState) -> jaxprune.Sparsity:
  """Sparsity of the masks if the run prunes or gates, else of the params."""
  masks = final_masks(state)
  return jaxprune.sparsity(state.params if masks is None else masks)


def _expected_density(state: TrainState) -> jaxprune.Density | None:
  try:
    return jaxprune.expected_density(state.params)
  except ValueError:  # no gates
    return None


def gate_metrics(state: TrainState, density: jaxprune.Density | None = None) -> dict:
  """Expected density and multipliers of an L0-gated run ({} otherwise)."""
  density = density or _expected_density(state)
  if density is None:
    return {}
  metrics = {"expected_density": float(density.model)}
  duals = [s for s in jax.tree.leaves(
      state.opt_state, is_leaf=lambda x: isinstance(x, jaxprune.DualAscentState))
      if isinstance(s, jaxprune.DualAscentState)]
  if duals:
    metrics["multipliers"] = np.concatenate(
        [np.ravel(m) for m in duals[0].multipliers]).tolist()
  return metrics


def structure_report(state: TrainState, config: Config) -> dict:
  """Expected density per layer, and the params left once the units that the
  gates cut off are removed (sequential models); {} for an ungated run."""
  density = _expected_density(state)
  if density is None:
    return {}
  metrics = gate_metrics(state, density)
  model_params = methods.model_params(config, state.params)
  kept = structure.kept_params(
      jax.device_get(model_params), jax.device_get(final_masks(state)))
  return {
      **metrics,
      "expected_density_per_layer": {k: float(v) for k, v in density.layers.items()},
      "kept_params": kept.kept,
      "kept_fraction": kept.fraction,
      "units": kept.units,
  }


def connectivity_report(state: TrainState, config: Config) -> dict:
  """Layers cut off from every input-to-output path, and the kept weights on
  a path (``jaxprune.connectivity``), for a run with masks and without batch
  norm; {} otherwise."""
  try:
    masks = state.masks
  except ValueError:  # no pruning state
    return {}
  if state.batch_stats:
    return {}
  shape = data.IMAGE_SHAPES[config.dataset]

  def apply_fn(p, x):
    return state.apply_fn({"params": p}, x, train=False)

  report = jaxprune.connectivity(apply_fn, jax.device_get(state.params),
                                 jax.device_get(masks), shape)
  kept, effective = sum(report.kept.values()), sum(report.effective.values())
  return {
      "connected": report.connected,
      "disconnected_layers": list(report.disconnected),
      "kept_weights": kept,
      "effective_weights": effective,
      "effective_per_layer": report.effective,
  }


def _layer_name(path) -> str:
  return "/".join(str(getattr(k, "key", k)) for k in path)


def per_layer_sparsity(report: jaxprune.Sparsity) -> dict[str, float]:
  flat = jax.tree_util.tree_flatten_with_path(report.per_leaf)[0]
  return {_layer_name(path): float(v) for path, v in flat}


def evaluate(eval_step, state, split, config: Config, mesh) -> tuple[float, float]:
  """Test loss and accuracy over the whole ``split``, on all devices.

  Each process feeds its part of every batch; the sums over the batch are
  global, so every process gets the numbers of a one-process run.
  """
  loss_sum, correct = 0.0, 0.0
  for batch in data.eval_batches(split, config.eval_batch_size):
    l, c = eval_step(state, data.shard(data.process_part(batch, mesh), mesh))
    loss_sum += float(l)
    correct += float(c)
  n = len(split.labels)
  return loss_sum / n, correct / n


class CheckpointError(ValueError):
  """A checkpoint does not restore: corrupt, incomplete, or of another config.

  Attributes:
    path: the checkpoint's directory (or the directory of all of them).
    step: its step (None for all of them).
  """

  def __init__(self, path: pathlib.Path, step: int | None, problem: str):
    where = f"{path}" if step is None else f"checkpoint of step {step} at {path}"
    super().__init__(f"{where} does not restore: {problem}")
    self.path, self.step = path, step


def _checkpoint_manager(workdir: pathlib.Path):
  options = ocp.CheckpointManagerOptions(max_to_keep=2, create=True)
  return ocp.CheckpointManager(workdir / "checkpoints", options=options)


def _step_path(manager, step: int) -> pathlib.Path:
  return pathlib.Path(manager.directory) / str(step)


def _digest(state: TrainState) -> dict[str, str]:
  """The sha256 of every array of ``state`` (dtype, shape and bytes of this
  process's copy), by key path.  Orbax stores no checksum of the data, so a
  garbled file would otherwise restore as different numbers."""
  digest = {}
  for path, leaf in jax.tree.leaves_with_path(state):
    if isinstance(leaf, jax.Array):
      leaf = leaf.addressable_data(0)  # the state is replicated
    array = np.ascontiguousarray(leaf)
    sha = hashlib.sha256(f"{array.dtype} {array.shape} ".encode())
    sha.update(array.data)
    digest[jax.tree_util.keystr(path)] = sha.hexdigest()
  return digest


def _save(manager, step: int, state: TrainState) -> None:
  saved = manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      digest=ocp.args.JsonSave(_digest(state)),
  ))
  if not saved:  # Orbax skips, silently, a step not past its latest one
    raise RuntimeError(f"the checkpoint of step {step} was not written: "
                       f"{manager.directory} holds step {manager.latest_step()}")


def _first_line(error: Exception, limit: int = 200) -> str:
  text = (str(error).strip().splitlines() or [""])[0]
  text = text.split(" See full TensorStore details")[0]  # a long spec follows
  text = text if len(text) <= limit else text[:limit] + "..."
  return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _restore(manager, step: int, like: TrainState) -> TrainState:
  """The state saved at ``step``, with the shapes and shardings of ``like``,
  checked against the digest saved with it.

  Raises:
    CheckpointError: the checkpoint is missing, does not read, or its arrays
      differ from its digest.
  """
  path = _step_path(manager, step)
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like
  )
  if (path / "default").is_dir() and not (path / "state").exists():
    # Written before checkpoints carried digests: restored unchecked.
    try:
      with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(path / "default", abstract)
    except Exception as error:  # Orbax and TensorStore raise many types
      raise CheckpointError(path, step, _first_line(error)) from error
  try:
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract),
        digest=ocp.args.JsonRestore(),
    ))
  except Exception as error:  # Orbax and TensorStore raise many types
    raise CheckpointError(
        path, step, "a file is missing, cut short or garbled, or the "
        f"checkpoint is of another config ({_first_line(error)})") from error
  saved, found = restored.digest, _digest(restored.state)
  if not isinstance(saved, dict) or saved != found:
    differ = (sorted(k for k in saved.keys() | found.keys()
                     if saved.get(k) != found.get(k))
              if isinstance(saved, dict) else ["the digest itself"])
    raise CheckpointError(
        path, step, "a file is garbled (or the checkpoint is of another "
        "config): its arrays do not match the sha256 saved with them "
        f"({len(differ)} differ: {', '.join(differ[:3])}"
        f"{', ...' if len(differ) > 3 else ''})")
  return restored.state


def _restore_newest_good(manager, like: TrainState, workdir: pathlib.Path):
  """The newest checkpoint that restores.

  Each newer one that does not is named in a warning and, once a good one is
  found, moved to ``workdir/bad_checkpoints`` (left in place, Orbax would
  skip the new checkpoints of its step and of the steps before it).

  Raises:
    CheckpointError: no checkpoint restores (then nothing is moved).
  """
  bad = []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      state = _restore(manager, step, like)
    except CheckpointError as error:
      print(f"warning: {error}; trying the one before", file=sys.stderr)
      bad.append(error)
      continue
    for error in bad if jax.process_index() == 0 else ():
      target = workdir / "bad_checkpoints" / str(error.step)
      for n in itertools.count(1):  # keep earlier ones of the same step
        if not target.exists():
          break
        target = target.with_name(f"{error.step}.{n}")
      target.parent.mkdir(exist_ok=True)
      error.path.rename(target)
      print(f"warning: moved the checkpoint of step {error.step} to {target}; "
            f"resuming from step {step}", file=sys.stderr)
    if bad and jax.process_count() > 1:  # every process sees them moved
      multihost_utils.sync_global_devices("jaxprune: bad checkpoints moved")
    manager.reload()
    return state
  problems = "; ".join(str(error) for error in bad)
  raise CheckpointError(pathlib.Path(manager.directory), None,
                        f"none of its checkpoints does ({problems})")


def load_checkpoint(config: Config, workdir: str | pathlib.Path,
                    step: int | None = None) -> TrainState:
  """The train state of a run's checkpoint (the latest one by default).

  Checkpoints written on any number of devices load on the devices of this
  process, replicated.  Every array is checked against the sha256 saved
  with it.

  Example::

    state = train.load_checkpoint(config.resolve("lenet300_mnist"),
                                  "runs/lenet300_mnist")
    state.params, state.masks

  Raises:
    FileNotFoundError: no checkpoint (of this step) in ``workdir``.
    CheckpointError: the checkpoint is corrupt, incomplete or of another
      config; the message names its path and step.
  """
  workdir = pathlib.Path(workdir).absolute()
  manager = _checkpoint_manager(workdir)
  try:
    steps = manager.all_steps()
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {workdir / 'checkpoints'}")
    if step not in steps:
      raise FileNotFoundError(f"no checkpoint of step {step} in "
                              f"{workdir / 'checkpoints'} (steps: {list(steps)})")
    split = None
    if config.method in methods.STRUCTURED:  # the shapes depend on the data
      split = data.load(config.dataset, "train", source_dir=config.source_dir,
                        tfds_dir=config.tfds_dir)
    return _restore(manager, step, _initial_state(config, split))
  finally:
    manager.close()


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
    kept = [(l, r) for l, r in zip(lines, map(json.loads, lines))
            if r["step"] <= after]
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("jaxprune: log read")
  if jax.process_index() == 0 and path.exists():
    files.write_text_atomically(path, "".join(l + "\n" for l, _ in kept))
  return [r for _, r in kept]


def _load_splits(config: Config):
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


def _initial_state(config: Config, train_split=None) -> TrainState:
  """The replicated initial state, from the model's input shape (and, for a
  before-training method, from ``train_split``)."""
  model = models.get_model(config.model, num_classes=10)
  shape = data.IMAGE_SHAPES[config.dataset]
  state = create_state(config, model, np.zeros((1, *shape), np.float32),
                       train_split)
  mesh = data.data_mesh()
  return jax.device_put(state, NamedSharding(mesh, PartitionSpec()))


def train_and_evaluate(
    config: Config, workdir: str | pathlib.Path, resume: bool = False,
    progress: bool = True,
) -> dict:
  """Trains ``config`` and writes metrics, summary, plots and checkpoints.

  Args:
    config: the run.
    workdir: output directory, created if needed.
    resume: continue from the latest checkpoint in ``workdir``.
    progress: show a progress bar.

  Returns:
    The summary, as process 0 writes it to ``summary.json``.  (Another
    process that cannot read the log of a resumed run reports the best
    accuracy of its own evaluations only.)
  """
  workdir = pathlib.Path(workdir).absolute()  # Orbax needs absolute paths
  workdir.mkdir(parents=True, exist_ok=True)
  started = time.perf_counter()
  chief = jax.process_index() == 0  # writes the metrics, summary and plots
  train_split, test_split = _load_splits(config)
  mesh = data.data_mesh()
  replicated = NamedSharding(mesh, PartitionSpec())
  manager = _checkpoint_manager(workdir)
  resuming = resume and manager.latest_step() is not None
  needs_data = not resuming or config.method in methods.STRUCTURED
  state = _initial_state(config, train_split if needs_data else None)

  metrics_path = workdir / "metrics.jsonl"
  records = []
  if resuming:
    state = _restore_newest_good(manager, state, workdir)
    records = _earlier_records(metrics_path, after=int(state.step))
  else:  # a fresh run starts a fresh log and fresh checkpoints
    if chief:
      metrics_path.unlink(missing_ok=True)
    if steps := manager.all_steps():
      if chief:
        print(f"warning: a fresh run: deleting the checkpoints of steps "
              f"{list(steps)} in {manager.directory} (--resume continues from "
              "them)", file=sys.stderr)
      for step in steps:
        manager.delete(step)

  train_step = jax.jit(functools.partial(_train_step, config=config),
                       donate_argnums=0, out_shardings=(replicated, replicated))
  eval_step = jax.jit(functools.partial(_eval_step, config=config))
  first = int(state.step)
  bar = tqdm.tqdm(total=config.steps, initial=first,
                  disable=not (progress and chief), desc=config.name,
                  unit="step", dynamic_ncols=True)
  with open(metrics_path, "a") if chief else contextlib.nullcontext() as log:

    def write(record):
      records.append(record)
      if chief:
        log.write(json.dumps(record) + "\n")
        log.flush()

    for step in range(first, config.steps):
      batch = data.train_batch(train_split, config.batch_size, config.seed, step)
      batch = data.shard(data.process_part(batch, mesh), mesh)
      state = methods.between_steps(config, state, step, functools.partial(
          data.train_batch, train_split, config.init_batch_size, config.seed + 1))
      state, metrics = train_step(state, batch)
      done = step + 1
      if done % config.log_every == 0 or done == config.steps:
        sparsity = float(sparsity_report(state).global_sparsity)
        record = {"kind": "train", "step": done, "loss": float(metrics["loss"]),
                  "accuracy": float(metrics["accuracy"]), "sparsity": sparsity,
                  **gate_metrics(state)}
        write(record)
        bar.set_postfix(loss=f"{record['loss']:.3f}",
                        acc=f"{record['accuracy']:.3f}", sparsity=f"{sparsity:.3f}")
      if (config.eval_every and done % config.eval_every == 0) or done == config.steps:
        test_loss, test_accuracy = evaluate(eval_step, state, test_split, config, mesh)
        sparsity = float(sparsity_report(state).global_sparsity)
        write({"kind": "eval", "step": done, "test_loss": test_loss,
               "test_accuracy": test_accuracy, "sparsity": sparsity})
      if (config.checkpoint_every and done % config.checkpoint_every == 0) or done == config.steps:
        _save(manager, done, state)
      bar.update(1)
  bar.close()
  manager.wait_until_finished()
  manager.close()

  evals = [r for r in records if r["kind"] == "eval"]
  if first < config.steps:  # the last step evaluated
    final = evals[-1]
  else:  # resumed at the end; every process evaluates (a collective)
    test_loss, test_accuracy = evaluate(eval_step, state, test_split, config, mesh)
    final = {"step": config.steps, "test_loss": test_loss, "test_accuracy": test_accuracy}
  best_accuracy = max([r["test_accuracy"] for r in evals] + [final["test_accuracy"]])
  report = sparsity_report(state)
  model_params = methods.model_params(config, state.params)
  summary = {
      "final_test_accuracy": final["test_accuracy"],
      "final_test_loss": final["test_loss"],
      "best_test_accuracy": best_accuracy,
      "global_sparsity": float(report.global_sparsity),
      "per_layer_sparsity": per_layer_sparsity(report),
      "params": models.count_params(model_params),
      "nonzero_params": int(sum(int(jnp.sum(p != 0)) for p in jax.tree.leaves(model_params))),
      "steps": config.steps,
      "wall_time_s": time.perf_counter() - started,
      "devices": jax.device_count(),
      **({"l0": l0} if (l0 := structure_report(state, config)) else {}),
      **({"connectivity": c} if (c := connectivity_report(state, config)) else {}),
      **({"widths": {name: int(np.shape(layer["kernel"])[-1])
                     for name, layer in sorted(state.params.items())}}
         if config.method in methods.STRUCTURED else {}),
      "config": to_dict(config),
  }
  if chief:
    files.write_text_atomically(workdir / "summary.json",
                                json.dumps(summary, indent=2) + "\n")
    plots.write_plots(records, summary, workdir)
  return summary
