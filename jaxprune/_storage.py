"""Compact, exact storage of pruned params: ``compress``, ``decompress``,
``size_report``, ``save`` and ``load``.

Every masked leaf is stored in one format, every other leaf dense:

- ``"bitmask"``: the mask packed 8 entries to a byte (``np.packbits``,
  row-major, first entry in the most significant bit) and the kept values
  in row-major order.
- ``"csr"``: compressed sparse rows of the leaf seen as a matrix (rows: all
  axes but the last, flattened row-major; columns: the last axis), with
  *relative* column indices as in Deep Compression (Han et al. 2016): each
  stored entry keeps, in one ``uint8``, the number of columns skipped since
  the previous stored entry of its row (since the row's start for the
  first); a gap over 255 is bridged by filler entries of value 0, each
  skipping 255 columns and standing on a pruned column.  Row pointers
  (``uint32``) give each row's first stored entry.
- ``"n_of_m"``: for masks that keep at most ``n`` of every ``m``
  consecutive weights along the reduction axis (groups of ``m`` rows
  within a column of the same matrix), exactly ``n`` values per group
  (zeros on pruned positions where a group keeps fewer) and each one's
  position in its group in ``ceil(log2 m)`` bits, packed most significant
  bit first: 2 bits per position at 2:4, as NVIDIA's sparse tensor cores
  store it.

Round trips are exact: :func:`decompress` returns the masked params bit for
bit (``-0.0``, kept weights that are exactly 0, every dtype).

References:
  Han, Mao and Dally, "Deep Compression: Compressing Deep Neural Networks
  with Pruning, Trained Quantization and Huffman Coding", ICLR 2016,
  https://arxiv.org/abs/1510.00149

  Mishra et al., "Accelerating Sparse Deep Neural Networks", 2021,
  https://arxiv.org/abs/2104.08378
"""

from __future__ import annotations

import json
import math
import os
from typing import IO
from typing import Any
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from jaxprune import _codecs
from jaxprune import _nested
from jaxprune import _trees

FORMATS = ("bitmask", "csr", "n_of_m")
"""The names of the storage formats of :func:`compress`: ``"bitmask"``,
``"csr"`` and ``"n_of_m"``."""
_FILE_VERSION = 1
_META_KEY = "jaxprune_export.json"


class EncodedLeaf(NamedTuple):
  """One leaf of the params in a :class:`Compressed`.

  Attributes:
    path: the keys that lead to the leaf, e.g. ``('Dense_0', 'kernel')``.
    shape: its shape.
    dtype: its dtype's name (``'float32'``, ``'bfloat16'``...).
    encoding: ``'dense'`` for a leaf without a mask, else the format.
    kept: the number of weights its mask keeps (``None`` when dense).
    arrays: the encoded numpy arrays, by name: ``values`` (the leaf's
      dtype) for every encoding; ``bits`` for a bitmask; ``gaps`` and
      ``row_pointers`` for CSR; ``positions`` for n:m.
  """

  path: _nested.Path
  shape: tuple[int, ...]
  dtype: str
  encoding: str
  kept: int | None
  arrays: dict[str, np.ndarray]

  @property
  def nbytes(self) -> int:
    """The bytes of its arrays."""
    return sum(int(a.nbytes) for a in self.arrays.values())


class Compressed(NamedTuple):
  """Pruned params in a compact, exact form: what :func:`compress` returns.

  Attributes:
    format: ``'bitmask'``, ``'csr'`` or ``'n_of_m'``: how the masked leaves
      are stored.
    n: kept per group for ``'n_of_m'``, else ``None``.
    m: the group size for ``'n_of_m'``, else ``None``.
    skeleton: the params' nested dicts, with each leaf's index in
      ``leaves`` in its place.
    leaves: one :class:`EncodedLeaf` per leaf, in JAX's order (keys sorted).
  """

  format: str
  n: int | None
  m: int | None
  skeleton: Any
  leaves: tuple[EncodedLeaf, ...]


def _check_format(format: Any, n: Any, m: Any, caller: str) -> None:
  if format not in FORMATS:
    raise ValueError(
        f"{caller}: unknown format {format!r}; the formats are "
        f"{', '.join(repr(f) for f in FORMATS)}")
  if format != "n_of_m":
    if n is not None or m is not None:
      raise ValueError(
          f"{caller}: n and m are for format='n_of_m' only, got n={n!r}, "
          f"m={m!r} with format={format!r}")
    return
  for name, value in (("n", n), ("m", m)):
    if isinstance(value, bool) or not isinstance(value, int):
      raise TypeError(
          f"{caller}: format='n_of_m' needs integers n and m (n kept of every "
          f"m, e.g. n=2, m=4), got {name}={value!r}")
  if not 2 <= m or not 1 <= n <= m:
    raise ValueError(
        f"{caller}: format='n_of_m' needs 1 <= n <= m and m >= 2, got n={n}, "
        f"m={m}")


def compress(params: Any, masks: Any, format: str = "bitmask", *,
             n: int | None = None, m: int | None = None) -> Compressed:
  """The masked params in a compact form that :func:`decompress` inverts
  bit for bit.

  Example:
    >>> import numpy as np, jax.numpy as jnp
    >>> from jaxprune import export
    >>> params = {'dense': {'kernel': jnp.arange(8.0).reshape(4, 2),
    ...                     'bias': jnp.ones(2)}}
    >>> masks = {'dense': {'kernel': jnp.array([[True, False], [False, True],
    ...                                         [False, False], [True, False]]),
    ...                    'bias': None}}
    >>> packed = export.compress(params, masks, "n_of_m", n=2, m=4)
    >>> kernel = packed.leaves[1]
    >>> kernel.path, kernel.encoding, kernel.arrays['values'].tolist()
    (('dense', 'kernel'), 'n_of_m', [[0.0, 0.0], [6.0, 3.0]])
    >>> restored = export.decompress(packed)
    >>> restored['dense']['kernel'].tolist()
    [[0.0, 0.0], [0.0, 3.0], [0.0, 0.0], [6.0, 0.0]]

  Args:
    params: nested dicts of arrays (Linen params), or Flax NNX params: an
      ``nnx.Module``, an ``nnx.State`` or its plain form
      ``nnx.to_pure_dict(nnx.state(model, nnx.Param))``; keys are strings
      or integers.
    masks: the nesting of ``params`` with a boolean array (True = kept) or
      ``None`` at every leaf, as :func:`jaxprune.masks_of` and
      :func:`jaxprune.prune_once` return.
    format: ``"bitmask"``, ``"csr"`` or ``"n_of_m"`` (see the module
      docstring).
    n: for ``"n_of_m"``, the most weights kept per group.
    m: for ``"n_of_m"``, the group size along the reduction axis.

  Returns:
    A :class:`Compressed` of numpy arrays on the host.

  Raises:
    ValueError: an unknown format; masks that do not fit the params (naming
      the leaf); for ``"n_of_m"``, a mask that keeps more than ``n`` in a
      group or a reduction size that ``m`` does not divide (naming the leaf).
    TypeError: a mask that is not boolean; params that are not nested dicts
      of arrays.
  """
  caller = "jaxprune.export.compress"
  _check_format(format, n, m, caller)
  skeleton, leaves = _nested.paired(params, masks, caller)
  encoded = []
  for path, leaf, mask in leaves:
    values = np.asarray(leaf)
    common = (path, tuple(values.shape), np.dtype(values.dtype).name)
    if mask is None:
      encoded.append(EncodedLeaf(*common, "dense", None, {"values": values}))
      continue
    where = f"{caller}: {_trees.path_string(path)}"
    arrays = _codecs.encode(format, values, mask, n=n, m=m, where=where)
    encoded.append(EncodedLeaf(*common, format, int(mask.sum()), arrays))
  return Compressed(format, n, m, skeleton, tuple(encoded))


def _decoded(leaf: EncodedLeaf, compressed: Compressed) -> np.ndarray:
  dtype = jnp.dtype(leaf.dtype)
  if leaf.encoding == "dense":
    values = leaf.arrays["values"]
    if values.shape != leaf.shape:
      raise _codecs.CorruptError(f"values of shape {values.shape}")
    return values
  return _codecs.decode(leaf.encoding, leaf.arrays, leaf.shape, dtype,
                        n=compressed.n, m=compressed.m)


def decompress(compressed: Compressed) -> Any:
  """The masked params that :func:`compress` stored, bit for bit.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxprune import export
    >>> params = {'w': jnp.array([[-0.0, 2.0], [3.0, 4.0]], jnp.bfloat16)}
    >>> masks = {'w': jnp.array([[True, False], [False, True]])}
    >>> w = export.decompress(export.compress(params, masks, "csr"))['w']
    >>> w.dtype, w.tolist(), bool(jnp.signbit(w[0, 0]))
    (dtype(bfloat16), [[-0.0, 0.0], [0.0, 4.0]], True)

  Args:
    compressed: what :func:`compress` or :func:`load` returns.

  Returns:
    Nested dicts of JAX arrays: the params with the pruned weights exactly
    ``+0.0`` and every other bit as given (for Flax NNX params, the plain
    form; ``nnx.replace_by_pure_dict`` puts it into a state).

  Raises:
    ValueError: arrays that :func:`compress` cannot have written (a
      damaged file), naming the leaf.
  """
  values = []
  for leaf in compressed.leaves:
    try:
      values.append(jnp.asarray(_decoded(leaf, compressed)))
    except _codecs.CorruptError as error:
      raise ValueError(
          f"jaxprune.export.decompress: the arrays of "
          f"{_trees.path_string(leaf.path)} ({leaf.encoding}, shape "
          f"{leaf.shape}) are inconsistent: {error}; was the file damaged?"
      ) from None
  return _nested.unflatten(compressed.skeleton, values)


class LeafSize(NamedTuple):
  """One leaf's line of a :class:`SizeReport`.

  Attributes:
    path: the leaf's path, ``'Dense_0/kernel'``.
    encoding: ``'dense'`` or the format.
    shape: the leaf's shape.
    kept: the weights its mask keeps (``None`` when dense).
    nbytes: the bytes of its encoded arrays.
    dense_float32_bytes: ``4 * size``, the bytes of the leaf as float32.
    ratio: ``nbytes / dense_float32_bytes`` (NaN for an empty leaf).
  """

  path: str
  encoding: str
  shape: tuple[int, ...]
  kept: int | None
  nbytes: int
  dense_float32_bytes: int
  ratio: float


def _ratio(part: int, whole: int) -> float:
  return part / whole if whole else math.nan


class SizeReport(NamedTuple):
  """What :func:`size_report` returns; ``str()`` gives a markdown table.

  Attributes:
    leaves: one :class:`LeafSize` per leaf, in JAX's order (keys sorted).
    nbytes: the bytes of every leaf's encoded arrays.
    dense_float32_bytes: the bytes of every leaf as float32.
    ratio: ``nbytes / dense_float32_bytes``.
  """

  leaves: tuple[LeafSize, ...]
  nbytes: int
  dense_float32_bytes: int
  ratio: float

  def __str__(self) -> str:
    lines = ["| leaf | encoding | shape | kept | bytes | float32 bytes | ratio |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for leaf in self.leaves:
      kept = "" if leaf.kept is None else str(leaf.kept)
      shape = "x".join(str(s) for s in leaf.shape) or "()"
      lines.append(
          f"| {leaf.path} | {leaf.encoding} | {shape} | {kept} | {leaf.nbytes} "
          f"| {leaf.dense_float32_bytes} | {leaf.ratio:.3f} |")
    lines.append(f"| total | | | | {self.nbytes} | {self.dense_float32_bytes} "
                 f"| {self.ratio:.3f} |")
    return "\n".join(lines)


def size_report(compressed: Compressed) -> SizeReport:
  """The bytes of ``compressed``, per leaf and in total, against float32.

  Bytes count the encoded arrays only; a file from :func:`save` adds the
  zip and ``.npy`` headers and the JSON of the tree (a few hundred bytes
  per leaf).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxprune import export
    >>> params = {'w': jnp.ones((100, 10)), 'b': jnp.ones(10)}
    >>> masks = {'w': jnp.arange(1000).reshape(100, 10) % 10 == 0, 'b': None}
    >>> print(export.size_report(export.compress(params, masks)))
    | leaf | encoding | shape | kept | bytes | float32 bytes | ratio |
    | --- | --- | --- | ---: | ---: | ---: | ---: |
    | b | dense | 10 |  | 40 | 40 | 1.000 |
    | w | bitmask | 100x10 | 100 | 525 | 4000 | 0.131 |
    | total | | | | 565 | 4040 | 0.140 |

  Args:
    compressed: what :func:`compress` or :func:`load` returns.

  Returns:
    A :class:`SizeReport`.
  """
  leaves = []
  for leaf in compressed.leaves:
    dense = 4 * math.prod(leaf.shape)
    leaves.append(LeafSize(_trees.path_string(leaf.path), leaf.encoding,
                           leaf.shape, leaf.kept, leaf.nbytes, dense,
                           _ratio(leaf.nbytes, dense)))
  total = sum(leaf.nbytes for leaf in leaves)
  dense = sum(leaf.dense_float32_bytes for leaf in leaves)
  return SizeReport(tuple(leaves), total, dense, _ratio(total, dense))


def storable(array: np.ndarray) -> np.ndarray:
  """``array`` as numpy writes and reads it without pickle: dtypes numpy
  does not know itself (bfloat16, float8...) as unsigned integers of the
  same width, bit for bit."""
  if array.dtype.isbuiltin == 1:
    return array
  return array.view(np.dtype(f"u{array.dtype.itemsize}"))


def save(file: str | os.PathLike | IO[bytes], compressed: Compressed) -> None:
  """Writes ``compressed`` to a ``.npz`` archive (``np.savez``, no pickle).

  The archive holds every encoded array, dtypes numpy lacks (bfloat16)
  as unsigned integers of their width, and one JSON text (key
  ``jaxprune_export.json``) with the format, the nesting of the params and
  each leaf's path, shape, dtype and encoding.  :func:`load` reads it back
  bit for bit.

  Example:
    >>> import os, tempfile, jax.numpy as jnp
    >>> from jaxprune import export
    >>> params = {'w': jnp.array([[1.0, 2.0], [3.0, 4.0]], jnp.bfloat16)}
    >>> masks = {'w': jnp.array([[True, False], [False, True]])}
    >>> path = os.path.join(tempfile.mkdtemp(), 'model.npz')
    >>> export.save(path, export.compress(params, masks))
    >>> export.decompress(export.load(path))['w'].tolist()
    [[1.0, 0.0], [0.0, 4.0]]

  Args:
    file: a path (numpy appends ``.npz`` if it lacks it) or a binary file.
    compressed: what :func:`compress` returns.
  """
  arrays, leaves = {}, []
  for i, leaf in enumerate(compressed.leaves):
    stored = {}
    for name, array in leaf.arrays.items():
      key = f"{i}.{name}"
      arrays[key] = storable(np.asarray(array))
      stored[name] = {"key": key, "dtype": np.dtype(array.dtype).name}
    leaves.append({"path": list(leaf.path), "shape": list(leaf.shape),
                   "dtype": leaf.dtype, "encoding": leaf.encoding,
                   "kept": leaf.kept, "arrays": stored})
  meta = {"jaxprune_export": _FILE_VERSION, "format": compressed.format,
          "n": compressed.n, "m": compressed.m,
          "skeleton": _nested.to_json(compressed.skeleton), "leaves": leaves}
  np.savez(file, **arrays, **{_META_KEY: np.array(json.dumps(meta))})


def load(file: str | os.PathLike | IO[bytes]) -> Compressed:
  """Reads what :func:`save` wrote (``np.load(..., allow_pickle=False)``).

  Example:
    A file object works as a path does.

    >>> import io, jax.numpy as jnp
    >>> from jaxprune import export
    >>> params = {'layers': {0: {'kernel': jnp.array([[1.0, -2.0]])}}}
    >>> masks = {'layers': {0: {'kernel': jnp.array([[False, True]])}}}
    >>> file = io.BytesIO()
    >>> export.save(file, export.compress(params, masks, 'csr'))
    >>> _ = file.seek(0)
    >>> loaded = export.load(file)
    >>> loaded.leaves[0].path, loaded.leaves[0].arrays['gaps'].tolist()
    (('layers', 0, 'kernel'), [1])

  Args:
    file: the ``.npz`` path or a binary file.

  Returns:
    The :class:`Compressed`, bit for bit as saved.

  Raises:
    ValueError: a file that :func:`save` did not write, or of another
      version.
  """
  caller = "jaxprune.export.load"
  with np.load(file, allow_pickle=False) as archive:
    if _META_KEY not in archive.files:
      raise ValueError(
          f"{caller}: {file!s} holds no {_META_KEY}; it was not written by "
          "jaxprune.export.save")
    meta = json.loads(str(archive[_META_KEY]))
    if meta.get("jaxprune_export") != _FILE_VERSION:
      raise ValueError(
          f"{caller}: {file!s} has export version "
          f"{meta.get('jaxprune_export')!r}; this jaxprune reads version "
          f"{_FILE_VERSION}")
    try:
      leaves = tuple(_leaf_from(entry, archive) for entry in meta["leaves"])
      skeleton = _nested.from_json(meta["skeleton"])
      format, n, m = meta["format"], meta["n"], meta["m"]
    except (KeyError, TypeError, ValueError, AttributeError) as error:
      raise ValueError(
          f"{caller}: the description in {file!s} does not read "
          f"({type(error).__name__}: {error}); the file is damaged") from None
  indices = sorted(_leaf_indices(skeleton))
  if indices != list(range(len(leaves))):
    raise ValueError(
        f"{caller}: the tree in {file!s} does not index its {len(leaves)} "
        "leaves once each; the file is damaged")
  return Compressed(format, n, m, skeleton, leaves)


def _leaf_from(entry: dict, archive: Any) -> EncodedLeaf:
  """One leaf's description in the JSON, with its arrays from the archive."""
  arrays = {}
  for name, stored in entry["arrays"].items():
    array = archive[stored["key"]]
    dtype = jnp.dtype(stored["dtype"])
    arrays[name] = array if array.dtype == dtype else array.view(dtype)
  return EncodedLeaf(tuple(entry["path"]), tuple(entry["shape"]), entry["dtype"],
                     entry["encoding"], entry["kept"], arrays)


def _leaf_indices(skeleton: Any) -> list[int]:
  if isinstance(skeleton, dict):
    return [i for value in skeleton.values() for i in _leaf_indices(value)]
  return [skeleton]
