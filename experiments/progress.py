"""The progress of a run: a bar on a terminal, plain lines in a log.

On a terminal :class:`Progress` draws a tqdm bar.  In a file or a pipe (a
run's output redirected to a log) a bar would be hundreds of
carriage-return frames on one line, so there it writes a plain line
instead: at the first logged training record, then at the first record
after every ``interval`` seconds, and at the last step.

Example:
  >>> import io
  >>> from experiments.progress import Progress
  >>> log = io.StringIO()  # not a terminal
  >>> times = iter(range(0, 100, 10))  # a clock: 10 s per call
  >>> progress = Progress(3, 0, "demo", stream=log, interval=15,
  ...                     clock=lambda: next(times))
  >>> for step in (1, 2, 3):
  ...   progress.record({"step": step, "loss": 1.0 / step, "accuracy": 0.5,
  ...                    "sparsity": 0.0})
  ...   progress.update(step)
  >>> progress.close()
  >>> print(log.getvalue(), end="")
  demo: step 1/3, loss 1.0000, accuracy 0.5000, sparsity 0.0000, 10 s
  demo: step 3/3, loss 0.3333, accuracy 0.5000, sparsity 0.0000, 30 s
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import IO

import tqdm

__all__ = ["Progress", "is_terminal"]


def is_terminal(stream: IO[str]) -> bool:
  """Whether ``stream`` is a terminal (False for files, pipes and streams
  without ``isatty``)."""
  isatty = getattr(stream, "isatty", None)
  return bool(isatty and isatty())


class Progress:
  """A run's progress on ``stream`` (stderr by default).

  Args:
    total: the run's last step.
    initial: the step it starts from (a resumed run's).
    name: the run's name, at the start of the bar or of each line.
    enabled: False writes nothing.
    stream: where to write; a bar if it is a terminal, lines otherwise.
    interval: the least seconds between two lines (the last step's line
      comes whatever the time).
    clock: seconds, for the intervals and the elapsed time in the lines.
  """

  def __init__(self, total: int, initial: int, name: str, *,
               enabled: bool = True, stream: IO[str] | None = None,
               interval: float = 30.0,
               clock: Callable[[], float] = time.monotonic):
    self._stream = sys.stderr if stream is None else stream
    self._total, self._name = total, name
    self._interval, self._clock = interval, clock
    self._started = clock()
    self._last_line: float | None = None
    self._record: dict | None = None
    self._fresh = False  # a record not written yet
    self._bar = None
    self._lines = enabled and not is_terminal(self._stream)
    if enabled and not self._lines:
      self._bar = tqdm.tqdm(total=total, initial=initial, file=self._stream,
                            desc=name, unit="step", dynamic_ncols=True)

  def record(self, record: dict) -> None:
    """The latest training record (``step``, ``loss``, ``accuracy``,
    ``sparsity``)."""
    self._record, self._fresh = record, True
    if self._bar is not None:
      self._bar.set_postfix(loss=f"{record['loss']:.3f}",
                            acc=f"{record['accuracy']:.3f}",
                            sparsity=f"{record['sparsity']:.3f}")

  def update(self, done: int) -> None:
    """Step ``done`` is finished."""
    if self._bar is not None:
      self._bar.update(1)
      return
    if not self._lines:
      return
    now = self._clock()
    due = self._fresh and (self._last_line is None
                           or now - self._last_line >= self._interval)
    if due or done == self._total:
      self._write(done, now)

  def _write(self, done: int, now: float) -> None:
    parts = [f"{self._name}: step {done}/{self._total}"]
    if self._record is not None and self._record["step"] == done:
      parts += [f"loss {self._record['loss']:.4f}",
                f"accuracy {self._record['accuracy']:.4f}",
                f"sparsity {self._record['sparsity']:.4f}"]
    parts.append(f"{now - self._started:.0f} s")
    self._stream.write(", ".join(parts) + "\n")
    self._stream.flush()
    self._last_line, self._fresh = now, False

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
