"""Stopping a run on SIGTERM (preemption) or SIGINT (Ctrl-C) at the end of
a step, its state saved.

Inside :class:`StopSignals` the first SIGTERM or SIGINT is only recorded
(:attr:`StopSignals.signum`): the training loop then finishes its step, lets
the checkpoint write in flight finish, saves the current step and raises
:class:`Stopped`; ``python -m experiments.run`` then exits with
``128 + signal`` (143 for SIGTERM, 130 for SIGINT), and ``--resume`` continues
from that step.  A second signal exits at once with that code, after one
line on stderr.

With several processes the handlers are not installed (the processes would
stop at different steps); a signal then ends each process at once.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

__all__ = ["StopSignals", "Stopped", "exit_code"]

SIGNALS = (signal.SIGTERM, signal.SIGINT)


def exit_code(signum: int) -> int:
  """The exit status after a stop by ``signum``: ``128 + signum``."""
  return 128 + signum


class Stopped(Exception):
  """The run stopped on a signal, its state saved at ``step``."""

  def __init__(self, signum: int, step: int, saved: bool):
    name = signal.Signals(signum).name
    what = (f"saved the checkpoint of step {step}; --resume continues from it"
            if saved else "no checkpoint was saved")
    super().__init__(f"stopped by {name} after step {step}: {what}")
    self.signum, self.step, self.saved = signum, step, saved


class StopSignals:
  """Records SIGTERM and SIGINT instead of dying of them (main thread only;
  elsewhere, or with ``enabled=False``, it does nothing)."""

  def __init__(self, enabled: bool = True):
    self.enabled = enabled and threading.current_thread() is threading.main_thread()
    self.signum: int | None = None
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    if self.signum is not None:  # a second signal: no more waiting
      print(f"error: {signal.Signals(signum).name} again: exiting at once",
            file=sys.stderr, flush=True)
      os._exit(exit_code(signum))
    self.signum = signum

  def __enter__(self):
    if self.enabled:
      for signum in SIGNALS:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}
    return False
