"""Experiment configurations: a dataclass, named presets, and overrides.

A run is described by one :class:`Config`.  ``python -m experiments.run``
takes a preset name from :data:`PRESETS` or a JSON file, then ``key=value``
overrides, e.g. ``--set sparsity=0.95 --set steps=2000``.

Example:
  >>> from experiments import config
  >>> c = config.resolve("lenet300_mnist", ["sparsity=0.95", "method=random"])
  >>> (c.model, c.dataset, c.sparsity, c.method)
  ('lenet300100', 'mnist', 0.95, 'random')
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import typing
from collections.abc import Sequence

from experiments import config_checks


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything that defines a run; two runs with equal configs are equal."""

  name: str = "custom"
  dataset: str = "mnist"
  model: str = "lenet300100"
  # Training.
  steps: int = 1000
  batch_size: int = 128
  optimizer: str = "adam"  # adam | adamw | sgd
  learning_rate: float = 1e-3
  lr_schedule: str = "constant"  # constant | cosine | step (/10 at 43%, 71%)
  momentum: float = 0.9
  weight_decay: float = 0.0
  seed: int = 0
  # The model's Flax API: linen (experiments.models) or nnx (its twin in
  # experiments.nnx_models; params named after the NNX attributes).
  flax_api: str = "linen"  # linen | nnx
  # Pruning.
  method: str = "magnitude"  # see experiments.methods.METHODS
  sparsity: float = 0.9
  schedule: str = "polynomial"  # polynomial | one_shot | constant | geometric
  begin_step: int = 0
  end_step: int = 0  # 0: three quarters of the run
  frequency: int = 100
  allocation: str = "global"
  # What magnitude, random and saliency keep or remove whole
  # (jaxprune.structures): "" single weights, "n_of_m:2:4", "block:4x4" or
  # "channels".  Kernels the structure cannot tile are left dense, and so is
  # the output layer under "channels" (pruning it would remove classes).
  structure: str = ""
  # Geometric schedule and FlipOut: every `prune_every` steps remove `rate`
  # of the surviving weights, until `sparsity`.
  prune_every: int = 0  # 0: one epoch of MNIST at this batch size
  rate: float = 0.5
  flipout_p: float = 2.0
  noise: float = 1.0
  # Before training (snip, snip_it, grasp, synflow) and SNIP-it during
  # training (snip_it_during): batches of the sensitivity, halvings.
  init_batches: int = 5
  init_batch_size: int = 512
  rounds: int = 5  # SNIP-it's S: the geometric rounds after the first
  # snip_it_during: rank by |g * w| of the train step's own batch inside the
  # update, instead of the authors' init_batches fresh batches in
  # evaluation mode at each event (methods.between_steps).
  snip_it_step_gradient: bool = False
  synflow_rounds: int = 100
  # L0 gates (methods l0_constrained and l0_penalty; experiments.constrained).
  gates: str = "unit"  # unit (input neurons and filters) | weight
  drop_rate: float = 0.5  # initial d0: log_alpha ~ N(log((1 - d0) / d0), 0.01)
  input_drop_rate: float = 0.2  # d0 of an MLP's first layer (Louizos et al.)
  # add_gates(rescale_weights=...): gated weights divided by 1 - d0 when the
  # gates are made (Gallego-Posada et al.'s code; Louizos et al.'s does not).
  rescale_gated_weights: bool = False
  density_target: float = 0.5  # l0_constrained: expected density <= target
  density_scope: str = "model"  # model | layer
  dual_lr: float = 1e-4
  gate_learning_rate: float = 0.0  # log_alpha's own Adam step; 0: learning_rate
  penalty: float = 0.1  # l0_penalty: lambda; the loss gets lambda / N_train * E[L0]
  # Projected gradient (methods project_l1, project_l21): every kernel is
  # projected onto its own ball of this radius after each step.
  radius: float = 100.0
  # Bookkeeping.
  log_every: int = 50
  eval_every: int = 500  # 0: only at the end
  eval_batch_size: int = 1000
  checkpoint_every: int = 500  # 0: only at the end
  # Data locations; None: the environment (JAXPRUNE_DATA_DIR,
  # JAXPRUNE_TFDS_DIR) or the defaults of experiments.data.
  source_dir: str | None = None
  tfds_dir: str | None = None

  def pruning_end_step(self) -> int:
    return self.end_step or max(self.begin_step + 1, (3 * self.steps) // 4)

  def pruning_period(self) -> int:
    return self.prune_every or 60000 // self.batch_size


_EPOCH = 60000 // 128  # 468 steps of batch 128 on MNIST

PRESETS: dict[str, Config] = {
    # The main job: LeNet-300-100 on MNIST, gradual magnitude pruning to 90%.
    "lenet300_mnist": Config(
        name="lenet300_mnist", steps=20 * _EPOCH, begin_step=_EPOCH,
        end_step=12 * _EPOCH, frequency=100, eval_every=2 * _EPOCH,
        checkpoint_every=4 * _EPOCH,
    ),
    # Its dense baseline, same length.
    "lenet300_mnist_dense": Config(
        name="lenet300_mnist_dense", method="dense", sparsity=0.0,
        steps=20 * _EPOCH, eval_every=2 * _EPOCH, checkpoint_every=4 * _EPOCH,
    ),
    "lenet5_fashion": Config(
        name="lenet5_fashion", dataset="fashion_mnist", model="lenet5",
        steps=20 * _EPOCH, begin_step=_EPOCH, end_step=12 * _EPOCH,
        eval_every=2 * _EPOCH, checkpoint_every=4 * _EPOCH,
    ),
    # A few steps, for smoke tests.
    "smoke": Config(
        name="smoke", steps=20, begin_step=5, end_step=15, frequency=5,
        log_every=5, eval_every=10, checkpoint_every=10, eval_batch_size=2000,
    ),
}


def _parse_value(field: dataclasses.Field, text: str):
  hint = typing.get_type_hints(Config)[field.name]
  if text.lower() in ("none", "null") and type(None) in typing.get_args(hint):
    return None
  base = next((t for t in typing.get_args(hint) if t is not type(None)), hint)
  try:
    if base is bool:
      if text.lower() not in ("true", "false", "1", "0"):
        raise ValueError(text)
      return text.lower() in ("true", "1")
    return base(text)
  except ValueError:
    raise ValueError(
        f"override {field.name}={text!r}: expected a {base.__name__}"
    ) from None


def apply_overrides(config: Config, overrides: Sequence[str]) -> Config:
  """Applies ``key=value`` strings, converted to each field's type."""
  fields = {f.name: f for f in dataclasses.fields(Config)}
  changes = {}
  for item in overrides:
    key, sep, value = item.partition("=")
    if not sep:
      raise ValueError(f"override {item!r} is not of the form key=value")
    if key not in fields:
      raise ValueError(f"unknown config field {key!r}; fields: {sorted(fields)}")
    changes[key] = _parse_value(fields[key], value)
  return dataclasses.replace(config, **changes)


def resolve(name_or_file: str, overrides: Sequence[str] = ()) -> Config:
  """A preset name or a JSON file of fields, then the overrides."""
  if name_or_file in PRESETS:
    base = PRESETS[name_or_file]
  elif pathlib.Path(name_or_file).is_file():
    try:
      fields = json.loads(pathlib.Path(name_or_file).read_text())
    except json.JSONDecodeError as error:
      raise ValueError(f"{name_or_file}: not JSON ({error})") from None
    if not isinstance(fields, dict):
      raise ValueError(f"{name_or_file}: a JSON config is an object of "
                       f"fields, not a {type(fields).__name__}")
    known = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(set(fields) - known)
    if unknown:
      raise ValueError(f"{name_or_file}: unknown config fields {unknown}")
    base = Config(**config_checks.typed_fields(Config, fields, name_or_file))
  else:
    raise ValueError(
        f"{name_or_file!r} is neither a preset ({sorted(PRESETS)}) nor a "
        "JSON config file"
    )
  config = apply_overrides(base, overrides)
  config_checks.check_name(config.name)
  return config


def to_dict(config: Config) -> dict:
  return dataclasses.asdict(config)
