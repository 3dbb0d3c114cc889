"""Exact encodings of one masked array: a bitmask, relative-index CSR, n:m.

Each encoder takes the values of one leaf (a numpy array of any dtype and
shape) and its boolean mask (True = kept), and returns a dict of numpy
arrays; the decoder of the same format takes that dict, the shape and the
dtype, and returns the masked values (pruned entries ``+0.0``) bit for bit.
Values are only ever copied, never computed with, so ``-0.0``, NaN payloads
and kept weights that are exactly 0 come back as they went in: the mask is
stored, never inferred from the values.

The CSR and n:m formats see a leaf as the matrix ``[rows, columns]`` of
:func:`matrix_shape`: the last axis gives the columns (a dense layer's
outputs, a conv layer's filters), all the axes before it flattened
row-major give the rows (the reduction axis of a dense or conv kernel).

Example:
  >>> import numpy as np
  >>> from jaxprune import _codecs
  >>> values = np.array([[1.0, 0.0], [0.0, -0.0]], np.float32)
  >>> mask = np.array([[True, False], [True, True]])
  >>> arrays = _codecs.encode("bitmask", values, mask)
  >>> arrays["bits"], arrays["values"]
  (array([176], dtype=uint8), array([ 1.,  0., -0.], dtype=float32))
  >>> np.signbit(_codecs.decode("bitmask", arrays, (2, 2), np.float32)).tolist()
  [[False, False], [False, True]]
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

# CSR column gaps: one byte each, as Han et al. store the index differences
# of their fully connected layers in a few bits; a longer gap takes filler
# entries (value 0) of MAX_GAP skipped columns each.
GAP_DTYPE = np.uint8
MAX_GAP = int(np.iinfo(GAP_DTYPE).max)


class CorruptError(ValueError):
  """Encoded arrays that no encoder could have written (a damaged file)."""


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
  """``shape`` seen as a matrix: the leading axes flattened into rows, the
  last axis as columns; ``(1, n)`` for a vector, ``(1, 1)`` for a scalar.

  Example:
    >>> from jaxprune import _codecs
    >>> _codecs.matrix_shape((3, 3, 16, 32)), _codecs.matrix_shape((7,))
    ((144, 32), (1, 7))
  """
  if not shape:
    return 1, 1
  return math.prod(shape[:-1]), shape[-1]


def position_bits(m: int) -> int:
  """Bits per position inside a group of ``m``: ``ceil(log2 m)``, at least 1.

  Example:
    >>> from jaxprune import _codecs
    >>> [_codecs.position_bits(m) for m in (2, 4, 8, 5)]
    [1, 2, 3, 3]
  """
  return max(1, math.ceil(math.log2(m)))


def _index_dtype(largest: int) -> np.dtype:
  return np.dtype(np.uint32 if largest < 2**32 else np.uint64)


def _encode_bitmask(values: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
  return {"bits": np.packbits(mask.reshape(-1)), "values": values[mask]}


def _decode_bitmask(arrays, shape, dtype) -> np.ndarray:
  size = math.prod(shape)
  bits = arrays["bits"]
  if bits.shape != (-(-size // 8),):
    raise CorruptError(f"{bits.size} mask bytes for {size} entries")
  mask = np.unpackbits(bits, count=size).astype(bool)
  if arrays["values"].shape != (int(mask.sum()),):
    raise CorruptError(
        f"{arrays['values'].size} values for {int(mask.sum())} kept entries")
  out = np.zeros(size, dtype)
  out[mask] = arrays["values"]
  return out.reshape(shape)


def _encode_csr(values: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
  rows, columns = matrix_shape(values.shape)
  row, column = np.nonzero(mask.reshape(rows, columns))  # row-major order
  matrix = values.reshape(rows, columns)
  previous = np.concatenate([[-1], column[:-1]]).astype(np.int64)
  previous[np.concatenate([[True], row[1:] != row[:-1]])] = -1  # a row's first
  skipped = column - previous - 1
  fillers = skipped // (MAX_GAP + 1)
  ends = np.cumsum(fillers + 1)  # the slot after each kept entry
  total = int(ends[-1]) if ends.size else 0
  gaps = np.full(total, MAX_GAP, GAP_DTYPE)
  gaps[ends - 1] = skipped % (MAX_GAP + 1)
  stored = np.zeros(total, values.dtype)  # fillers hold +0, as pruned entries
  stored[ends - 1] = matrix[row, column]
  per_row = np.zeros(rows, np.int64)
  np.add.at(per_row, row, fillers + 1)
  row_pointers = np.concatenate([[0], np.cumsum(per_row)])
  return {"values": stored, "gaps": gaps,
          "row_pointers": row_pointers.astype(_index_dtype(total))}


def _decode_csr(arrays, shape, dtype) -> np.ndarray:
  rows, columns = matrix_shape(shape)
  pointers = arrays["row_pointers"].astype(np.int64)
  gaps, stored = arrays["gaps"], arrays["values"]
  if (pointers.shape != (rows + 1,) or pointers[0] != 0
      or np.any(np.diff(pointers) < 0) or pointers[-1] != gaps.size
      or stored.shape != gaps.shape):
    raise CorruptError(
        f"row pointers {pointers.shape}, {gaps.size} gaps and {stored.size} "
        f"values do not describe {rows} rows")
  counts = np.diff(pointers)
  advance = np.cumsum(gaps.astype(np.int64) + 1)
  row_start = np.concatenate([[0], advance])[pointers[:-1]]
  column = advance - np.repeat(row_start, counts) - 1
  if column.size and column.max() >= columns:
    raise CorruptError(f"a column index past the {columns} columns")
  out = np.zeros((rows, columns), dtype)
  out[np.repeat(np.arange(rows), counts), column] = stored
  return out.reshape(shape)


def _n_of_m_groups(shape: tuple[int, ...], m: int, where: str) -> tuple[int, int]:
  """The number of groups per column and the columns; raises unless the
  rows divide into groups of ``m``."""
  rows, columns = matrix_shape(shape)
  if rows % m:
    raise ValueError(
        f"{where} has shape {shape}: its reduction size (all axes but the "
        f"last, flattened) is {rows}, which does not divide into groups of "
        f"m={m}; store this leaf with format='bitmask' or 'csr'")
  return rows // m, columns


def _encode_n_of_m(values: np.ndarray, mask: np.ndarray, n: int, m: int,
                   where: str) -> dict[str, np.ndarray]:
  groups, columns = _n_of_m_groups(values.shape, m, where)
  grouped = mask.reshape(groups, m, columns)
  kept = grouped.sum(axis=1)
  if np.any(kept > n):
    group, column = np.argwhere(kept > n)[0]
    raise ValueError(
        f"{where} is not {n}:{m} sparse: column {column} keeps "
        f"{kept[group, column]} of rows {group * m}..{group * m + m - 1} of "
        "its matricized form (rows: all axes but the last, flattened "
        f"row-major); prune it with the {n}:{m} structure, or store it with "
        "format='bitmask' or 'csr'")
  # Every group stores n slots: its kept entries, then its first pruned
  # ones (holding +0) where it keeps fewer, in increasing position.
  order = np.argsort(~grouped, axis=1, kind="stable")[:, :n, :]
  positions = np.sort(order, axis=1)
  masked = np.where(mask, values, np.zeros((), values.dtype))
  stored = np.take_along_axis(masked.reshape(groups, m, columns), positions,
                              axis=1)
  bits = position_bits(m)
  weights = np.arange(bits - 1, -1, -1)  # most significant bit first
  position_bits_array = (positions.reshape(-1, 1) >> weights) & 1
  return {"values": stored.reshape(groups * n, columns),
          "positions": np.packbits(position_bits_array.astype(np.uint8))}


def _decode_n_of_m(arrays, shape, dtype, n: int, m: int) -> np.ndarray:
  groups, columns = _n_of_m_groups(shape, m, "the encoded leaf")
  stored, packed = arrays["values"], arrays["positions"]
  count, bits = groups * n * columns, position_bits(m)
  if stored.shape != (groups * n, columns) or packed.size * 8 < count * bits:
    raise CorruptError(
        f"values {stored.shape} and {packed.size} position bytes do not fit "
        f"shape {shape} at {n}:{m}")
  unpacked = np.unpackbits(packed, count=count * bits).reshape(count, bits)
  positions = (unpacked.astype(np.int64) << np.arange(bits - 1, -1, -1)).sum(1)
  positions = positions.reshape(groups, n, columns)
  if positions.max(initial=0) >= m or np.any(np.diff(positions, axis=1) <= 0):
    raise CorruptError(f"positions outside a group of {m} or repeated")
  out = np.zeros((groups, m, columns), dtype)
  np.put_along_axis(out, positions, stored.reshape(groups, n, columns), axis=1)
  return out.reshape(shape)


def encode(format: str, values: np.ndarray, mask: np.ndarray, *,
           n: int | None = None, m: int | None = None,
           where: str = "the leaf") -> dict[str, np.ndarray]:
  """The arrays of ``format`` that hold ``values`` where ``mask`` is True.

  Args:
    format: ``"bitmask"``, ``"csr"`` or ``"n_of_m"``.
    values: the leaf's values (any dtype).
    mask: booleans of the same shape (True = kept).
    n: kept per group, for ``"n_of_m"``.
    m: the group size, for ``"n_of_m"``.
    where: the leaf, for messages.

  Raises:
    ValueError: for ``"n_of_m"``, a mask that keeps more than ``n`` in a
      group, or rows that do not divide into groups of ``m``.
  """
  if format == "n_of_m":
    return _encode_n_of_m(values, mask, n, m, where)
  encoders: dict[str, Callable[..., Any]] = {
      "bitmask": _encode_bitmask, "csr": _encode_csr}
  return encoders[format](values, mask)


def decode(format: str, arrays: dict[str, np.ndarray], shape: tuple[int, ...],
           dtype: Any, *, n: int | None = None, m: int | None = None) -> np.ndarray:
  """The masked values that :func:`encode` encoded, bit for bit.

  Raises:
    CorruptError: arrays that no encoder writes for this shape.
  """
  if format == "n_of_m":
    return _decode_n_of_m(arrays, shape, dtype, n, m)
  decoders: dict[str, Callable[..., Any]] = {
      "bitmask": _decode_bitmask, "csr": _decode_csr}
  if format not in decoders:
    raise CorruptError(f"unknown encoding {format!r}")
  return decoders[format](arrays, shape, dtype)
