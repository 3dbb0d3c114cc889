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


@pytest.mark.parametrize("fields, message", [
    ({"steps": "20"}, "field steps must be an int, got the str '20'"),
    ({"steps": True}, "field steps must be an int, got the bool True"),
    ({"steps": 20.5}, "field steps must be an int, got the float 20.5"),
    ({"sparsity": "0.9"}, "field sparsity must be a float, got the str '0.9'"),
    ({"snip_it_step_gradient": 1},
     "field snip_it_step_gradient must be a bool, got the int 1"),
    ({"source_dir": 3}, "field source_dir must be a str or null, got the int 3"),
    ({"name": None}, "field name must be a str, got the NoneType None"),
], ids=["str for int", "bool for int", "float for int", "str for float",
        "int for bool", "int for optional str", "null for str"])
def test_json_config_types_are_checked(tmp_path, fields, message):
  path = tmp_path / "c.json"
  path.write_text(json.dumps(fields))
  with pytest.raises(ValueError, match=f"^{path}: {message}$"):
    config.resolve(str(path))


def test_json_config_ints_for_floats_and_nulls(tmp_path):
  path = tmp_path / "c.json"
  path.write_text(json.dumps({"sparsity": 1, "learning_rate": 0.01,
                              "tfds_dir": None}))
  c = config.resolve(str(path))
  assert (c.sparsity, type(c.sparsity), c.tfds_dir) == (1.0, float, None)


def test_a_json_config_that_is_not_an_object_or_not_json(tmp_path):
  path = tmp_path / "c.json"
  path.write_text("[1, 2]")
  with pytest.raises(ValueError, match="a JSON config is an object of fields, not a list"):
    config.resolve(str(path))
  path.write_text("{steps: 3}")
  with pytest.raises(ValueError, match=f"^{path}: not JSON"):
    config.resolve(str(path))


@pytest.mark.parametrize("name, problem", [
    ("../../../x", "it holds a path separator"),
    ("/tmp/x", "it holds a path separator"),
    ("..", "it names a parent or the current directory"),
    ("", "it is empty"),
    ("a\\\\b", "it holds a path separator"),
])
def test_names_that_would_leave_runs_are_refused(name, problem):
  with pytest.raises(ValueError, match=f"cannot name a work directory under runs/: {problem}"):
    config.resolve("smoke", [f"name={name}"])
  assert config.resolve("smoke", ["name=my-run_2.b"]).name == "my-run_2.b"
