"""Where arrays live: the helpers that keep jaxprune's state beside the
params it belongs to when the params are sharded over several devices.

Under automatic sharding (``jax.sharding.AxisType.Auto``, and outside any
mesh) the compiler partitions jaxprune's computations from the shardings of
their inputs; under explicit sharding (``AxisType.Explicit``, the default of
``jax.make_mesh``) the sharding is part of each array's type, and the few
operations that would otherwise move data say how they run.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def explicit_axes(x: jax.Array) -> tuple[str, ...]:
  """The mesh axes that shard ``x`` explicitly, in the order of its
  dimensions; () for an unsharded array or under automatic sharding."""
  spec = getattr(jax.typeof(x).sharding, "spec", None) or ()
  axes = []
  for entry in spec:
    if entry is not None:
      axes.extend(entry if isinstance(entry, tuple) else (entry,))
  return tuple(axes)


def placed_like(x, reference) -> jax.Array:
  """``x`` as a jax array with the sharding of ``reference`` (same shape).

  A concrete ``reference`` committed to its devices lends its sharding
  (``jax.device_put``); a traced one under explicit sharding its type's
  (``jax.sharding.reshard``); otherwise jax places ``x`` as it places
  ``reference`` (uncommitted, or by the compiler inside ``jit``).
  """
  x = jnp.asarray(x)
  if isinstance(reference, jax.core.Tracer):
    if explicit_axes(reference):
      return jax.sharding.reshard(x, jax.typeof(reference).sharding.spec)
    return x
  if isinstance(reference, jax.Array) and reference.committed:
    return jax.device_put(x, reference.sharding)
  return x  # placed by jax, like the uncommitted ``reference``


def gathered(x: jax.Array) -> jax.Array:
  """``x`` replicated on every device of its mesh if it is sharded
  explicitly (an all-gather), else ``x`` unchanged."""
  if explicit_axes(x):
    return jax.sharding.reshard(x, jax.sharding.PartitionSpec())
  return x
