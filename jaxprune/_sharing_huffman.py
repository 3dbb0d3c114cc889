"""Canonical Huffman coding of small non-negative integers, in numpy.

A canonical code is fixed by its code lengths alone: the symbols sorted by
(length, symbol) take consecutive codes, each length's first code the one
after the previous length's last, shifted left by the difference of the
lengths (as DEFLATE, RFC 1951 section 3.2.2, assigns them).  So a stream
stores one byte per symbol of the alphabet (its code length, 0 for a symbol
that does not occur) and the bits, packed most significant bit first.

Fixed-width packing is the special case of equal lengths: every symbol of
an alphabet of ``2**w`` symbols takes ``w`` bits, its code being its value.

Example:
  >>> import numpy as np
  >>> from jaxprune import _sharing_huffman as huffman
  >>> symbols = np.array([0, 0, 0, 0, 1, 1, 2, 3])
  >>> lengths = huffman.code_lengths(np.bincount(symbols, minlength=4))
  >>> lengths.tolist()
  [1, 2, 3, 3]
  >>> packed = huffman.encode(symbols, lengths)
  >>> packed.tolist(), huffman.encoded_bits(symbols, lengths)  # 0000 10 10 110 111
  ([10, 220], 14)
  >>> huffman.decode(packed, lengths, symbols.size).tolist()
  [0, 0, 0, 0, 1, 1, 2, 3]
"""

from __future__ import annotations

import heapq

import numpy as np

MAX_LENGTH = 57
"""The longest code :func:`decode` reads (a window of 64 bits with room to
shift).  A Huffman code reaches it only for streams of more than about
``10**11`` symbols."""


class CorruptStream(ValueError):
  """Code lengths or bits that no encoder writes."""


def code_lengths(counts: np.ndarray) -> np.ndarray:
  """The Huffman code length of every symbol, from its count.

  Symbols with count 0 get length 0 (no code); a single symbol that occurs
  gets length 1.  Ties are broken by the lower symbol first, so the lengths
  are a function of the counts.

  Args:
    counts: non-negative integers ``[alphabet]``.

  Returns:
    uint8 ``[alphabet]``.
  """
  counts = np.asarray(counts, np.int64)
  lengths = np.zeros(counts.shape, np.int64)
  present = np.flatnonzero(counts)
  if present.size == 1:
    lengths[present] = 1
  elif present.size > 1:
    # Heap entries: (count, smallest symbol, symbols of the subtree).
    heap = [(int(counts[s]), int(s), [int(s)]) for s in present]
    heapq.heapify(heap)
    while len(heap) > 1:
      a = heapq.heappop(heap)
      b = heapq.heappop(heap)
      lengths[a[2]] += 1
      lengths[b[2]] += 1
      heapq.heappush(heap, (a[0] + b[0], min(a[1], b[1]), a[2] + b[2]))
  if lengths.max(initial=0) > MAX_LENGTH:
    raise ValueError(f"a Huffman code longer than {MAX_LENGTH} bits")
  return lengths.astype(np.uint8)


def fixed_lengths(width: int) -> np.ndarray:
  """The code lengths of fixed-width packing: ``width`` bits for each of
  ``2**width`` symbols."""
  return np.full(2**width, width, np.uint8)


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
  """The canonical code of every symbol (uint64; 0 where the length is 0).

  Raises:
    CorruptStream: lengths that no prefix code has (Kraft sum over 1).
  """
  lengths = np.asarray(lengths, np.int64)
  if lengths.size and (lengths.min() < 0 or lengths.max() > MAX_LENGTH):
    raise CorruptStream(f"code lengths outside 0..{MAX_LENGTH}")
  used = np.flatnonzero(lengths)
  kraft = sum(2.0 ** -float(length) for length in lengths[used])
  if kraft > 1.0:
    raise CorruptStream(f"code lengths whose Kraft sum is {kraft} > 1")
  order = used[np.lexsort((used, lengths[used]))]
  codes = np.zeros(lengths.shape, np.uint64)
  code, previous = 0, 0
  for symbol in order:
    length = int(lengths[symbol])
    code <<= length - previous
    codes[symbol] = code
    code, previous = code + 1, length
  return codes


def encoded_bits(symbols: np.ndarray, lengths: np.ndarray) -> int:
  """The number of bits that :func:`encode` writes before padding."""
  symbols = np.asarray(symbols, np.int64)
  return int(np.asarray(lengths, np.int64)[symbols].sum())


def encode(symbols: np.ndarray, lengths: np.ndarray) -> np.ndarray:
  """The symbols' canonical codes, packed most significant bit first into
  bytes, the last byte padded with zeros.

  Raises:
    ValueError: a symbol outside the alphabet, or without a code.
  """
  symbols = np.asarray(symbols, np.int64).reshape(-1)
  lengths = np.asarray(lengths, np.int64)
  if symbols.size and (symbols.min() < 0 or symbols.max() >= lengths.size
                       or np.any(lengths[symbols] == 0)):
    raise ValueError("a symbol outside the alphabet or without a code")
  codes = canonical_codes(lengths)[symbols]
  sizes = lengths[symbols]
  longest = int(sizes.max(initial=0))
  if longest == 0:
    return np.zeros(0, np.uint8)
  # Bit j of each code, most significant first, where j < its length.
  shifts = sizes[:, None] - 1 - np.arange(longest)[None, :]
  valid = shifts >= 0
  bits = (codes[:, None] >> np.maximum(shifts, 0).astype(np.uint64)) & np.uint64(1)
  return np.packbits(bits[valid].astype(np.uint8))


def decode(packed: np.ndarray, lengths: np.ndarray, count: int) -> np.ndarray:
  """The ``count`` symbols that :func:`encode` packed with ``lengths``.

  Returns:
    int64 ``[count]``.

  Raises:
    CorruptStream: bits that are no sequence of ``count`` codes, or bytes
      beyond them.
  """
  lengths = np.asarray(lengths, np.int64)
  if count == 0:
    if np.asarray(packed).size:
      raise CorruptStream(f"{np.asarray(packed).size} bytes for no symbol")
    return np.zeros(0, np.int64)
  codes = canonical_codes(lengths)
  used = np.flatnonzero(lengths)
  if used.size == 0:
    raise CorruptStream(f"no code for {count} symbols")
  longest = int(lengths.max())
  bits = np.unpackbits(np.asarray(packed, np.uint8))
  total = bits.size
  padded = np.concatenate([bits, np.zeros(longest, np.uint8)]).astype(np.uint64)
  # window[p]: the `longest` bits from position p, as an integer.
  window = np.zeros(total, np.uint64)
  for j in range(longest):
    window = (window << np.uint64(1)) | padded[j:j + total]
  # For every position, the code that starts there: the canonical codes of
  # one length are consecutive, so a range test per length finds it.
  symbol_at = np.full(total, -1, np.int64)
  length_at = np.zeros(total, np.int64)
  for length in np.unique(lengths[used]):
    of_length = used[lengths[used] == length]
    of_length = of_length[np.argsort(codes[of_length], kind="stable")]
    first = codes[of_length[0]]
    prefix = window >> np.uint64(longest - length)
    offset = prefix - first
    hit = (prefix >= first) & (offset < np.uint64(of_length.size)) & (symbol_at < 0)
    symbol_at[hit] = of_length[offset[hit].astype(np.int64)]
    length_at[hit] = length
  out = np.empty(count, np.int64)
  step = length_at.tolist()
  symbol_list = symbol_at.tolist()
  position = 0
  for i in range(count):
    if position >= total or step[position] == 0:
      raise CorruptStream(f"no code at bit {position} (symbol {i} of {count})")
    out[i] = symbol_list[position]
    position += step[position]
  if position > total or (total - position) >= 8 or bits[position:].any():
    raise CorruptStream(
        f"{count} symbols end at bit {position} of {total}: the stream is "
        "longer, shorter or padded with ones")
  return out
