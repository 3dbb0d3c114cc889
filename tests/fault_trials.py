"""Fault trials: the runner killed at random moments, then resumed, ends
exactly where an uninterrupted run ends.

  python -m tests.fault_trials --trials 10 [--seed S] [--workdir DIR]

Runs ``python -m experiments.run`` once uninterrupted for reference, then
again in a subprocess that is killed with SIGKILL ``--trials`` times in a
row and restarted with ``--resume`` after each kill, then left to finish.
Half of the kills (in random order) fall during training, a random number
of steps after the restart; the other half during a checkpoint write, as
soon as Orbax's temporary directory appears (plus a random delay of up to
20 ms).  After every kill each checkpoint on disk is restored; at the end
the final train state (params, masks, optimizer state) must equal the
reference bitwise and the metrics log must equal the reference's.  Prints
one line per trial and a summary; exits with 1 if a check fails.

The runs share a JAX compilation cache in the work directory, so restarts
skip compilation.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

# Checkpoints every 2 steps, one log record per step; masks change every 4
# steps from 4 to 32.
OVERRIDES = ("name=fault_trials", "steps=48", "batch_size=64", "begin_step=4",
             "end_step=32", "frequency=4", "log_every=1", "eval_every=0",
             "checkpoint_every=2")
_TMP = ".orbax-checkpoint-tmp"
_POLL_S = 0.001


@dataclasses.dataclass
class Trial:
  """What one kill did."""

  phase: str  # "training" or "checkpoint write"
  resumed_from: int
  killed_after_s: float
  step_reached: int  # the last step in the metrics log when killed
  checkpoints: list[int]  # finished checkpoints on disk after the kill
  unfinished: list[str]  # Orbax temporary directories left by the kill
  bad: dict[int, str]  # checkpoints on disk that do not restore
  finished: bool = False  # the run ended before the kill

  def line(self, number: int) -> str:
    where = {"training": "during training",
             "checkpoint write": "during a checkpoint write"}[self.phase]
    left = f", unfinished {self.unfinished}" if self.unfinished else ""
    restores = (f"NOT RESTORING {sorted(self.bad)}" if self.bad
                else "all restore")
    ended = " (the run had finished)" if self.finished else ""
    return (f"trial {number:2d}: killed after {self.killed_after_s:5.2f} s "
            f"{where}{ended}; resumed from step {self.resumed_from}, reached "
            f"step {self.step_reached}; checkpoints on disk "
            f"{self.checkpoints}{left}, {restores}")


def runner(workdir: pathlib.Path, overrides=OVERRIDES) -> list[str]:
  """The command line of a resumed run in ``workdir``."""
  sets = [arg for o in overrides for arg in ("--set", o)]
  return [sys.executable, "-m", "experiments.run", "smoke", *sets,
          "--workdir", str(workdir), "--resume", "--no-progress"]


def environment(root: pathlib.Path) -> dict[str, str]:
  """This environment, plus a JAX compilation cache shared by the runs."""
  return {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(root / "jax_cache"),
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
          "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def run_to_end(workdir: pathlib.Path, env: dict[str, str], log: pathlib.Path,
               overrides=OVERRIDES, timeout_s: float = 600.0) -> None:
  """Runs (or resumes) the run in ``workdir`` to its end."""
  with open(log, "a") as stream:
    code = subprocess.run(runner(workdir, overrides), env=env, stdout=stream,
                          stderr=subprocess.STDOUT, timeout=timeout_s).returncode
  if code:
    tail = "\n".join(log.read_text().splitlines()[-20:])
    raise RuntimeError(f"the run in {workdir} failed ({code}); {log} ends:\n{tail}")


def logged_step(workdir: pathlib.Path) -> int:
  """The step of the last complete record of the metrics log (0 if none)."""
  try:
    text = (workdir / "metrics.jsonl").read_text()
  except FileNotFoundError:
    return 0
  lines = text.splitlines() if text.endswith("\n") else text.splitlines()[:-1]
  return json.loads(lines[-1])["step"] if lines else 0


def on_disk(workdir: pathlib.Path) -> tuple[list[int], list[str]]:
  """The finished checkpoint steps and Orbax's temporary directories."""
  try:
    names = os.listdir(workdir / "checkpoints")
  except FileNotFoundError:
    return [], []
  return (sorted(int(n) for n in names if n.isdigit()),
          sorted(n for n in names if _TMP in n))


def unrestorable(config, workdir: pathlib.Path) -> dict[int, str]:
  """The checkpoints on disk that ``load_checkpoint`` refuses, with why."""
  from experiments import train  # pylint: disable=g-import-not-at-top

  bad = {}
  for step in on_disk(workdir)[0]:
    try:
      train.load_checkpoint(config, workdir, step=step)
    except train.CheckpointError as error:
      bad[step] = str(error)
  return bad


def _kill(process: subprocess.Popen, workdir: pathlib.Path, phase: str,
          rng: np.random.Generator, started: float, timeout_s: float):
  """Kills ``process`` in ``phase``; True if it had finished before."""
  start_step = logged_step(workdir)
  target_step = start_step + int(rng.integers(1, 7))
  delay_s = rng.uniform(0.0, 0.05 if phase == "training" else 0.02)
  seen = set(on_disk(workdir)[1])  # left by an earlier kill
  while process.poll() is None:
    if time.perf_counter() - started > timeout_s:
      process.kill()
      raise TimeoutError(f"the run in {workdir} made no progress in "
                         f"{timeout_s:.0f} s")
    if phase == "training":
      ready = logged_step(workdir) >= target_step
    else:
      ready = bool(set(on_disk(workdir)[1]) - seen)
    if ready:
      time.sleep(delay_s)
      process.kill()
      process.wait()
      return False
    time.sleep(_POLL_S)
  return True


def run(trials: int, seed: int, root: pathlib.Path, overrides=OVERRIDES,
        reference: pathlib.Path | None = None, out=print,
        timeout_s: float = 600.0) -> list[Trial]:
  """Runs the reference and the trials in ``root``; see the module docstring.

  Args:
    trials: kills in a row.
    seed: seeds the phases and moments of the kills.
    root: the work directory of the runs.
    overrides: ``key=value`` changes to the ``smoke`` preset.
    reference: the work directory of a finished run of this config, instead
      of running one.
    out: prints a line.
    timeout_s: the longest a run may go without being killed or finishing.

  Returns:
    What each kill did.

  Raises:
    AssertionError: a checkpoint does not restore, or the final state or
      metrics log differ from the reference's.
  """
  import jax  # pylint: disable=g-import-not-at-top

  from experiments import config as config_lib  # pylint: disable=g-import-not-at-top
  from experiments import train  # pylint: disable=g-import-not-at-top

  config = config_lib.resolve("smoke", list(overrides))
  env, faulty = environment(root), root / "faulty"
  shutil.rmtree(faulty, ignore_errors=True)
  (root / "faulty.log").unlink(missing_ok=True)
  began = time.perf_counter()
  if reference is None:
    reference = root / "reference"
    shutil.rmtree(reference, ignore_errors=True)
    run_to_end(reference, env, root / "reference.log", overrides, timeout_s)
    out(f"reference: {config.steps} steps uninterrupted in "
        f"{time.perf_counter() - began:.0f} s")

  rng = np.random.default_rng(seed)
  phases = ["training", "checkpoint write"] * ((trials + 1) // 2)
  phases = [str(p) for p in rng.permutation(phases[:trials])]
  results = []
  for number, phase in enumerate(phases, 1):
    resumed_from = max(on_disk(faulty)[0], default=0)
    started = time.perf_counter()
    with open(root / "faulty.log", "a") as log:
      process = subprocess.Popen(runner(faulty, overrides), env=env,
                                 stdout=log, stderr=subprocess.STDOUT)
      finished = _kill(process, faulty, phase, rng, started, timeout_s)
    checkpoints, unfinished = on_disk(faulty)
    trial = Trial(phase, resumed_from, time.perf_counter() - started,
                  logged_step(faulty), checkpoints, unfinished,
                  unrestorable(config, faulty), finished)
    results.append(trial)
    out(trial.line(number))
    if finished:
      break

  run_to_end(faulty, env, root / "faulty.log", overrides, timeout_s)
  final_checkpoints, final_unfinished = on_disk(faulty)
  final_bad = unrestorable(config, faulty)
  expected = train.load_checkpoint(config, reference)
  got = train.load_checkpoint(config, faulty)
  leaves = list(zip(jax.tree.leaves_with_path(expected), jax.tree.leaves(got)))
  differ = [jax.tree_util.keystr(path) for (path, x), y in leaves
            if not np.array_equal(np.asarray(x), np.asarray(y))]
  same_log = ((reference / "metrics.jsonl").read_text()
              == (faulty / "metrics.jsonl").read_text())
  kills = [t for t in results if not t.finished]
  in_writes = [t for t in kills if t.phase == "checkpoint write"]
  out(f"summary: {len(kills)} kills ({len(kills) - len(in_writes)} during "
      f"training, {len(in_writes)} during a checkpoint write, "
      f"{sum(bool(t.unfinished) for t in in_writes)} of which left an "
      f"unfinished write); resumed to step {int(got.step)}; final state "
      f"{'equals' if not differ else 'DIFFERS FROM'} the reference bitwise "
      f"({len(leaves) - len(differ)} of {len(leaves)} arrays, params and masks "
      f"included); metrics log {'equal' if same_log else 'DIFFERENT'}; "
      f"checkpoints on disk {final_checkpoints}"
      f"{f' + unfinished {final_unfinished}' if final_unfinished else ''}, "
      f"{'all restore' if not final_bad else f'NOT RESTORING {sorted(final_bad)}'}"
      f"; {time.perf_counter() - began:.0f} s")
  bad = {n: t.bad for n, t in enumerate(results, 1) if t.bad}
  assert not bad, f"checkpoints that do not restore after trials {bad}"
  assert not final_bad, f"checkpoints that do not restore at the end: {final_bad}"
  assert not differ, f"the final state differs from the reference in {differ}"
  assert same_log, "the metrics log differs from the reference's"
  return results


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m tests.fault_trials",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("--trials", type=int, default=10, help="kills in a row")
  parser.add_argument("--seed", type=int, default=0,
                      help="seeds the phases and moments of the kills")
  parser.add_argument("--workdir", help="where the runs go (default: a "
                      "temporary directory, removed at the end)")
  args = parser.parse_args(argv)
  root = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="fault_trials_"))
  root = root.absolute()
  root.mkdir(parents=True, exist_ok=True)
  try:
    run(args.trials, args.seed, root, out=lambda line: print(line, flush=True))
  except AssertionError as error:
    print(f"FAILED: {error}", file=sys.stderr)
    return 1
  finally:
    if not args.workdir:
      shutil.rmtree(root, ignore_errors=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
