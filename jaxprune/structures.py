"""Structures: prune N:M groups, blocks or whole channels instead of single
weights.

Pass one to :func:`jaxprune.prune`, :func:`jaxprune.prune_once` or (blocks
and channels) :func:`jaxprune.flipout` as ``structure=``; every criterion
and schedule works with each.  Masks stay per-weight boolean arrays; what
changes is what the method keeps or removes together:

- :func:`n_of_m`: exactly ``n`` of every ``m`` consecutive weights along
  the reduction dimension (2:4 for sparse tensor cores).
- :func:`block`: whole ``rows x outputs`` tiles, ranked by a pooled score.
- :func:`channels`: whole output neurons or conv filters, which
  :func:`jaxprune.shrink` then removes for a smaller dense network.

Example:
  >>> import jax, jax.numpy as jnp, optax
  >>> import jaxprune
  >>> params = {'w': jax.random.normal(jax.random.key(0), (8, 4))}
  >>> tx = jaxprune.prune(
  ...     optax.adam(1e-3), criterion=jaxprune.criteria.magnitude,
  ...     schedule=jaxprune.schedules.one_shot(0.5, at_step=0),
  ...     structure=jaxprune.structures.n_of_m(2, 4))
  >>> state = tx.init(params)
  >>> _, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
  >>> kept = jaxprune.masks_of(state)['w'].reshape(2, 4, 4).sum(axis=1)
  >>> kept.tolist()  # every group of 4 inputs keeps 2, for every output
  [[2, 2, 2, 2], [2, 2, 2, 2]]
"""

from jaxprune._structures import NOfM
from jaxprune._structures import Pooled
from jaxprune._structures import Structure
from jaxprune._structures import block
from jaxprune._structures import channels
from jaxprune._structures import n_of_m

__all__ = ["NOfM", "Pooled", "Structure", "block", "channels", "n_of_m"]
