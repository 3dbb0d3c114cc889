"""A plain optax training loop shared by the transformation tests."""

import jax
import optax


def run_steps(tx, params, grads_fn, steps, state=None, jit=True):
  """Runs ``steps`` updates with ``grads_fn(params, t)`` as the gradients.

  Returns:
    ``(history, traces)``: the ``(params, state)`` after every update, and
    how many times the step function was traced.
  """
  traces = []

  def step(params, state, grads):
    traces.append(None)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  step = jax.jit(step) if jit else step
  state = tx.init(params) if state is None else state
  history = []
  for t in range(steps):
    params, state = step(params, state, grads_fn(params, t))
    history.append((params, state))
  return history, len(traces)
