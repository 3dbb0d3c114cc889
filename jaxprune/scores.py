"""Scores: how much each weight or unit matters, as numbers, never masks.

The functions here take a loss, the params and a few batches, and return
a score for every weight (or every hidden unit) with the structure of what
they score.  Nothing is pruned: rank the scores yourself, or let the
top-level functions built on them do it.

- :func:`sensitivity`: SNIP's connection sensitivity ``|w * g|``.
  :func:`jaxprune.snip` and :func:`jaxprune.snip_it` rank it and return
  masks.
- :func:`gradient_flow`: GraSP's keep score ``w * (H g)``.
  :func:`jaxprune.grasp` ranks it and returns masks.
- :func:`node_sensitivity`: SNAP-it's ``|dL/dc|`` of every hidden unit's
  gate.  :func:`jaxprune.snap_it` ranks it and returns node masks.

They run outside the train step, on batches of their own.  The criteria of
:mod:`jaxprune.criteria` are the other kind of score: functions of
``(params, grads, key)`` that :func:`jaxprune.prune` calls inside the
jitted update, on the step's own gradient.

Example: the scores behind SNIP's masks.

  >>> import jax.numpy as jnp
  >>> import jaxprune
  >>> loss_fn = lambda p, x: jnp.sum((x @ p['w']) ** 2)
  >>> params = {'w': jnp.array([[1.0, -2.0], [0.5, 3.0]])}
  >>> batches = [jnp.ones((1, 2))]
  >>> jaxprune.scores.sensitivity(loss_fn, params, batches)['w']
  Array([[3. , 4. ],
         [1.5, 6. ]], dtype=float32)
  >>> jaxprune.snip(loss_fn, params, batches, sparsity=0.5)['w'].tolist()
  [[False, True], [False, True]]
"""

from jaxprune._snip import gradient_flow
from jaxprune._snip import sensitivity
from jaxprune._structured import node_sensitivity

__all__ = ["gradient_flow", "node_sensitivity", "sensitivity"]
