"""Space-conscious storage of pruned, shared params: codebooks, centroid
indices and relative positions, Huffman coded (Deep Compression, sections
2 to 4; Marino et al. 2020).

Every shared leaf is stored as

- its **codebook**: ``2**bits`` float32 centroids;
- the **indices** of its kept weights, in row-major order;
- its **sparse positions** as *relative indices*: for every kept weight,
  the number of pruned weights skipped since the previous kept one (since
  the leaf's start for the first), in ``gap_bits`` bits.  A gap of
  ``2**gap_bits - 1`` or more is bridged by *fillers*: the largest symbol,
  ``2**gap_bits - 1``, stands for that many skipped weights and no kept
  weight, so a filler carries no index (Han et al. put a zero weight there
  instead).  Positions after the last kept weight need nothing: the shape
  is stored.  Han et al. give conv layers 8 bits of gap and dense layers 5;
  so does the default here (``gap_bits=None``: 8 for leaves of 3 or more
  dimensions, 5 for the others).

in one of two encodings:

- ``"shared"``: indices in ``bits`` bits and gaps in ``gap_bits`` bits
  each, packed most significant bit first (pruning and quantisation, the
  "P+Q" columns of Han et al.'s tables);
- ``"huffman"``: indices and gaps each with its own canonical Huffman code
  (section 4), stored as one byte of code length per symbol (``2**bits``
  for the indices, ``2**gap_bits`` for the gaps) and the packed codes
  ("P+Q+H").

Leaves that share no codebook (biases) are stored dense, in their dtype.
Round trips are exact: :func:`decompress` gives back the codebooks, the
indices and the masks of :func:`jaxprune.sharing.codebooks` as they were,
so :func:`jaxprune.sharing.shared_params` gives the same params bit for bit.

References:
  Han, Mao and Dally, "Deep Compression: Compressing Deep Neural Networks
  with Pruning, Trained Quantization and Huffman Coding", ICLR 2016,
  https://arxiv.org/abs/1510.00149

  Marinò, Ghidoli, Frasca and Malchiodi, "Compression strategies and
  space-conscious representations for deep neural networks", ICPR 2020,
  https://arxiv.org/abs/2007.07967
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from typing import IO
from typing import Any
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from jaxprune import _nested
from jaxprune import _sharing_huffman
from jaxprune import _sharing_kmeans
from jaxprune import _storage
from jaxprune import _trees

ENCODINGS = ("shared", "huffman")
"""The encodings of shared leaves: ``"shared"`` (fixed widths) and
``"huffman"``."""
_FILE_VERSION = 1
_META_KEY = "jaxprune_sharing.json"

GapBits = int | Callable[[_nested.Path, Any], int] | None


def default_gap_bits(shape: tuple[int, ...]) -> int:
  """Han et al.'s relative-index widths: 8 bits for conv kernels (3 or more
  dimensions), 5 for dense kernels and vectors.

  Example:
    >>> from jaxprune import sharing
    >>> sharing.default_gap_bits((5, 5, 20, 50)), sharing.default_gap_bits((784, 300))
    (8, 5)
  """
  return 8 if len(shape) >= 3 else 5


class SharedLeaf(NamedTuple):
  """One leaf of a :class:`CompressedShared`.

  Attributes:
    path: the keys that lead to the leaf, e.g. ``('Dense_0', 'kernel')``.
    shape: its shape.
    dtype: its dtype's name.
    encoding: ``'dense'``, ``'shared'`` or ``'huffman'``.
    bits: index bits (``None`` when dense).
    gap_bits: relative-index bits (``None`` when dense).
    kept: the kept weights (``None`` when dense).
    entries: the gap symbols, kept weights and fillers (``None`` when dense).
    arrays: numpy arrays by name: ``values`` when dense; else ``codebook``
      (float32), ``indices`` and ``gaps`` (packed uint8), and for Huffman
      ``index_lengths`` and ``gap_lengths`` (uint8 code lengths).
  """

  path: _nested.Path
  shape: tuple[int, ...]
  dtype: str
  encoding: str
  bits: int | None
  gap_bits: int | None
  kept: int | None
  entries: int | None
  arrays: dict[str, np.ndarray]

  @property
  def nbytes(self) -> int:
    """The bytes of its arrays."""
    return sum(int(a.nbytes) for a in self.arrays.values())


class CompressedShared(NamedTuple):
  """What :func:`compress` returns.

  Attributes:
    skeleton: the params' nested dicts with each leaf's index in ``leaves``.
    leaves: one :class:`SharedLeaf` per leaf, in JAX's order.
  """

  skeleton: Any
  leaves: tuple[SharedLeaf, ...]


def gap_symbols(mask: np.ndarray, gap_bits: int) -> np.ndarray:
  """The relative-index symbols of a mask, row-major: per kept weight the
  pruned weights skipped before it, with fillers (``2**gap_bits - 1``, each
  skipping that many) for longer gaps.

  Example:
    >>> import numpy as np
    >>> from jaxprune import sharing
    >>> mask = np.array([False, True, True] + [False] * 9 + [True])
    >>> sharing.gap_symbols(mask, 2).tolist()  # gaps 1, 0, 9 = 3 + 3 + 3 + 0
    [1, 0, 3, 3, 3, 0]
  """
  filler = 2**gap_bits - 1
  positions = np.flatnonzero(np.asarray(mask).reshape(-1))
  gaps = np.diff(np.concatenate([[-1], positions])) - 1
  fillers = gaps // filler
  ends = np.cumsum(fillers + 1)
  symbols = np.full(int(ends[-1]) if ends.size else 0, filler, np.int64)
  symbols[ends - 1] = gaps % filler
  return symbols


def _positions(symbols: np.ndarray, gap_bits: int, size: int) -> np.ndarray:
  filler = 2**gap_bits - 1
  entry = symbols < filler
  if symbols.size and not entry[-1]:
    raise _sharing_huffman.CorruptStream("gaps that end with a filler")
  advance = np.where(entry, symbols + 1, filler)
  positions = (np.cumsum(advance) - 1)[entry]
  if positions.size and positions[-1] >= size:
    raise _sharing_huffman.CorruptStream(f"a position past the leaf's {size} entries")
  return positions


def _leaf_gap_bits(gap_bits: GapBits, path, book, caller) -> int:
  shape = tuple(book.indices.shape)
  value = (default_gap_bits(shape) if gap_bits is None
           else gap_bits(path, book) if callable(gap_bits) else gap_bits)
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not (
      1 <= value <= 16):
    raise ValueError(
        f"{caller}: gap_bits for {_trees.path_string(path)} must be an integer "
        f"from 1 to 16, got {value!r}")
  return int(value)


def _encode_leaf(book: _sharing_kmeans.Codebook, huffman: bool, gap_bits: int
                 ) -> tuple[dict[str, np.ndarray], int, int]:
  mask = np.asarray(book.mask).reshape(-1)
  indices = np.asarray(book.indices).reshape(-1)[mask].astype(np.int64)
  gaps = gap_symbols(mask, gap_bits)
  bits = book.bits
  arrays = {"codebook": np.asarray(book.centroids, np.float32)}
  if huffman:
    index_lengths = _sharing_huffman.code_lengths(np.bincount(indices, minlength=2**bits))
    gap_lengths = _sharing_huffman.code_lengths(np.bincount(gaps, minlength=2**gap_bits))
    arrays.update(index_lengths=index_lengths, gap_lengths=gap_lengths)
  else:
    index_lengths = _sharing_huffman.fixed_lengths(bits)
    gap_lengths = _sharing_huffman.fixed_lengths(gap_bits)
  arrays["indices"] = _sharing_huffman.encode(indices, index_lengths)
  arrays["gaps"] = _sharing_huffman.encode(gaps, gap_lengths)
  return arrays, int(mask.sum()), int(gaps.size)


def compress(shared: _sharing_kmeans.SharedWeights, *, huffman: bool = True,
             gap_bits: GapBits = None) -> CompressedShared:
  """Shared params in the compact form that :func:`decompress` inverts.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import jaxprune
    >>> from jaxprune import sharing
    >>> params = {'w': jax.random.normal(jax.random.key(0), (300, 100))}
    >>> masks = jaxprune.prune_once(params, sparsity=0.9)
    >>> shared = sharing.codebooks(params, masks, bits=4)
    >>> packed = sharing.compress(shared)
    >>> leaf = packed.leaves[0]
    >>> leaf.encoding, leaf.kept, sorted(leaf.arrays)
    ('huffman', 3000, ['codebook', 'gap_lengths', 'gaps', 'index_lengths', 'indices'])
    >>> back = sharing.shared_params(sharing.decompress(packed))
    >>> bool(jnp.array_equal(back['w'], sharing.shared_params(shared)['w']))
    True

  Args:
    shared: what :func:`jaxprune.sharing.codebooks` or
      :func:`jaxprune.sharing.fine_tuned` returns.
    huffman: Huffman code the indices and the gaps (``"huffman"``), or
      pack them in fixed widths (``"shared"``).
    gap_bits: the bits of a relative index: one for every leaf, a function
      ``(path, codebook) -> int``, or ``None`` for Han et al.'s 8 bits for
      conv kernels and 5 for the others.

  Returns:
    A :class:`CompressedShared` of numpy arrays.
  """
  caller = "jaxprune.sharing.compress"
  if not isinstance(shared, _sharing_kmeans.SharedWeights):
    raise TypeError(
        f"{caller}: shared must be the SharedWeights of jaxprune.sharing.codebooks, "
        f"got {type(shared).__name__}")
  skeleton, leaves = _nested.flatten(shared.params, caller)
  books = dict(_book_items(shared.codebooks, ()))
  encoded = []
  for path, leaf in leaves:
    values = np.asarray(leaf)
    common = (path, tuple(values.shape), np.dtype(values.dtype).name)
    book = books.get(path)
    if book is None:
      encoded.append(SharedLeaf(*common, "dense", None, None, None, None,
                                {"values": values}))
      continue
    width = _leaf_gap_bits(gap_bits, path, book, caller)
    arrays, kept, entries = _encode_leaf(book, huffman, width)
    encoded.append(SharedLeaf(*common, "huffman" if huffman else "shared",
                              book.bits, width, kept, entries, arrays))
  return CompressedShared(skeleton, tuple(encoded))


def _book_items(node, path):
  if isinstance(node, _sharing_kmeans.Codebook):
    yield path, node
  elif isinstance(node, dict):
    for key, value in node.items():
      yield from _book_items(value, path + (key,))


def _decode_leaf(leaf: SharedLeaf) -> _sharing_kmeans.Codebook:
  size, k = math.prod(leaf.shape), 2**leaf.bits
  arrays = leaf.arrays
  codebook = arrays["codebook"]
  if codebook.shape != (k,) or codebook.dtype != np.float32:
    raise _sharing_huffman.CorruptStream(
        f"a codebook of {codebook.shape} {codebook.dtype}, not ({k},) float32")
  if leaf.encoding == "huffman":
    index_lengths, gap_lengths = arrays["index_lengths"], arrays["gap_lengths"]
    if index_lengths.shape != (k,) or gap_lengths.shape != (2**leaf.gap_bits,):
      raise _sharing_huffman.CorruptStream("code lengths for another alphabet")
  elif leaf.encoding == "shared":
    index_lengths = _sharing_huffman.fixed_lengths(leaf.bits)
    gap_lengths = _sharing_huffman.fixed_lengths(leaf.gap_bits)
  else:
    raise _sharing_huffman.CorruptStream(f"unknown encoding {leaf.encoding!r}")
  indices = _sharing_huffman.decode(arrays["indices"], index_lengths, leaf.kept)
  gaps = _sharing_huffman.decode(arrays["gaps"], gap_lengths, leaf.entries)
  positions = _positions(gaps, leaf.gap_bits, size)
  if positions.size != leaf.kept:
    raise _sharing_huffman.CorruptStream(
        f"{positions.size} positions for {leaf.kept} kept weights")
  mask = np.zeros(size, bool)
  mask[positions] = True
  full = np.zeros(size, _sharing_kmeans.index_dtype(leaf.bits))
  full[positions] = indices
  return _sharing_kmeans.Codebook(
      jnp.asarray(codebook), jnp.asarray(full.reshape(leaf.shape)),
      jnp.asarray(mask.reshape(leaf.shape)))


def decompress(compressed: CompressedShared) -> _sharing_kmeans.SharedWeights:
  """The :class:`~jaxprune.sharing.SharedWeights` that :func:`compress`
  stored: the same codebooks, indices and masks.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxprune import sharing
    >>> params = {'w': jnp.array([[1.0, 0.0, 0.0, 2.0]]), 'b': jnp.ones(1)}
    >>> masks = {'w': jnp.array([[True, False, False, True]]), 'b': None}
    >>> shared = sharing.decompress(sharing.compress(sharing.codebooks(
    ...     params, masks, bits=1), huffman=False))
    >>> sharing.shared_params(shared)['w'].tolist()
    [[1.0, 0.0, 0.0, 2.0]]

  Args:
    compressed: what :func:`compress` or :func:`load` returns.

  Returns:
    A :class:`~jaxprune.sharing.SharedWeights` (``params`` hold the dense
    leaves as stored and, for shared leaves, zeros of their dtype).

  Raises:
    ValueError: arrays that :func:`compress` cannot have written, naming
      the leaf.
  """
  books, values = [], []
  for leaf in compressed.leaves:
    if leaf.encoding == "dense":
      books.append(None)
      values.append(jnp.asarray(leaf.arrays["values"]))
      continue
    try:
      books.append(_decode_leaf(leaf))
    except (_sharing_huffman.CorruptStream, KeyError, TypeError) as error:
      raise ValueError(
          f"jaxprune.sharing.decompress: the arrays of "
          f"{_trees.path_string(leaf.path)} ({leaf.encoding}, shape {leaf.shape}) "
          f"are inconsistent: {error}; was the file damaged?") from None
    values.append(jnp.zeros(leaf.shape, jnp.dtype(leaf.dtype)))
  return _sharing_kmeans.SharedWeights(
      _nested.unflatten(compressed.skeleton, books),
      _nested.unflatten(compressed.skeleton, values))


# --- sizes -------------------------------------------------------------------


STAGES = ("dense float32", "pruned", "shared", "huffman")
"""The stages of a :class:`CompressionReport`: dense float32, after pruning
(``jaxprune.export``'s CSR), after sharing (fixed widths), after Huffman
coding."""


class Stage(NamedTuple):
  """One column of a :class:`CompressionReport`.

  Attributes:
    name: one of :data:`STAGES`.
    nbytes: the bytes of every leaf at this stage.
    rate: the compression rate, dense float32 bytes / ``nbytes`` (``40.0``
      for Deep Compression's "40x").
  """

  name: str
  nbytes: int
  rate: float


class LeafStages(NamedTuple):
  """One leaf's row of a :class:`CompressionReport`.

  Attributes:
    path: ``'Dense_0/kernel'``.
    shape: the leaf's shape.
    kept: its kept weights (``None`` when it shares no codebook).
    bits: its index bits (``None`` when it shares no codebook).
    nbytes: its bytes at each stage, in the order of :data:`STAGES`.
  """

  path: str
  shape: tuple[int, ...]
  kept: int | None
  bits: int | None
  nbytes: tuple[int, ...]


class CompressionReport(NamedTuple):
  """What :func:`size_report` returns; ``str()`` gives a markdown table of
  bytes per leaf and stage.

  Attributes:
    leaves: one :class:`LeafStages` per leaf.
    stages: one :class:`Stage` per stage, in the order of :data:`STAGES`.
  """

  leaves: tuple[LeafStages, ...]
  stages: tuple[Stage, ...]

  def __str__(self) -> str:
    header = "| leaf | shape | kept | bits | " + " | ".join(
        s.name for s in self.stages) + " |"
    lines = [header, "| --- | --- | ---: | ---: |" + " ---: |" * len(self.stages)]
    for leaf in self.leaves:
      shape = "x".join(str(s) for s in leaf.shape) or "()"
      kept = "" if leaf.kept is None else str(leaf.kept)
      bits = "" if leaf.bits is None else str(leaf.bits)
      lines.append(f"| {leaf.path} | {shape} | {kept} | {bits} | "
                   + " | ".join(str(n) for n in leaf.nbytes) + " |")
    lines.append("| total | | | | " + " | ".join(
        str(s.nbytes) for s in self.stages) + " |")
    lines.append("| compression rate | | | | " + " | ".join(
        f"{s.rate:.1f}x" for s in self.stages) + " |")
    return "\n".join(lines)


def size_report(shared: _sharing_kmeans.SharedWeights, *,
                gap_bits: GapBits = None) -> CompressionReport:
  """The bytes of ``shared`` at each stage of Deep Compression, per leaf
  and in total, with the compression rate of each against float32.

  Stages: dense float32 (4 bytes a weight); pruned, in
  :func:`jaxprune.export.compress`'s ``"csr"`` form (values in their dtype,
  one-byte relative indices, row pointers); shared, with indices and gaps
  in fixed widths; Huffman coded.  Leaves that share no codebook count
  their dense bytes at every stage but the first.  As in
  :func:`jaxprune.export.size_report`, only arrays count (no file headers,
  shapes or counts).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import jaxprune
    >>> from jaxprune import sharing
    >>> params = {'w': jax.random.normal(jax.random.key(0), (300, 100))}
    >>> masks = jaxprune.prune_once(params, sparsity=0.9)
    >>> report = sharing.size_report(sharing.codebooks(params, masks, bits=4))
    >>> print(report)
    | leaf | shape | kept | bits | dense float32 | pruned | shared | huffman |
    | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |
    | w | 300x100 | 3000 | 4 | 120000 | 16204 | 3514 | 2999 |
    | total | | | | 120000 | 16204 | 3514 | 2999 |
    | compression rate | | | | 1.0x | 7.4x | 34.1x | 40.0x |

  Args:
    shared: what :func:`jaxprune.sharing.codebooks` or
      :func:`jaxprune.sharing.fine_tuned` returns.
    gap_bits: as for :func:`compress`.

  Returns:
    A :class:`CompressionReport`.
  """
  params = _sharing_kmeans.shared_params(shared)
  masks = shared_masks(shared)
  pruned = _storage.size_report(_storage.compress(params, masks, "csr"))
  fixed = compress(shared, huffman=False, gap_bits=gap_bits)
  coded = compress(shared, huffman=True, gap_bits=gap_bits)
  leaves = []
  for p, f, h in zip(pruned.leaves, fixed.leaves, coded.leaves):
    leaves.append(LeafStages(p.path, p.shape, h.kept, h.bits,
                             (p.dense_float32_bytes, p.nbytes, f.nbytes, h.nbytes)))
  totals = [sum(leaf.nbytes[i] for leaf in leaves) for i in range(len(STAGES))]
  stages = tuple(Stage(name, total, totals[0] / total if total else math.nan)
                 for name, total in zip(STAGES, totals))
  return CompressionReport(tuple(leaves), stages)


def shared_masks(shared: _sharing_kmeans.SharedWeights) -> Any:
  """The masks of ``shared``: the nesting of its params, each shared leaf's
  mask (True = kept), ``None`` elsewhere.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxprune import sharing
    >>> params = {'w': jnp.array([[1.0, 2.0]]), 'b': jnp.ones(2)}
    >>> masks = sharing.shared_masks(sharing.codebooks(params, None, bits=1))
    >>> masks['b'], masks['w'].tolist()
    (None, [[True, True]])
  """
  return _nested_map(shared.codebooks, lambda book: None if book is None else book.mask)


def _nested_map(node, fn):
  if isinstance(node, dict):
    return {key: _nested_map(value, fn) for key, value in node.items()}
  return fn(node)


# --- files -------------------------------------------------------------------


def save(file: str | os.PathLike | IO[bytes], compressed: CompressedShared) -> None:
  """Writes ``compressed`` to a ``.npz`` archive (``np.savez``, no pickle).

  The archive holds every array and one JSON text (key
  ``jaxprune_sharing.json``) with the tree and each leaf's path, shape,
  dtype, encoding, bits and counts; dtypes numpy lacks (bfloat16) are
  stored as unsigned integers of their width.

  Example:
    >>> import io, jax.numpy as jnp
    >>> from jaxprune import sharing
    >>> params = {'w': jnp.array([[1.0, 0.0, 3.0]]), 'b': jnp.ones(3, jnp.bfloat16)}
    >>> masks = {'w': jnp.array([[True, False, True]]), 'b': None}
    >>> file = io.BytesIO()
    >>> sharing.save(file, sharing.compress(sharing.codebooks(params, masks, bits=1)))
    >>> _ = file.seek(0)
    >>> back = sharing.shared_params(sharing.decompress(sharing.load(file)))
    >>> back['w'].tolist(), back['b'].dtype
    ([[1.0, 0.0, 3.0]], dtype(bfloat16))

  Args:
    file: a path (numpy appends ``.npz`` if it lacks it) or a binary file.
    compressed: what :func:`compress` returns.
  """
  arrays, leaves = {}, []
  for i, leaf in enumerate(compressed.leaves):
    stored = {}
    for name, array in leaf.arrays.items():
      array = np.asarray(array)
      key = f"{i}.{name}"
      arrays[key] = _storage.storable(array)
      stored[name] = {"key": key, "dtype": np.dtype(array.dtype).name}
    leaves.append({"path": list(leaf.path), "shape": list(leaf.shape),
                   "dtype": leaf.dtype, "encoding": leaf.encoding,
                   "bits": leaf.bits, "gap_bits": leaf.gap_bits,
                   "kept": leaf.kept, "entries": leaf.entries, "arrays": stored})
  meta = {"jaxprune_sharing": _FILE_VERSION,
          "skeleton": _nested.to_json(compressed.skeleton), "leaves": leaves}
  np.savez(file, **arrays, **{_META_KEY: np.array(json.dumps(meta))})


def load(file: str | os.PathLike | IO[bytes]) -> CompressedShared:
  """Reads what :func:`save` wrote (``np.load(..., allow_pickle=False)``).

  Example:
    >>> import os, tempfile, jax.numpy as jnp
    >>> from jaxprune import sharing
    >>> params = {'w': jnp.array([[1.0, 2.0], [3.0, 4.0]])}
    >>> path = os.path.join(tempfile.mkdtemp(), 'model.npz')
    >>> sharing.save(path, sharing.compress(sharing.codebooks(params, None, bits=2)))
    >>> sharing.load(path).leaves[0].encoding
    'huffman'

  Args:
    file: the ``.npz`` path or a binary file.

  Returns:
    The :class:`CompressedShared`, as saved.

  Raises:
    ValueError: a file that :func:`save` did not write, of another version,
      or damaged.
  """
  caller = "jaxprune.sharing.load"
  with np.load(file, allow_pickle=False) as archive:
    if _META_KEY not in archive.files:
      raise ValueError(
          f"{caller}: {file!s} holds no {_META_KEY}; it was not written by "
          "jaxprune.sharing.save")
    meta = json.loads(str(archive[_META_KEY]))
    if meta.get("jaxprune_sharing") != _FILE_VERSION:
      raise ValueError(
          f"{caller}: {file!s} has version {meta.get('jaxprune_sharing')!r}; "
          f"this jaxprune reads version {_FILE_VERSION}")
    try:
      leaves = tuple(_leaf_from(entry, archive) for entry in meta["leaves"])
      skeleton = _nested.from_json(meta["skeleton"])
    except (KeyError, TypeError, ValueError, AttributeError) as error:
      raise ValueError(
          f"{caller}: the description in {file!s} does not read "
          f"({type(error).__name__}: {error}); the file is damaged") from None
  return CompressedShared(skeleton, leaves)


def _leaf_from(entry: dict, archive: Any) -> SharedLeaf:
  arrays = {}
  for name, stored in entry["arrays"].items():
    array = archive[stored["key"]]
    dtype = jnp.dtype(stored["dtype"])
    arrays[name] = array if array.dtype == dtype else array.view(dtype)
  return SharedLeaf(tuple(entry["path"]), tuple(entry["shape"]), entry["dtype"],
                    entry["encoding"], entry["bits"], entry["gap_bits"],
                    entry["kept"], entry["entries"], arrays)
