"""Checkpoint writes that stop the run at the first one that fails.

Orbax writes a checkpoint in background threads; a write that fails there
(a read-only or full disk) is only logged, and training would go on without
checkpoints.  :class:`Writer` checks the write in flight after every step and
raises :class:`CheckpointWriteError`, naming the path and the cause, as soon
as one has failed; no other write is started after it, so the checkpoints
written before stay as they were.
"""

from __future__ import annotations

import pathlib

from experiments import checkpoints
from experiments.state import TrainState

__all__ = ["CheckpointWriteError", "Writer"]


class CheckpointWriteError(OSError):
  """A checkpoint could not be written.

  Attributes:
    path: the checkpoint's directory.
    step: its step.
    written: the step of the newest checkpoint written before, or None.
  """

  def __init__(self, path: pathlib.Path, step: int, written: int | None,
               cause: BaseException):
    before = ("no checkpoint was written before it" if written is None else
              f"the newest checkpoint written is step {written} (--resume "
              "continues from it)")
    super().__init__(f"the checkpoint of step {step} could not be written to "
                     f"{path}: {_cause(cause)}; {before}")
    self.path, self.step, self.written = path, step, written


def _cause(error: BaseException, limit: int = 300) -> str:
  while error.__cause__ is not None and not str(error).strip():
    error = error.__cause__
  text = (str(error).strip().splitlines() or [""])[0]
  text = text if len(text) <= limit else text[:limit] + "..."
  return f"{type(error).__name__}: {text}" if text else type(error).__name__


class Writer:
  """Saves checkpoints with ``manager`` (an Orbax ``CheckpointManager``) and
  surfaces the first failed write."""

  def __init__(self, manager):
    self.manager = manager
    self.pending: int | None = None  # the step of the write in flight
    self.written: int | None = manager.latest_step()
    self.failed = False

  def _fail(self, step: int, error: BaseException):
    self.failed = True
    path = pathlib.Path(self.manager.directory) / str(step)
    raise CheckpointWriteError(path, step, self.written, error) from error

  def check(self, wait: bool = False) -> None:
    """Raises :class:`CheckpointWriteError` if the write in flight has
    failed; with ``wait``, waits for it first."""
    if self.pending is None:
      return
    if not wait and self.manager.is_saving_in_progress():
      return
    step, self.pending = self.pending, None
    try:
      self.manager.wait_until_finished()
    except Exception as error:  # Orbax and the file system raise many types
      self._fail(step, error)
    self.written = step

  def save(self, step: int, state: TrainState, run: dict | None = None) -> None:
    """Starts writing ``state`` (and ``run``) as the checkpoint of ``step``,
    once the write in flight has finished well."""
    self.check(wait=True)
    try:
      checkpoints.save(self.manager, step, state, run)
    except Exception as error:  # Orbax and the file system raise many types
      self._fail(step, error)
    self.pending = step

  def finish(self) -> None:
    """Waits for the write in flight; closes the manager."""
    self.check(wait=True)
    self.manager.close()
