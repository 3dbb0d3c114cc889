"""Experiment configs: presets, JSON files and overrides."""

import json

import pytest

from experiments import config


def test_overrides_are_typed():
  c = config.resolve("smoke", ["sparsity=0.5", "steps=7", "source_dir=none",
                               "method=random"])
  assert (c.sparsity, c.steps, c.source_dir, c.method) == (0.5, 7, None, "random")


def test_json_file(tmp_path):
  path = tmp_path / "c.json"
  path.write_text(json.dumps({"name": "mine", "steps": 3, "dataset": "fashion_mnist"}))
  c = config.resolve(str(path), ["batch_size=64"])
  assert (c.name, c.steps, c.dataset, c.batch_size) == ("mine", 3, "fashion_mnist", 64)


@pytest.mark.parametrize(
    "name, overrides, message",
    [
        ("nope", [], "neither a preset"),
        ("smoke", ["steps"], "key=value"),
        ("smoke", ["stepz=3"], "unknown config field 'stepz'"),
        ("smoke", ["steps=many"], "expected a int"),
    ],
)
def test_bad_configs(name, overrides, message):
  with pytest.raises(ValueError, match=message):
    config.resolve(name, overrides)


def test_pruning_end_defaults_to_three_quarters():
  assert config.Config(steps=100).pruning_end_step() == 75
  assert config.Config(steps=100, end_step=40).pruning_end_step() == 40
