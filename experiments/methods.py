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

from collections.abc import Callable

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
    # SNIP (Lee et al. 2019): saliency on the first batch, once, before any
    # update, to the final sparsity.
    "snip": lambda inner, config: jaxprune.prune(
        inner, criterion=jaxprune.criteria.saliency,
        schedule=jaxprune.schedules.constant(config.sparsity),
        allocation=config.allocation, seed=config.seed,
    ),
}


def build(inner: optax.GradientTransformation, config: Config):
  """The optimizer that trains with ``config.method``."""
  if config.method not in METHODS:
    raise ValueError(
        f"unknown method {config.method!r}; known: {sorted(METHODS)}"
    )
  return METHODS[config.method](inner, config)
