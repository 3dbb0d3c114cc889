"""Masks packed eight to a byte, for the state of ``prune(..., packed_masks=True)``.

A boolean mask costs one byte per weight, and a train step reads it in each
of the optimizer's loops over the weights (Adam has three).  Packed along
the last axis, the same mask costs one bit per weight; the step unpacks it
inside the loops that read it, so the unpacked mask is never written out.

Bit ``j % 8`` of byte ``j // 8`` (least significant first) holds entry ``j``
of the last axis; the padding bits of a last axis that is not a multiple of
8 are 0.

Example:
  >>> import jax.numpy as jnp
  >>> from jaxprune import _packing
  >>> mask = jnp.array([[True, False, True], [False, False, True]])
  >>> packed = _packing.pack(mask)
  >>> packed.bits.tolist()  # 1 + 4, and 4
  [[5], [4]]
  >>> packed.shape
  (2, 3)
  >>> bool((_packing.unpack(packed) == mask).all())
  True
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_BITS = 8


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PackedMask:
  """A boolean mask stored eight entries to a byte along its last axis.

  ``prune(..., packed_masks=True)`` holds its masks so;
  :func:`jaxprune.masks_of` unpacks them.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> import jaxprune
    >>> params = {'w': jnp.arange(1.0, 11.0).reshape(1, 10)}
    >>> tx = jaxprune.prune(optax.sgd(0.1), packed_masks=True,
    ...                     masks={'w': params['w'] > 3})
    >>> state = tx.init(params)
    >>> state.masks['w'].bits.tolist()  # entries 3 to 7, then 8 and 9
    [[248, 3]]
    >>> jaxprune.masks_of(state)['w'].sum().item()
    7

  Attributes:
    bits: uint8, the mask's shape with the last axis ``ceil(length / 8)``.
    length: the unpacked length of the last axis (static).
  """

  bits: jax.Array
  length: int = dataclasses.field(metadata={"static": True})

  @property
  def shape(self) -> tuple[int, ...]:
    """The shape of the unpacked mask."""
    return tuple(np.shape(self.bits)[:-1]) + (self.length,)


def is_packed(x: Any) -> bool:
  """Whether ``x`` is a :class:`PackedMask` (an ``is_leaf`` for tree maps)."""
  return isinstance(x, PackedMask)


def pack(mask: jax.Array) -> PackedMask:
  """``mask`` (boolean, at least one dimension) packed along its last axis."""
  mask = jnp.asarray(mask)
  if mask.dtype != jnp.bool_ or mask.ndim == 0:
    raise ValueError(
        f"only boolean masks of at least one dimension are packed, got "
        f"{mask.dtype} of shape {mask.shape}")
  length = mask.shape[-1]
  padding = -length % _BITS
  if padding:
    mask = jnp.pad(mask, [(0, 0)] * (mask.ndim - 1) + [(0, padding)])
  grouped = mask.reshape(mask.shape[:-1] + (-1, _BITS)).astype(jnp.uint8)
  place = lax.broadcasted_iota(jnp.uint8, grouped.shape, grouped.ndim - 1)
  bits = jnp.sum(jnp.left_shift(grouped, place), axis=-1, dtype=jnp.uint8)
  return PackedMask(bits, length)


def unpack(packed: PackedMask) -> jax.Array:
  """The boolean mask that ``packed`` holds."""
  bits = packed.bits
  shape = bits.shape + (_BITS,)
  place = lax.broadcasted_iota(jnp.uint8, shape, bits.ndim)
  entries = jnp.right_shift(lax.broadcast_in_dim(
      bits, shape, tuple(range(bits.ndim))), place) & jnp.uint8(1)
  flat = entries.reshape(bits.shape[:-1] + (bits.shape[-1] * _BITS,))
  return flat[..., :packed.length].astype(jnp.bool_)


def _last_axis_parts(leaf: Any) -> int:
  """Over how many devices ``leaf``'s last axis is split, where that can be
  seen: a committed array's named sharding, or a traced array's explicit
  sharding (under automatic sharding a traced array shows none)."""
  if isinstance(leaf, jax.core.Tracer):
    sharding = jax.typeof(leaf).sharding
  else:
    sharding = getattr(leaf, "sharding", None)
  spec = tuple(getattr(sharding, "spec", None) or ())
  if len(spec) < np.ndim(leaf) or spec[np.ndim(leaf) - 1] is None:
    return 1
  axes = spec[np.ndim(leaf) - 1]
  axes = axes if isinstance(axes, tuple) else (axes,)
  return math.prod(sharding.mesh.shape[a] for a in axes)


def packable(leaf: Any) -> bool:
  """Whether the mask of ``leaf`` (a param) is packed: it has an axis, and
  where its last axis is split over devices, each device's part is a
  multiple of 8 entries (whole bytes), so that the packed mask is split as
  the param is.  A mask split otherwise stays boolean: packing it would
  gather it whole on every device at each mask update."""
  if np.ndim(leaf) == 0:
    return False
  parts, length = _last_axis_parts(leaf), np.shape(leaf)[-1]
  return parts == 1 or (length % parts == 0 and (length // parts) % _BITS == 0)


def unpacked(mask: Any) -> Any:
  """``mask`` as a boolean array: unpacked if packed, else as it is."""
  return unpack(mask) if is_packed(mask) else mask


def unpack_tree(masks: Any) -> Any:
  """``masks`` with every :class:`PackedMask` unpacked (None leaves kept)."""
  return jax.tree.map(unpacked, masks, is_leaf=is_packed)


def pack_tree(masks: Any, params: Any) -> Any:
  """``masks`` (boolean, with the structure of ``params``, None where a
  leaf is not pruned) with the mask of every :func:`packable` param packed."""
  def packed(m, p):
    return m if m is None or not packable(p) else pack(m)

  return jax.tree.map(packed, masks, params, is_leaf=lambda x: x is None)


def packed_like(masks: Any, reference: Any) -> Any:
  """``masks`` (boolean) packed where ``reference`` holds a packed mask."""
  def like(m, r):
    return pack(m) if is_packed(r) else m

  return jax.tree.map(like, masks, reference,
                      is_leaf=lambda x: x is None or is_packed(x))
