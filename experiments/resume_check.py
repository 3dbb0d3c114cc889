"""What a resumed run may change: its length and its bookkeeping, nothing
that changes what it trains.

Every checkpoint carries the config that wrote it
(``experiments.checkpoints.saved_run``); ``--resume`` with a config that
differs in another field is refused (:class:`ConfigMismatch`), naming each
differing field with its old and new values.

Example:
  >>> from experiments import config, resume_check
  >>> old = config.to_dict(config.PRESETS["smoke"])
  >>> resume_check.differences(old, config.resolve("smoke", ["steps=40"]))
  []
  >>> resume_check.differences(old, config.resolve("smoke", ["sparsity=0.5"]))
  ['sparsity: 0.9 -> 0.5']
"""

from __future__ import annotations

import dataclasses
import pathlib

from experiments.config import Config

__all__ = ["CHANGEABLE", "ConfigMismatch", "check", "differences"]

# Fields a resumed run may change: the run's length (see _steps_problems),
# how often it logs, evaluates and checkpoints, and where its data is read.
CHANGEABLE = ("steps", "log_every", "eval_every", "eval_batch_size",
              "checkpoint_every", "source_dir", "tfds_dir")


class ConfigMismatch(ValueError):
  """A run resumed with a config that trains something else."""


def _steps_problems(old: Config, new: Config) -> list[str]:
  """Why the run's length cannot change: what else it changes."""
  problems = []
  if new.method != "dense" and old.pruning_end_step() != new.pruning_end_step():
    problems.append(f"the pruning would end at step {new.pruning_end_step()}, "
                    f"not {old.pruning_end_step()} (end_step 0 is three "
                    "quarters of the run; set end_step)")
  if new.lr_schedule != "constant":
    problems.append(f"the {new.lr_schedule} learning-rate schedule follows "
                    "the run's length")
  bounds = (255, 65535)  # FlipOut counts flips in uint8, uint16 or int32
  if new.method == "flipout" and any((old.steps <= b) != (new.steps <= b)
                                     for b in bounds):
    problems.append("FlipOut's flip counters would change their dtype "
                    "(uint8 up to 255 steps, uint16 up to 65535)")
  return problems


def differences(saved: dict, config: Config) -> list[str]:
  """The fields in which ``config`` differs from ``saved`` (a config as
  ``experiments.config.to_dict`` gives it) in a way a resumed run may not,
  as ``field: old -> new``; fields ``saved`` lacks count as their default."""
  changed, defaults = [], Config()
  for field in dataclasses.fields(Config):
    new = getattr(config, field.name)
    old = saved.get(field.name, getattr(defaults, field.name))
    if old != new and field.name not in CHANGEABLE:
      changed.append(f"{field.name}: {old!r} -> {new!r}")
  if not changed and saved.get("steps", config.steps) != config.steps:
    known = {f.name for f in dataclasses.fields(Config)}
    old = dataclasses.replace(
        config, **{k: v for k, v in saved.items() if k in known})
    changed += [f"steps: {old.steps} -> {config.steps}: {problem}"
                for problem in _steps_problems(old, config)]
  return changed


def check(saved: dict, config: Config, path: pathlib.Path, step: int) -> None:
  """Raises :class:`ConfigMismatch` if ``config`` may not resume from the
  checkpoint of ``step`` at ``path``, written by the config ``saved``."""
  changed = differences(saved, config)
  if changed:
    raise ConfigMismatch(
        f"--resume: the checkpoint of step {step} at {path} was written with "
        f"another config; differing: {'; '.join(changed)} (a resumed run may "
        f"change only {', '.join(CHANGEABLE)}; use another --workdir, or "
        "--overwrite to start afresh)")
