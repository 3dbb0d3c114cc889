"""Registry of pruning methods for the experiments: name -> optimizer wrapper.

String names live here, in the experiments, never in the library: each entry
turns the plain optimizer and a :class:`~experiments.config.Config` into the
jaxprune transformation that trains with that method.

Example:
  >>> import optax
  >>> from experiments import config, methods
  >>> tx = methods.build(optax.adam(1e-3), config.PRESETS["smoke"])
  >>> type(tx).__name__
  'GradientTransformationExtraArgs'
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import jax
import optax

import jaxprune
from experiments.config import Config


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


def _with_criterion(criterion):
  def build(inner: optax.GradientTransformation, config: Config):
    return jaxprune.prune(
        inner, criterion=criterion, schedule=_schedule(config),
        allocation=config.allocation, seed=config.seed,
    )

  return build


_TRAIN_EXAMPLES = 60000  # N_train of MNIST and Fashion-MNIST


def _l0_constrained(inner: optax.GradientTransformation, config: Config):
  """Gallego-Posada et al. (2022): expected density <= target, by dual ascent."""
  constraint = jaxprune.density_constraint(config.density_target, config.density_scope)
  return optax.chain(
      jaxprune.dual_ascent(constraint, dual_lr=config.dual_lr),
      inner,
      jaxprune.clip_log_alpha(),
  )


def _l0_penalty(inner: optax.GradientTransformation, config: Config):
  """Louizos et al. (2018): loss + lambda / N_train * E[L0]."""
  return optax.chain(
      jaxprune.l0_penalty(config.penalty / _TRAIN_EXAMPLES),
      inner,
      jaxprune.clip_log_alpha(),
  )


METHODS: dict[str, Callable[[optax.GradientTransformation, Config], optax.GradientTransformation]] = {
    "dense": lambda inner, config: inner,
    "magnitude": _with_criterion(jaxprune.criteria.magnitude),
    "random": _with_criterion(jaxprune.criteria.random),
    "saliency": _with_criterion(jaxprune.criteria.saliency),
    # FlipOut (Apostol et al. 2020): every `prune_every` steps, remove `rate`
    # of the survivors by |w|^p / (flips + 1), until `sparsity`.
    "flipout": lambda inner, config: jaxprune.flipout(
        inner, prune_every=config.pruning_period(), rate=config.rate,
        p=config.flipout_p, noise=config.noise, final_sparsity=config.sparsity,
        seed=config.seed, max_steps=config.steps,
    ),
    # SNIP-it during training (Verdenius et al. 2020): one geometric round
    # every `prune_every` steps from `begin_step`, until `sparsity`; as the
    # authors run it, the masks are found between steps (between_steps), or
    # with snip_it_step_gradient by |g * w| on the step's batch.
    "snip_it_during": lambda inner, config: (
        jaxprune.prune(inner, criterion=jaxprune.criteria.saliency,
                       schedule=_snip_it_schedule(config),
                       allocation=config.allocation, seed=config.seed)
        if config.snip_it_step_gradient else jaxprune.prune(inner)),
    # L0 gates (see gated_params): the density as a constraint, or a penalty.
    "l0_constrained": _l0_constrained,
    "l0_penalty": _l0_penalty,
    # Projected gradient (Barlaud & Guyard 2020): after each step every kernel
    # is projected onto its l1 ball, or its l2,1 ball of input rows.
    "project_l1": lambda inner, config: optax.chain(
        inner, jaxprune.project_l1(config.radius)),
    "project_l21": lambda inner, config: optax.chain(
        inner, jaxprune.project_l21(config.radius)),
}

def _snip_it_schedule(config: Config) -> jaxprune.schedules.Schedule:
  return jaxprune.schedules.geometric(
      config.sparsity, config.begin_step, config.pruning_period(),
      config.rounds)


def between_steps(config: Config, state, step: int,
                  init_batch: Callable[[int], dict]):
  """The train state before update ``step + 1``: SNIP-it's pruning event.

  SNIP-it during training as its authors run it (unless
  ``config.snip_it_step_gradient``): at each step of the geometric schedule
  the sensitivity is computed on ``config.init_batches`` fresh batches
  (``init_batch(i)``, the i-th batch of a stream of their own) with the
  model in evaluation mode, as before training, and the round's global top
  of the surviving weights is kept (``jaxprune.snip`` with the current
  masks); the new masks go into the optimizer state, whose inner state is
  kept, and the pruned weights are zeroed.  Other methods: ``state``.
  """
  if config.method != "snip_it_during" or config.snip_it_step_gradient:
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


GATED_METHODS = ("l0_constrained", "l0_penalty")
# Methods that find the masks before training (initial_masks); training keeps
# them unchanged.
BEFORE_TRAINING = ("snip", "snip_it", "grasp", "synflow")


# Structured before training: the pruned units are removed (shrunk_network).
STRUCTURED = ("snap_it",)


# GraSP's authors divide the logits by this temperature when scoring.
GRASP_TEMPERATURE = 200.0


def _eval_loss(model, batch_stats, temperature: float = 1.0):
  def loss_fn(p, batch):
    logits = model.apply({"params": p, "batch_stats": batch_stats},
                         batch["image"], train=False)
    return optax.softmax_cross_entropy_with_integer_labels(
        logits / temperature, batch["label"]).mean()
  return loss_fn


def shrunk_network(config: Config, model, variables: Any,
                   batches: Iterator[dict]) -> tuple[tuple[int, ...], Any]:
  """SNAP-it at node sparsity ``config.sparsity``, then the pruned units
  removed: the hidden widths and the params of the smaller network.

  The layers are the params' top-level entries in name order (``Conv_*``
  then ``Dense_*``: call order for the sequential models with ``widths``).
  """
  params = variables["params"]
  layers = sorted(params)
  loss_fn = _eval_loss(model, variables.get("batch_stats", {}))
  nodes = jaxprune.snap_it(loss_fn, params, batches, sparsity=config.sparsity,
                           layers=layers, steps=config.rounds,
                           batches_per_round=config.init_batches)
  small = jaxprune.shrink(params, nodes, layers=layers)
  return tuple(small.widths[name] for name in layers[:-1]), small.params


def initial_masks(config: Config, model, variables: Any,
                  batches: Iterator[dict]) -> Any:
  """The masks of a before-training method, from the initial ``variables``.

  ``batches`` gives training batches ``{"image", "label"}``: SNIP and GraSP
  use ``config.init_batches`` of them, SNIP-it that many fresh ones per
  round (``config.rounds`` halvings), SynFlow none (``config.synflow_rounds``
  rounds on an all-ones input).  The model runs in evaluation mode.
  """
  params = variables["params"]
  batch_stats = variables.get("batch_stats", {})
  loss_fn = _eval_loss(
      model, batch_stats,
      GRASP_TEMPERATURE if config.method == "grasp" else 1.0)
  common = dict(sparsity=config.sparsity, allocation=config.allocation)
  if config.method == "snip_it":
    return jaxprune.snip_it(loss_fn, params, batches, steps=config.rounds,
                            batches_per_round=config.init_batches, **common)
  if config.method in ("snip", "grasp"):
    fixed = list(itertools.islice(batches, config.init_batches))
    return getattr(jaxprune, config.method)(loss_fn, params, fixed, **common)
  if config.method == "synflow":
    def apply_fn(p, x):
      return model.apply({"params": p, "batch_stats": batch_stats}, x,
                         train=False)
    shape = next(batches)["image"].shape[1:]
    return jaxprune.synflow(apply_fn, params, shape,
                            rounds=config.synflow_rounds, **common)
  raise ValueError(f"{config.method!r} is not a before-training method")


def init_params(config: Config, params: Any) -> Any:
  """The initial params to train: with L0 gates added for a gated method."""
  if config.method not in GATED_METHODS:
    return params

  def drop_rate(path, leaf):  # Louizos et al.: 0.2 for an MLP's input layer
    del leaf
    first_dense = config.model == "lenet300100" and path[0] == "Dense_0"
    return config.input_drop_rate if first_dense else config.drop_rate

  granularity = {"unit": "unit", "weight": "weight"}.get(config.gates)
  if granularity is None:
    raise ValueError(f"unknown gates {config.gates!r}; expected unit or weight")
  return jaxprune.add_gates(
      params, jax.random.key(config.seed + 7919), granularity=granularity,
      drop_rate=drop_rate, rescale_weights=config.rescale_gated_weights,
  )


def model_params(config: Config, params: Any, step: jax.Array | None = None) -> Any:
  """The params the model is applied with: gated ones sample their gates at
  training ``step`` (a key folded from the seed and the step, so a resumed
  run draws the same gates), or use the test-time gates if ``step`` is None."""
  if config.method not in GATED_METHODS:
    return params
  if step is None:
    return jaxprune.apply_gates(params)
  key = jax.random.fold_in(jax.random.key(config.seed + 104729), step)
  return jaxprune.apply_gates(params, key)


def build(inner: optax.GradientTransformation, config: Config,
          masks: Any = None):
  """The optimizer that trains with ``config.method``; a before-training
  method keeps ``masks`` (all kept if None: a template for restoring)."""
  if config.method in BEFORE_TRAINING:
    return jaxprune.prune(inner, masks=masks)
  if config.method in STRUCTURED:  # the network itself is smaller
    return inner
  if config.method not in METHODS:
    raise ValueError(
        f"unknown method {config.method!r}; known: "
        f"{sorted(METHODS) + list(BEFORE_TRAINING)}"
    )
  return METHODS[config.method](inner, config)
