"""Projections: pure functions that map one array onto an l1-type ball.

Each function takes an array and a radius and returns the array's image in
the ball, jit-friendly and exact (Barlaud and Guyard 2020):

- :func:`l1_ball`: the Euclidean projection onto ``{x : sum |x_i| <= r}``
  (unstructured sparsity).
- :func:`l21_ball`: the Euclidean projection onto
  ``{x : sum_g ||x_g||_2 <= r}`` (group lasso: whole groups vanish).
- :func:`l11_ball`: the authors' bilevel l1,1 operator, which zeroes whole
  groups too; it lands in the l1 ball but is *not* the Euclidean
  projection.

They know nothing of params trees or training.  The top-level
:func:`jaxprune.project_l1`, :func:`jaxprune.project_l21` and
:func:`jaxprune.project_l11` are the optax transformations built on them:
placed last in a chain, they project every selected leaf of ``params +
updates`` onto its ball after each step (projected gradient descent).

Example: the same projection, on one array and in a chain.

  >>> import jax.numpy as jnp, optax
  >>> import jaxprune
  >>> w = jnp.array([[3.0, 4.0], [0.3, 0.4]])  # l1 norm 7.7
  >>> jaxprune.projections.l1_ball(w, 2.0)
  Array([[0.5, 1.5],
         [0. , 0. ]], dtype=float32)
  >>> tx = optax.chain(optax.sgd(0.1), jaxprune.project_l1(2.0))
  >>> params = {'w': w}
  >>> updates, _ = tx.update({'w': jnp.zeros((2, 2))}, tx.init(params), params)
  >>> optax.apply_updates(params, updates)['w']
  Array([[0.5, 1.5],
         [0. , 0. ]], dtype=float32)
"""

from jaxprune._balls import l1_ball
from jaxprune._balls import l11_ball
from jaxprune._balls import l21_ball

__all__ = ["l1_ball", "l11_ball", "l21_ball"]
