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


def test_the_constrained_reproduction_rescales_the_gated_weights():
  # Gallego-Posada et al.'s code divides the weights by 1 - d0 when it
  # makes the gates: on in every cell of experiments.constrained.
  import jax.numpy as jnp
  import numpy as np

  from experiments import constrained
  from experiments import methods

  cells = constrained.cells(None, [0])
  assert cells and all(c.rescale_gated_weights for c in cells)
  assert not config.Config().rescale_gated_weights
  mlp = next(c for c in cells if c.model == "lenet300100")
  params = {"Dense_0": {"kernel": jnp.ones((4, 3)), "bias": jnp.ones(3)},
            "Dense_1": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}}
  gated = methods.get(mlp.method).init_params(mlp, params)
  # d0 = 0.2 for the MLP's input layer, 0.5 elsewhere.
  np.testing.assert_allclose(gated["Dense_0"]["kernel"], 1 / 0.8, rtol=1e-6)
  np.testing.assert_allclose(gated["Dense_1"]["kernel"], 2.0)
  np.testing.assert_array_equal(gated["Dense_1"]["bias"], 1.0)
  assert "log_alpha" in gated["Dense_1"]
