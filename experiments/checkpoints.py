"""Checkpoints of the whole train state, each checked when it is restored.

A run's checkpoints are Orbax checkpoints in ``WORKDIR/checkpoints/STEP``,
each with the sha256 of every array (:func:`digest`): Orbax stores no
checksum of the data, so a garbled file would otherwise restore as different
numbers.  :func:`restore` refuses a checkpoint that does not match its
digest (:class:`CheckpointError`); :func:`restore_newest_good`, used when a
run resumes, falls back to the newest one that restores and sets the bad
ones aside in ``WORKDIR/bad_checkpoints``.  :func:`load_checkpoint` gives
the train state of a finished run.

Every process takes part (Orbax writes each replicated array once; the work
directory must be one folder that all processes see).
"""

from __future__ import annotations

import hashlib
import itertools
import pathlib
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from experiments import data
from experiments import methods
from experiments.config import Config
from experiments.state import TrainState
from experiments.state import initial_state

__all__ = [
    "CheckpointError",
    "checkpoint_manager",
    "digest",
    "load_checkpoint",
    "restore",
    "restore_newest_good",
    "save",
    "saved_run",
]


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


def checkpoint_manager(workdir: pathlib.Path) -> ocp.CheckpointManager:
  """The manager of ``workdir/checkpoints`` (the last two kept)."""
  options = ocp.CheckpointManagerOptions(max_to_keep=2, create=True)
  return ocp.CheckpointManager(workdir / "checkpoints", options=options)


def _step_path(manager, step: int) -> pathlib.Path:
  return pathlib.Path(manager.directory) / str(step)


def digest(state: TrainState) -> dict[str, str]:
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


def save(manager, step: int, state: TrainState, run: dict | None = None) -> None:
  """Writes ``state`` and its digest as the checkpoint of ``step``, with
  ``run`` (a JSON object: the config and the bests so far, see
  :func:`saved_run`) beside them if given."""
  items = {"state": ocp.args.StandardSave(state),
           "digest": ocp.args.JsonSave(digest(state))}
  if run is not None:
    items["run"] = ocp.args.JsonSave(run)
  saved = manager.save(step, args=ocp.args.Composite(**items))
  if not saved:  # Orbax skips, silently, a step not past its latest one
    raise RuntimeError(f"the checkpoint of step {step} was not written: "
                       f"{manager.directory} holds step {manager.latest_step()}")


def _first_line(error: Exception, limit: int = 200) -> str:
  text = (str(error).strip().splitlines() or [""])[0]
  text = text.split(" See full TensorStore details")[0]  # a long spec follows
  text = text if len(text) <= limit else text[:limit] + "..."
  return f"{type(error).__name__}: {text}" if text else type(error).__name__


def restore(manager, step: int, like: TrainState) -> TrainState:
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
  saved, found = restored.digest, digest(restored.state)
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


def saved_run(manager, step: int) -> dict | None:
  """The ``run`` object saved with the checkpoint of ``step``; None for a
  checkpoint written without one.

  Raises:
    CheckpointError: it does not read.
  """
  path = _step_path(manager, step)
  if not (path / "run").is_dir():
    return None
  try:
    run = manager.restore(step, args=ocp.args.Composite(
        run=ocp.args.JsonRestore())).run
  except Exception as error:  # Orbax and TensorStore raise many types
    raise CheckpointError(path, step, f"its run record does not read "
                          f"({_first_line(error)})") from error
  if not isinstance(run, dict):
    raise CheckpointError(path, step, "its run record is not a JSON object")
  return run


def restore_newest_good(manager, like: TrainState, workdir: pathlib.Path):
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
      state = restore(manager, step, like)
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
  with it.  (``experiments.train.load_checkpoint`` is this function.)

  Example::

    state = checkpoints.load_checkpoint(config.resolve("lenet300_mnist"),
                                        "runs/lenet300_mnist")
    state.params, state.masks

  Raises:
    FileNotFoundError: no checkpoint (of this step) in ``workdir``.
    CheckpointError: the checkpoint is corrupt, incomplete or of another
      config; the message names its path and step.
  """
  workdir = pathlib.Path(workdir).absolute()
  manager = checkpoint_manager(workdir)
  try:
    steps = manager.all_steps()
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {workdir / 'checkpoints'}")
    if step not in steps:
      raise FileNotFoundError(f"no checkpoint of step {step} in "
                              f"{workdir / 'checkpoints'} (steps: {list(steps)})")
    split = None
    if methods.get(config.method).shrinks:  # the shapes depend on the data
      split = data.load(config.dataset, "train", source_dir=config.source_dir,
                        tfds_dir=config.tfds_dir)
    return restore(manager, step, initial_state(config, split))
  finally:
    manager.close()
