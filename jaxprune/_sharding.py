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


def replicated_like(x, reference) -> jax.Array:
  """``x`` as a jax array copied whole onto every device that holds a part of
  ``reference`` (any shape): the small state beside sharded params, such as
  a codebook of a sharded kernel."""
  x = jnp.asarray(x)
  if isinstance(reference, jax.core.Tracer):
    if explicit_axes(reference):
      return jax.sharding.reshard(x, jax.sharding.PartitionSpec())
    return x
  sharding = getattr(reference, "sharding", None)
  if (isinstance(reference, jax.Array) and reference.committed
      and isinstance(sharding, jax.sharding.NamedSharding)):
    return jax.device_put(x, jax.sharding.NamedSharding(
        sharding.mesh, jax.sharding.PartitionSpec()))
  return x


def flat_index(shape: tuple[int, ...], dtype=jnp.int32, offset: int = 0,
               like: jax.Array | None = None) -> jax.Array:
  """``offset`` plus each entry's row-major position in an array of
  ``shape``, as ``dtype`` (unsigned dtypes wrap around), built from iotas:
  no reshape, so an array of this shape sharded over devices can be
  indexed where it lies.  With ``like`` (an array of ``shape``), the index
  is placed as it is (:func:`placed_like`): sharded like it, each device
  computes its own part only.

  >>> flat_index((2, 3)).tolist()
  [[0, 1, 2], [3, 4, 5]]
  """
  bits = jnp.iinfo(dtype).bits
  index = jnp.full(shape, offset, dtype)
  stride = 1
  for dim in reversed(range(len(shape))):
    index = index + jnp.asarray(stride % 2**bits, dtype) * (
        jax.lax.broadcasted_iota(dtype, shape, dim))
    stride *= shape[dim]
  return index if like is None else placed_like(index, like)


def bin_sums(bins: jax.Array, values: jax.Array | None, num_bins: int,
             dtype, initial: jax.Array | None = None) -> jax.Array:
  """Sums of ``values`` (1 each if None) by bin: ``[num_bins]`` in ``dtype``,
  added to ``initial`` (zeros if None).

  ``bins`` holds each element's bin (any shape); an element of bin
  ``num_bins`` is not counted.  ``values`` has the shape of ``bins``.  A
  sharded ``bins`` is summed shard by shard and the sums added over the
  devices: the only collective is an all-reduce of the ``num_bins`` sums.
  Under automatic sharding the compiler partitions the scatter that way
  itself; under explicit sharding the per-shard sums are written out with
  ``jax.shard_map``.

  >>> bin_sums(jnp.array([0, 2, 2, 3]), None, 3, jnp.int32).tolist()
  [1, 0, 2]
  """
  if initial is None:
    initial = jnp.zeros((num_bins,), dtype)

  def scatter(out, b, v):
    return out.at[b].add(jnp.ones((), dtype) if v is None else v, mode="drop")

  axes = explicit_axes(bins)
  if not axes:
    return scatter(initial, bins, values)
  spec = jax.typeof(bins).sharding.spec
  operands = (bins,)
  if values is not None:  # sharded as ``bins``, so that the shards match
    operands += (jax.sharding.reshard(values, spec),)
  return initial + jax.shard_map(
      lambda b, *v: jax.lax.psum(
          scatter(jnp.zeros((num_bins,), dtype), b, *v or (None,)), axes),
      in_specs=(spec,) * len(operands),
      out_specs=jax.sharding.PartitionSpec(),
      axis_names=set(axes),
  )(*operands)
