"""Test-wide settings: promotion checks catch silent broadcasting and dtype bugs.

Rank promotion raises everywhere.  Strict dtype promotion is on for the
modules that test jaxprune's own code alone (``pytestmark =
pytest.mark.usefixtures("strict_dtypes")``); optax's optimizers themselves
rely on standard promotion, so tests that run them keep it.

One XLA compilation cache on disk serves the whole run: the xdist workers
and the processes the tests start (the experiment runner, the 8-device
tests), which inherit it through the environment.  Without it every
process compiles the same programs again: the runner, checkpoint and fault
tests took 310 s with 2 workers on this project's 2-core CPU, 158 s with
it.  A ``JAX_COMPILATION_CACHE_DIR`` set by the caller is used as it is.
The data sets the tests read (``data_dirs``) are prepared in one tfds
directory for the whole run in the same way.
"""

import os
import shutil
import tempfile

import hypothesis
import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")

_CACHE_DIR = "JAX_COMPILATION_CACHE_DIR"
_CACHE_OWNER = "JAXPRUNE_TESTS_OWN_XLA_CACHE"
_TFDS_DIR = "JAXPRUNE_TESTS_TFDS_DIR"
_TFDS_OWNER = "JAXPRUNE_TESTS_OWN_TFDS_DIR"


def pytest_configure(config):
  del config
  if not os.environ.get(_CACHE_DIR):  # the first process: xdist's controller
    os.environ[_CACHE_DIR] = tempfile.mkdtemp(prefix="jaxprune-tests-xla-")
    os.environ[_CACHE_OWNER] = str(os.getpid())
  if not os.environ.get(_TFDS_DIR):
    # One prepared copy of each data set for every worker and subprocess
    # (experiments.data.load is safe for processes preparing it at once).
    os.environ[_TFDS_DIR] = tempfile.mkdtemp(prefix="jaxprune-tests-tfds-")
    os.environ[_TFDS_OWNER] = str(os.getpid())
  # Every program, however quick to compile or small.
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
  jax.config.update("jax_compilation_cache_dir", os.environ[_CACHE_DIR])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", float(
      os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", int(
      os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"]))


def pytest_unconfigure(config):
  del config
  if os.environ.get(_CACHE_OWNER) == str(os.getpid()):
    shutil.rmtree(os.environ[_CACHE_DIR], ignore_errors=True)
  if os.environ.get(_TFDS_OWNER) == str(os.getpid()):
    shutil.rmtree(os.environ[_TFDS_DIR], ignore_errors=True)


def pytest_collection_modifyitems(config, items):
  """Puts the tests marked ``long_running(seconds)`` first, longest first,
  the rest in their order: pytest-xdist then starts the long ones on every
  worker at once instead of finishing the run with one of them alone."""
  del config

  def seconds(item) -> float:
    marker = item.get_closest_marker("long_running")
    return marker.args[0] if marker else 0

  items.sort(key=lambda item: -seconds(item))


hypothesis.settings.register_profile(
    "jaxprune", deadline=None, max_examples=40, derandomize=True
)
hypothesis.settings.load_profile("jaxprune")


@pytest.fixture
def strict_dtypes():
  with jax.numpy_dtype_promotion("strict"):
    yield


@pytest.fixture(scope="session")
def data_dirs():
  """The shared IDX files and a writable TFDS directory, one for the whole
  run: each data set is prepared and decoded once, not once per worker."""
  import pathlib

  source = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
  if not (source / "mnist").is_dir():
    pytest.skip(f"the shared data sets are not at {source}")
  return str(source), os.environ[_TFDS_DIR]


_SPLITS = {}


@pytest.fixture
def splits_read_once(monkeypatch):
  """``experiments.data.load`` memoised for the session: runs in this process
  read each split once (its arrays are read-only)."""
  from experiments import data

  load = data.load

  def load_once(name, split, **kwargs):
    key = (name, split, *sorted(kwargs.items()))
    if key not in _SPLITS:
      _SPLITS[key] = load(name, split, **kwargs)
    return _SPLITS[key]

  monkeypatch.setattr(data, "load", load_once)
