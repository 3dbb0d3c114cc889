"""Every jaxprune transformation by name, for the tests that run them all.

Each row takes the inner optimizer and the params it will see (the fixed
masks are made to their shapes).  Add a row for each new transformation.
"""

import jax
import numpy as np
import optax

import jaxprune
from jaxprune import criteria
from jaxprune import schedules
from jaxprune import sharing
from jaxprune import structures

SCHEDULE = schedules.polynomial(0.75, begin_step=0, end_step=4, frequency=2)


def every_fourth_kept(params):
  """Initial masks as ``jaxprune.snip`` would give them: every fourth weight
  (in row-major order) of each kernel kept, the rest of the tree unpruned."""
  return jax.tree.map(
      lambda p: np.arange(p.size).reshape(p.shape) % 4 == 0 if p.ndim > 1 else None,
      params)


MASKED = {
    "prune-magnitude-global": lambda inner, params: jaxprune.prune(
        inner, criterion=criteria.magnitude, schedule=SCHEDULE),
    "prune-random-layerwise": lambda inner, params: jaxprune.prune(
        inner, criterion=criteria.random, schedule=SCHEDULE,
        allocation="layerwise"),
    "prune-saliency-erk": lambda inner, params: jaxprune.prune(
        inner, criterion=criteria.saliency, schedule=SCHEDULE, allocation="erk"),
    "prune-magnitude-packed": lambda inner, params: jaxprune.prune(
        inner, criterion=criteria.magnitude, schedule=SCHEDULE,
        packed_masks=True),
    "prune-fixed-masks": lambda inner, params: jaxprune.prune(
        inner, masks=every_fourth_kept(params)),
    "prune-1of2": lambda inner, params: jaxprune.prune(
        inner, criterion=criteria.magnitude, schedule=SCHEDULE,
        structure=structures.n_of_m(1, 2)),
    "prune-channels-global": lambda inner, params: jaxprune.prune(
        inner, criterion=criteria.magnitude, schedule=SCHEDULE,
        structure=structures.channels(pool="max")),
    "flipout": lambda inner, params: jaxprune.flipout(inner, prune_every=2),
    "flipout-packed": lambda inner, params: jaxprune.flipout(
        inner, prune_every=2, packed_masks=True),
    "flipout-noiseless-p1": lambda inner, params: jaxprune.flipout(
        inner, prune_every=2, rate=0.6, p=1.0, noise=0.0, final_sparsity=0.8),
    "fine-tune-centroids": lambda inner, params: sharing.fine_tune_centroids(
        inner, sharing.codebooks(params, every_fourth_kept(params), bits=2)),
    "project-l1": lambda inner, params: optax.chain(inner, jaxprune.project_l1(0.1)),
    "project-l21": lambda inner, params: optax.chain(inner, jaxprune.project_l21(0.1)),
    "project-l11": lambda inner, params: optax.chain(inner, jaxprune.project_l11(0.1)),
}

def layer_targets(gated_params):
  """Density targets from 0.3 to 0.5, one per gated layer."""
  n = len(jaxprune.expected_density(gated_params).layers)
  return list(np.linspace(0.3, 0.5, n))


# Transformations of L0-gated params (``jaxprune.add_gates``): no masks in
# their state.  Each row takes the inner optimizer and the gated params.
GATED = {
    "l0-dual-ascent": lambda inner, params: optax.chain(
        jaxprune.dual_ascent(jaxprune.density_constraint(0.3), dual_lr=0.5),
        inner, jaxprune.clip_log_alpha()),
    "l0-layer-dual-ascent-no-restarts": lambda inner, params: optax.chain(
        jaxprune.dual_ascent(
            jaxprune.density_constraint(layer_targets(params), "layer"),
            dual_lr=0.5, dual_restarts=False),
        inner, jaxprune.clip_log_alpha()),
    "l0-penalty": lambda inner, params: optax.chain(
        jaxprune.l0_penalty(1e-2), inner, jaxprune.clip_log_alpha()),
}
