"""The README's quick start is experiments/quickstart.py, and the examples run as printed.

The before-training and sharding examples are experiments/quickstart_before_training.py
and experiments/quickstart_sharding.py, which the guides show.
"""

import os
import pathlib
import re
import subprocess
import sys

_ROOT = pathlib.Path(__file__).resolve().parent.parent


def _blocks(language):
  text = (_ROOT / "README.md").read_text()
  return re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)


def test_quick_start_is_the_script():
  script = (_ROOT / "experiments" / "quickstart.py").read_text()
  assert _blocks("python")[0] == script


def test_nnx_quick_start_is_the_script_and_runs_as_printed():
  script = (_ROOT / "experiments" / "quickstart_nnx.py").read_text()
  assert _blocks("python")[1] == script
  result = subprocess.run(
      [sys.executable, "experiments/quickstart_nnx.py"],
      cwd=_ROOT, capture_output=True, text=True, timeout=300, check=True,
  )
  first, *table = result.stdout.splitlines()
  assert "sparsity 0.900" in first, result.stdout
  assert [line.split()[0] for line in table] == [
      "global", "hidden1/kernel", "hidden2/kernel", "out/kernel"]


def test_quick_start_runs_as_printed():
  result = subprocess.run(
      [sys.executable, "experiments/quickstart.py"],
      cwd=_ROOT, capture_output=True, text=True, timeout=300, check=True,
  )
  assert "sparsity 0.900" in result.stdout, result.stdout


def test_ci_runs_the_readme_test_command():
  commands = _blocks("bash")
  test_command = next(c for c in commands if "pytest" in c).strip()
  ci = (_ROOT / ".ci" / "run").read_text()
  assert test_command.split("&& ")[-1] in ci  # python -m pytest
  assert re.search(r"-e '\.\[([\w,]*,)?test(,[\w,]*)?\]'", ci)  # e.g. .[test,docs]


def test_main_job_is_a_preset():
  from experiments import config

  main_job = next(c for c in _blocks("bash") if "experiments.run" in c)
  preset = re.search(r"experiments\.run (\w+)", main_job).group(1)
  assert preset in config.PRESETS
  assert config.PRESETS[preset].sparsity == 0.9


def test_before_training_example_runs_as_printed():
  result = subprocess.run(
      [sys.executable, "experiments/quickstart_before_training.py"], cwd=_ROOT,
      capture_output=True, text=True, timeout=300, check=True,
  )
  assert result.stdout.splitlines() == ["()", "{'hidden': 16, 'out': 3}"]


def test_sharding_example_runs_as_printed_on_8_devices():
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "")
                      + " --xla_force_host_platform_device_count=8").strip()
  result = subprocess.run(
      [sys.executable, "experiments/quickstart_sharding.py"], cwd=_ROOT,
      capture_output=True, text=True, timeout=300, check=True, env=env,
  )
  spec, sparsity = result.stdout.strip().rsplit(" ", 1)
  assert spec == "P('fsdp', None)"
  assert float(sparsity) == round(0.9 * 1024 * 256) / (1024 * 256)


def test_readme_is_a_front_page_of_at_most_250_lines():
  lines = (_ROOT / "README.md").read_text().splitlines()
  assert len(lines) <= 250, len(lines)
  assert not re.search(r"\b(issue|session)s? ?#?\d", "\n".join(lines), re.IGNORECASE)
