"""The pruning methods of the experiments: one :class:`Method` record each.

String names live here, in the experiments, never in the library: the
registry :data:`METHODS` maps ``config.method`` to the record of everything
that method changes in a run (see :class:`Method`):

- ``transformation``: the jaxprune transformation around the plain optimizer;
- ``prune_at_init``: what it does to the initial network with training data
  (masks found before training, or a network shrunk by removing units);
- ``init_params`` and ``model_params``: the params it trains (gates added)
  and those the model is applied with (gates applied);
- ``train_metrics`` and ``report``: what it adds to the log and the summary.

The rest of the experiments read these fields; adding a method is adding a
record.

Example:
  >>> import optax
  >>> from experiments import config, methods
  >>> tx = methods.build(optax.adam(1e-3), config.PRESETS["smoke"])
  >>> type(tx).__name__
  'GradientTransformationExtraArgs'
  >>> methods.METHODS["snip"].needs_training_split, methods.METHODS["snap_it"].shrinks
  (True, True)
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from collections.abc import Iterator
from typing import Any
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

import jaxprune
from experiments import data
from experiments import networks
from experiments import reports
from experiments.config import Config

__all__ = [
    "GRASP_TEMPERATURE",
    "METHODS",
    "Method",
    "Pruned",
    "all_kept",
    "build",
    "geometric_schedule",
    "get",
]


class Pruned(NamedTuple):
  """The initial network after a method pruned it at initialisation.

  Attributes:
    model: the module to train (smaller than the config's if units went).
    params: its initial params (pruned weights zero).
    masks: the masks that training keeps, or None (no masks to keep).
  """

  model: nn.Module
  params: Any
  masks: Any


def _keep_params(config: Config, params: Any) -> Any:
  del config
  return params


def _same_params(config: Config, params: Any, step: jax.Array | None = None) -> Any:
  del config, step
  return params


def _no_event(config: Config, state, step: int, init_batch) -> Any:
  del config, step, init_batch
  return state


def _no_metrics(state) -> dict:
  del state
  return {}


def _connectivity(state, config: Config) -> dict:
  report = reports.connectivity_report(state, data.IMAGE_SHAPES[config.dataset])
  return {"connectivity": report} if report else {}


@dataclasses.dataclass(frozen=True)
class Method:
  """Everything a pruning method changes in a run of the experiments.

  Attributes:
    transformation: ``(inner, config, masks) -> transformation``: the
      optimizer that trains with this method around the plain ``inner`` one;
      ``masks`` are those of ``prune_at_init``, or :func:`all_kept` (a
      method without it, or a template to restore a checkpoint into).
    prune_at_init: ``(config, model, variables, batches) -> Pruned``, or
      None: what the method does to the initial network before training,
      with ``batches``, an endless stream of training batches.
    shrinks: ``prune_at_init`` removes units, so the shapes of the network
      trained depend on the training data: restoring a checkpoint needs the
      training split too.
    init_params: ``(config, params) -> params``: the params to train (e.g.
      with L0 gates added).
    model_params: ``(config, params, step) -> params``: the params the model
      is applied with at training ``step``, or at test time if ``step`` is
      None (e.g. with the gates applied).
    between_steps: ``(config, state, step, init_batch) -> state``: the train
      state before update ``step`` (e.g. with masks found between steps);
      ``init_batch(i)`` is the i-th batch of a stream of scoring batches of
      ``config.init_batch_size``, apart from the training stream.
    train_metrics: ``state -> dict``: entries added to each logged training
      record of ``metrics.jsonl``.
    report: functions ``(state, config) -> dict`` whose entries are added to
      ``summary.json`` at the end of the run, in order; by default the
      connectivity of the masks (if the run has masks and no batch norm).
    fields: the config fields that this method alone reads (beyond the
      sparsity, schedule and allocation that most methods share).
  """

  transformation: Callable[[optax.GradientTransformation, Config, Any],
                           optax.GradientTransformation]
  prune_at_init: Callable[[Config, nn.Module, Any, Iterator[dict]],
                          Pruned] | None = None
  shrinks: bool = False
  init_params: Callable[[Config, Any], Any] = _keep_params
  model_params: Callable[..., Any] = _same_params
  between_steps: Callable[[Config, Any, int, Callable[[int], dict]],
                          Any] = _no_event
  train_metrics: Callable[[Any], dict] = _no_metrics
  report: tuple[Callable[[Any, Config], dict], ...] = (_connectivity,)
  fields: tuple[str, ...] = ()

  @property
  def needs_training_split(self) -> bool:
    """Whether the initial state of a run depends on the training data."""
    return self.prune_at_init is not None

  def summary(self, state, config: Config) -> dict:
    """The entries of ``report`` for the final ``state`` of a run."""
    return {key: value for hook in self.report
            for key, value in hook(state, config).items()}


# ---------------------------------------------------------------------------
# During training: a criterion on a schedule.


def _schedule(config: Config) -> jaxprune.schedules.Schedule:
  if config.schedule == "polynomial":
    return jaxprune.schedules.polynomial(
        config.sparsity, config.begin_step, config.pruning_end_step(),
        config.frequency,
    )
  if config.schedule == "one_shot":
    return jaxprune.schedules.one_shot(config.sparsity, config.begin_step)
  if config.schedule == "constant":
    return jaxprune.schedules.constant(config.sparsity)
  if config.schedule == "geometric":
    return geometric_schedule(config)
  raise ValueError(
      f"unknown schedule {config.schedule!r}; expected polynomial, one_shot "
      "or constant"
  )


def geometric_schedule(config: Config) -> jaxprune.schedules.Schedule:
  """FlipOut's schedule for the baselines: every ``prune_every`` steps the
  sparsity becomes ``1 - (1 - rate)**k``, capped at ``config.sparsity``."""
  period, steps, sparsities, k = config.pruning_period(), [], [], 1
  while k * period < config.steps:
    target = min(1 - (1 - config.rate) ** k, config.sparsity)
    steps.append(k * period)
    sparsities.append(target)
    if target >= config.sparsity:
      break
    k += 1
  return jaxprune.schedules.piecewise(steps, sparsities)


def structure_of(config: Config) -> jaxprune.structures.Structure | None:
  """The structure ``config.structure`` names (None for single weights).

  Example:
    >>> from experiments.config import Config
    >>> structure_of(Config(structure="n_of_m:2:4"))
    n_of_m(2, 4)
    >>> structure_of(Config(structure="block:4x4"))
    block((4, 4), pool='mean')
  """
  text = config.structure
  kind, _, rest = text.partition(":")
  try:
    if not text:
      return None
    if kind == "n_of_m":
      n, m = (int(part) for part in rest.split(":"))
      return jaxprune.structures.n_of_m(n, m)
    if kind == "block":
      rows, cols = (int(part) for part in rest.split("x"))
      return jaxprune.structures.block((rows, cols))
    if kind == "channels" and not rest:
      return jaxprune.structures.channels()
  except ValueError as error:
    raise ValueError(f"structure {text!r}: {error}") from error
  raise ValueError(
      f"unknown structure {text!r}; expected '', 'n_of_m:N:M', "
      "'block:RxC' or 'channels'")


def structured_prunable(config: Config, structure):
  """The kernels that ``structure`` can tile, less the output layer (the
  kernel with one output per class) under channels."""
  del config

  def prunable(path, leaf) -> bool:
    if not (jnp.issubdtype(jnp.result_type(leaf), jnp.floating)
            and jnp.ndim(leaf) >= 2):
      return False
    if (isinstance(structure, jaxprune.structures.Pooled)
        and structure.block_shape is None
        and jnp.shape(leaf)[-1] == networks.CLASSES):
      return False
    try:
      structure.unit_count(path, tuple(jnp.shape(leaf)), "")
    except ValueError:
      return False
    return True

  return prunable


def _with_criterion(criterion) -> Method:
  def transformation(inner, config: Config, masks):
    del masks
    structure = structure_of(config)
    return jaxprune.prune(
        inner, criterion=criterion, schedule=_schedule(config),
        allocation=config.allocation, seed=config.seed, structure=structure,
        prunable=None if structure is None else structured_prunable(
            config, structure),
    )

  return Method(transformation, fields=("structure",))


def _flipout(inner, config: Config, masks):
  """FlipOut (Apostol et al. 2020): every ``prune_every`` steps, remove
  ``rate`` of the survivors by ``|w|^p / (flips + 1)``, until ``sparsity``."""
  del masks
  return jaxprune.flipout(
      inner, prune_every=config.pruning_period(), rate=config.rate,
      p=config.flipout_p, noise=config.noise, final_sparsity=config.sparsity,
      seed=config.seed, max_steps=config.steps,
  )


def _snip_it_schedule(config: Config) -> jaxprune.schedules.Schedule:
  return jaxprune.schedules.geometric(
      config.sparsity, config.begin_step, config.pruning_period(),
      config.rounds)


def _snip_it_during(inner, config: Config, masks):
  """SNIP-it during training (Verdenius et al. 2020): one geometric round
  every ``prune_every`` steps from ``begin_step``, until ``sparsity``; as
  the authors run it, the masks are found between steps
  (:func:`_snip_it_event`), or with ``snip_it_step_gradient`` by ``|g * w|``
  on the step's batch inside the update."""
  if not config.snip_it_step_gradient:
    return jaxprune.prune(inner, masks=masks)  # all kept until an event
  return jaxprune.prune(
      inner, criterion=jaxprune.criteria.saliency,
      schedule=_snip_it_schedule(config), allocation=config.allocation,
      seed=config.seed,
  )


def _snip_it_event(config: Config, state, step: int,
                   init_batch: Callable[[int], dict]):
  """The train state before update ``step``: SNIP-it's pruning event.

  As its authors run it (unless ``config.snip_it_step_gradient``): at each
  step of the geometric schedule the sensitivity is computed on
  ``config.init_batches`` fresh batches (``init_batch(i)``, the i-th batch
  of a stream of their own) with the model in evaluation mode, as before
  training, and the round's global top of the surviving weights is kept
  (``jaxprune.snip`` with the current masks); the new masks go into the
  optimizer state, whose inner state is kept, and the pruned weights are
  zeroed.
  """
  if config.snip_it_step_gradient:
    return state
  schedule = _snip_it_schedule(config)
  if step not in schedule.steps:
    return state
  event = schedule.steps.index(step)
  batches = [init_batch(event * config.init_batches + j)
             for j in range(config.init_batches)]

  def loss_fn(p, batch):
    logits = state.apply_fn({"params": p, "batch_stats": state.batch_stats},
                            batch["image"], train=False)
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, batch["label"]).mean()

  masks = jaxprune.snip(loss_fn, state.params, batches,
                        sparsity=schedule.sparsities[event],
                        allocation=config.allocation,
                        masks=jaxprune.masks_of(state.opt_state))
  return state.replace(params=jaxprune.apply_masks(state.params, masks),
                       opt_state=jaxprune.replace_masks(state.opt_state, masks))


# ---------------------------------------------------------------------------
# L0 gates: the density as a constraint, or a penalty.


_TRAIN_EXAMPLES = 60000  # N_train of MNIST and Fashion-MNIST


def _gated_optimizer(inner, config: Config):
  """``inner``, with the gates on their own Adam step if the config asks
  for one (``gate_learning_rate``, with Adam only)."""
  if config.gate_learning_rate and config.optimizer == "adam":
    return optax.partition(
        {"weights": inner, "gates": optax.adam(config.gate_learning_rate)},
        jaxprune.gate_labels,
    )
  return inner


def _l0_constrained(inner, config: Config, masks):
  """Gallego-Posada et al. (2022): expected density <= target, by dual ascent."""
  del masks
  constraint = jaxprune.density_constraint(config.density_target, config.density_scope)
  return optax.chain(
      jaxprune.dual_ascent(constraint, dual_lr=config.dual_lr),
      _gated_optimizer(inner, config),
      jaxprune.clip_log_alpha(),
  )


def _l0_penalty(inner, config: Config, masks):
  """Louizos et al. (2018): loss + lambda / N_train * E[L0]."""
  del masks
  return optax.chain(
      jaxprune.l0_penalty(config.penalty / _TRAIN_EXAMPLES),
      _gated_optimizer(inner, config),
      jaxprune.clip_log_alpha(),
  )


def _add_gates(config: Config, params: Any) -> Any:
  """The initial params with L0 gates added."""

  first = min(params)  # the layers' names sort in call order

  def drop_rate(path, leaf):  # Louizos et al.: 0.2 for an MLP's input layer
    del leaf
    first_dense = config.model == "lenet300100" and path[0] == first
    return config.input_drop_rate if first_dense else config.drop_rate

  granularity = {"unit": "unit", "weight": "weight"}.get(config.gates)
  if granularity is None:
    raise ValueError(f"unknown gates {config.gates!r}; expected unit or weight")
  return jaxprune.add_gates(
      params, jax.random.key(config.seed + 7919), granularity=granularity,
      drop_rate=drop_rate, rescale_weights=config.rescale_gated_weights,
  )


def _apply_gates(config: Config, params: Any, step: jax.Array | None = None) -> Any:
  """Gated params sample their gates at training ``step`` (a key folded from
  the seed and the step, so a resumed run draws the same gates), or use the
  test-time gates if ``step`` is None."""
  if step is None:
    return jaxprune.apply_gates(params)
  key = jax.random.fold_in(jax.random.key(config.seed + 104729), step)
  return jaxprune.apply_gates(params, key)


def _l0_report(state, config: Config) -> dict:
  report = reports.structure_report(state, _apply_gates(config, state.params))
  return {"l0": report} if report else {}


def _gated(transformation, fields: tuple[str, ...]) -> Method:
  return Method(
      transformation, init_params=_add_gates, model_params=_apply_gates,
      train_metrics=reports.gate_metrics, report=(_l0_report, _connectivity),
      fields=("gates", "drop_rate", "input_drop_rate", "rescale_gated_weights",
              "gate_learning_rate", *fields),
  )


# ---------------------------------------------------------------------------
# Before training: masks from the initial network, kept during training.


# GraSP's authors divide the logits by this temperature when scoring.
GRASP_TEMPERATURE = 200.0


def _eval_loss(model, batch_stats, temperature: float = 1.0):
  def loss_fn(p, batch):
    logits = model.apply({"params": p, "batch_stats": batch_stats},
                         batch["image"], train=False)
    return optax.softmax_cross_entropy_with_integer_labels(
        logits / temperature, batch["label"]).mean()
  return loss_fn


def _keep_masks(inner, config: Config, masks):
  del config
  return jaxprune.prune(inner, masks=masks)


def _before_training(find_masks, fields: tuple[str, ...]) -> Method:
  """A method that finds masks before training and keeps them:
  ``find_masks(config, model, variables, batches)``, run in evaluation mode,
  gives the masks of the initial ``variables``."""

  def prune_at_init(config: Config, model, variables, batches) -> Pruned:
    masks = find_masks(config, model, variables, batches)
    return Pruned(model, jaxprune.apply_masks(variables["params"], masks), masks)

  return Method(_keep_masks, prune_at_init=prune_at_init, fields=fields)


def _sensitivity(score, temperature: float = 1.0):
  """SNIP or GraSP: ``score`` on ``config.init_batches`` batches."""

  def find_masks(config: Config, model, variables, batches):
    loss_fn = _eval_loss(model, variables.get("batch_stats", {}), temperature)
    fixed = list(itertools.islice(batches, config.init_batches))
    return score(loss_fn, variables["params"], fixed,
                 sparsity=config.sparsity, allocation=config.allocation)

  return find_masks


def _snip_it_masks(config: Config, model, variables, batches):
  """SNIP-it: ``config.rounds`` halvings, ``config.init_batches`` fresh
  batches per round."""
  loss_fn = _eval_loss(model, variables.get("batch_stats", {}))
  return jaxprune.snip_it(loss_fn, variables["params"], batches,
                          steps=config.rounds,
                          batches_per_round=config.init_batches,
                          sparsity=config.sparsity, allocation=config.allocation)


def _synflow_masks(config: Config, model, variables, batches):
  """SynFlow: ``config.synflow_rounds`` rounds on an all-ones input of the
  batches' image shape (no data)."""
  batch_stats = variables.get("batch_stats", {})

  def apply_fn(p, x):
    return model.apply({"params": p, "batch_stats": batch_stats}, x,
                       train=False)

  shape = next(batches)["image"].shape[1:]
  return jaxprune.synflow(apply_fn, variables["params"], shape,
                          rounds=config.synflow_rounds,
                          sparsity=config.sparsity, allocation=config.allocation)


# ---------------------------------------------------------------------------
# Structured before training: the pruned units removed.


def _shrunk_network(config: Config, model, variables, batches) -> Pruned:
  """SNAP-it at node sparsity ``config.sparsity``, then the pruned units
  removed: the smaller network and its params.

  The layers are the params' top-level entries in name order (``Conv_*``
  then ``Dense_*`` with Linen, ``conv*``, ``hidden*`` then ``out`` with NNX:
  call order for the sequential models with ``widths``).
  """
  params = variables["params"]
  layers = sorted(params)
  loss_fn = _eval_loss(model, variables.get("batch_stats", {}))
  nodes = jaxprune.snap_it(loss_fn, params, batches, sparsity=config.sparsity,
                           layers=layers, steps=config.rounds,
                           batches_per_round=config.init_batches)
  small = jaxprune.shrink(params, nodes, layers=layers)
  widths = tuple(small.widths[name] for name in layers[:-1])
  return Pruned(networks.get(config, widths=widths), small.params, None)


def _widths(state, config: Config) -> dict:
  del config
  return {"widths": reports.widths(state.params)}


def _plain(inner, config: Config, masks):
  del config, masks
  return inner


# ---------------------------------------------------------------------------
# The registry.


METHODS: dict[str, Method] = {
    "dense": Method(_plain),
    "magnitude": _with_criterion(jaxprune.criteria.magnitude),
    "random": _with_criterion(jaxprune.criteria.random),
    "saliency": _with_criterion(jaxprune.criteria.saliency),
    "flipout": Method(_flipout,
                      fields=("prune_every", "rate", "flipout_p", "noise")),
    "snip_it_during": Method(
        _snip_it_during, between_steps=_snip_it_event,
        fields=("prune_every", "rounds", "snip_it_step_gradient",
                "init_batches", "init_batch_size")),
    "l0_constrained": _gated(
        _l0_constrained, ("density_target", "density_scope", "dual_lr")),
    "l0_penalty": _gated(_l0_penalty, ("penalty",)),
    # Projected gradient (Barlaud & Guyard 2020): after each step every kernel
    # is projected onto its l1 ball, or its l2,1 ball of input rows.
    "project_l1": Method(
        lambda inner, config, masks: optax.chain(
            inner, jaxprune.project_l1(config.radius)),
        fields=("radius",)),
    "project_l21": Method(
        lambda inner, config, masks: optax.chain(
            inner, jaxprune.project_l21(config.radius)),
        fields=("radius",)),
    "snip": _before_training(_sensitivity(jaxprune.snip),
                             ("init_batches", "init_batch_size")),
    "snip_it": _before_training(_snip_it_masks,
                                ("init_batches", "init_batch_size", "rounds")),
    "grasp": _before_training(_sensitivity(jaxprune.grasp, GRASP_TEMPERATURE),
                              ("init_batches", "init_batch_size")),
    "synflow": _before_training(_synflow_masks, ("synflow_rounds",)),
    # SNAP-it (Verdenius et al. 2020): the network itself is smaller.
    "snap_it": Method(_plain, prune_at_init=_shrunk_network, shrinks=True,
                      report=(_connectivity, _widths),
                      fields=("init_batches", "init_batch_size", "rounds")),
}


def get(name: str) -> Method:
  """The record of the method ``name`` (``config.method``).

  Raises:
    ValueError: ``name`` is not a key of :data:`METHODS`.
  """
  if name not in METHODS:
    raise ValueError(f"unknown method {name!r}; known: {sorted(METHODS)}")
  return METHODS[name]


def all_kept(params: Any) -> Any:
  """Masks that keep every weight: True for the leaves that jaxprune prunes
  by default (non-empty floating leaves with ``ndim >= 2``), None elsewhere.

  Example:
    >>> import jax.numpy as jnp
    >>> masks = all_kept({'kernel': jnp.zeros((2, 3)), 'bias': jnp.zeros(3)})
    >>> masks['kernel'].tolist(), masks['bias']
    ([[True, True, True], [True, True, True]], None)
  """
  def kept(leaf):
    if (jnp.issubdtype(jnp.result_type(leaf), jnp.floating)
        and jnp.ndim(leaf) >= 2 and jnp.size(leaf) > 0):
      return jnp.ones(jnp.shape(leaf), jnp.bool_)
    return None

  return jax.tree.map(kept, params)


def build(inner: optax.GradientTransformation, config: Config,
          masks: Any = None) -> optax.GradientTransformation:
  """The optimizer that trains with ``config.method`` around ``inner``; a
  method that keeps masks (before training, SNIP-it during training) starts
  from ``masks`` (:func:`all_kept` for a template to restore into), and
  needs them."""
  return get(config.method).transformation(inner, config, masks)
