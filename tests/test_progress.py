"""A run's progress: a bar on a terminal, plain lines in a log (no carriage
returns), and the data preparation silent there too."""

import io
import os
import subprocess
import sys

from experiments.progress import Progress


class _Terminal(io.StringIO):
  def isatty(self):
    return True


def _record(step):
  return {"kind": "train", "step": step, "loss": 1.0 / step,
          "accuracy": step / 100, "sparsity": 0.5}


def _run(stream, steps=100, log_every=5, seconds_per_step=2.0, **kwargs):
  """``steps`` steps of ``seconds_per_step`` each on a fake clock, a training
  record every ``log_every`` steps."""
  now = [0.0]
  progress = Progress(steps, 0, "demo", stream=stream, interval=30.0,
                      clock=lambda: now[0], **kwargs)
  for done in range(1, steps + 1):
    now[0] += seconds_per_step
    if done % log_every == 0:
      progress.record(_record(done))
    progress.update(done)
  progress.close()


def test_a_log_gets_a_line_at_the_first_record_then_every_30_s_and_at_the_end():
  log = io.StringIO()
  _run(log)
  # Records at steps 5, 10, ... (10 s, 20 s, ...): the first, then the first
  # one 30 s or more after the last line, and the last step.
  want = [
      f"demo: step {s}/100, loss {1 / s:.4f}, accuracy {s / 100:.4f}, "
      f"sparsity 0.5000, {2 * s} s"
      for s in (5, 20, 35, 50, 65, 80, 95, 100)]
  assert log.getvalue() == "".join(line + "\n" for line in want)


def test_the_last_step_gets_a_line_without_a_record_of_its_own():
  log = io.StringIO()
  _run(log, steps=12, log_every=5, seconds_per_step=1.0)
  assert log.getvalue() == (
      "demo: step 5/12, loss 0.2000, accuracy 0.0500, sparsity 0.5000, 5 s\n"
      "demo: step 12/12, 12 s\n")


def test_a_terminal_gets_the_bar():
  terminal = _Terminal()
  _run(terminal)
  shown = terminal.getvalue()
  assert "\r" in shown and "100/100" in shown and "sparsity=0.500" in shown
  assert "demo: step" not in shown


def test_disabled_writes_nothing():
  for stream in (io.StringIO(), _Terminal()):
    _run(stream, enabled=False)
    assert stream.getvalue() == ""


def test_a_run_into_a_log_writes_lines_without_carriage_returns(data_dirs, tmp_path):
  # A fresh tfds directory: the data preparation runs too, whose bars used to
  # leave their frames and an unended line in the log.
  source, _ = data_dirs
  env = {**os.environ, "JAXPRUNE_DATA_DIR": source,
         "JAXPRUNE_TFDS_DIR": str(tmp_path / "tfds")}
  done = subprocess.run(
      [sys.executable, "-m", "experiments.run", "smoke", "--workdir",
       str(tmp_path / "run")],
      env=env, check=True, capture_output=True, text=True, timeout=600,
  )
  assert "\r" not in done.stdout and "\r" not in done.stderr
  assert "Dataset jaxprune_mnist downloaded and prepared" in done.stdout
  progress = [line for line in done.stderr.splitlines()
              if line.startswith("smoke: step ")]
  # Training records at steps 5, 10, 15, 20: the first, those 30 s apart
  # (none in a run this short, unless the machine is very slow) and the last.
  assert progress[0].startswith("smoke: step 5/20, loss ")
  assert progress[-1].startswith("smoke: step 20/20, loss ")
  assert 2 <= len(progress) <= 4
  assert len(done.stderr.splitlines()) <= 10, done.stderr
  assert len(done.stdout.splitlines()) == 5, done.stdout
