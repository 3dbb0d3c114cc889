"""Test-wide settings: promotion checks catch silent broadcasting and dtype bugs.

Rank promotion raises everywhere.  Strict dtype promotion is on for the
modules that test jaxprune's own code alone (``pytestmark =
pytest.mark.usefixtures("strict_dtypes")``); optax's optimizers themselves
rely on standard promotion, so tests that run them keep it.
"""

import hypothesis
import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")

hypothesis.settings.register_profile(
    "jaxprune", deadline=None, max_examples=40, derandomize=True
)
hypothesis.settings.load_profile("jaxprune")


@pytest.fixture
def strict_dtypes():
  with jax.numpy_dtype_promotion("strict"):
    yield


@pytest.fixture(scope="session")
def data_dirs(tmp_path_factory):
  """The shared IDX files and a writable TFDS directory, prepared once."""
  import pathlib

  source = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
  if not (source / "mnist").is_dir():
    pytest.skip(f"the shared data sets are not at {source}")
  return str(source), str(tmp_path_factory.mktemp("tfds"))


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
