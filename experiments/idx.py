"""The original IDX files of MNIST and Fashion-MNIST: checksums and parsing.

Every file is checked against its published sha256 (:data:`SHA256`) before
it is read; :func:`fetch` finds the four files of a data set in a local
folder or downloads them, :func:`read_examples` reads one split's images and
labels from them.

Example (the shared files of this project, where they are)::

  from experiments import idx

  path = idx.check_sha256("/work/shared/data/mnist/t10k-labels-idx1-ubyte.gz",
                          idx.SHA256["mnist"]["t10k-labels-idx1-ubyte.gz"])
  idx.read_idx(path, idx.LABELS_MAGIC).shape   # (10000,)
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import pathlib

import numpy as np

__all__ = [
    "ChecksumError",
    "FILES",
    "IMAGES_MAGIC",
    "IMAGE_SHAPE",
    "IdxFormatError",
    "LABELS_MAGIC",
    "MissingFileError",
    "NUM_CLASSES",
    "ARRAYS_SHA256",
    "SHA256",
    "URLS",
    "arrays_sha256",
    "check_sha256",
    "fetch",
    "read_examples",
    "read_idx",
]

# The original IDX files: (images, labels) per split.
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_NUM_EXAMPLES = {"train": 60_000, "test": 10_000}
# The shape of one image, [H, W, C], and the number of classes.
IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10

# The published checksums (tfds registers the same for its mnist and
# fashion_mnist builders).
SHA256 = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    },
}
# The sha256 (`arrays_sha256`) of each split's images [N, 28, 28, 1] uint8
# and labels [N] int32, as `read_examples` gives them.  The published
# checksums above pin the files, and so these arrays: a copy of them kept on
# disk (the prepared records, their decoded arrays) is checked against these
# constants of the code, which nothing written to disk can change.  A change
# of the arrays' layout changes them, with this code.
ARRAYS_SHA256 = {
    "mnist": {
        "train": "ecb3b9c31921ecaf9f5bb2c8d32be36457031b2ea052183f186b077ff9876ccf",
        "test": "1d1306e589085ebeb6724f338911a82eeb6463b62ce4a0ec325634351802de1b",
    },
    "fashion_mnist": {
        "train": "8df3d0c47be5c517e85c8d5da5f4e07092802bea55e53338c890628d49aef270",
        "test": "2aa085c2feb6cb427b47acf1eb5453e6c876aeeef62f179267f5511d3a2713fa",
    },
}
# Where they are downloaded from when no local folder has them.
URLS = {
    "mnist": "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "fashion_mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
}

IMAGES_MAGIC = 2051  # unsigned bytes, 3 dimensions
LABELS_MAGIC = 2049  # unsigned bytes, 1 dimension


class ChecksumError(ValueError):
  """A data file does not have its published sha256."""


class MissingFileError(FileNotFoundError):
  """A data file is not where it should be."""


class IdxFormatError(ValueError):
  """A file is not a well-formed (gzipped) IDX file."""


def check_sha256(path: str | os.PathLike, expected: str) -> pathlib.Path:
  """Checks that the file at ``path`` has the sha256 ``expected``.

  Args:
    path: the file.
    expected: its sha256, as 64 hexadecimal digits.

  Returns:
    ``path`` as a :class:`pathlib.Path`.

  Raises:
    ValueError: ``expected`` is not 64 hexadecimal digits (a bad argument,
      not a bad file); upper case is accepted.
    TypeError: ``expected`` is not a str.
    MissingFileError: there is no file at ``path``.
    ChecksumError: the file has another sha256.
  """
  if not isinstance(expected, str):
    raise TypeError(
        f"expected must be a sha256 digest (a str), got {expected!r}")
  if len(expected) != 64 or any(
      c not in "0123456789abcdefABCDEF" for c in expected):
    raise ValueError(
        f"expected must be a sha256 digest of 64 hexadecimal digits, got "
        f"{expected!r}"
    )
  expected = expected.lower()
  path = pathlib.Path(path)
  if not path.is_file():
    raise MissingFileError(
        f"data file {path} not found (expected a file with sha256 {expected})"
    )
  digest = hashlib.sha256()
  with path.open("rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  found = digest.hexdigest()
  if found != expected:
    raise ChecksumError(
        f"data file {path} is corrupt or not the original: expected sha256 "
        f"{expected}, found sha256 {found} ({path.stat().st_size} bytes)"
    )
  return path


def arrays_sha256(images: np.ndarray, labels: np.ndarray) -> str:
  """The sha256 of a split's arrays: their dtypes, shapes and bytes."""
  digest = hashlib.sha256()
  for array in (images, labels):
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    digest.update(np.ascontiguousarray(array).data)
  return digest.hexdigest()


def read_idx(path: str | os.PathLike, magic: int) -> np.ndarray:
  """Reads a gzipped IDX file of unsigned bytes.

  Args:
    path: the ``.gz`` file.
    magic: the expected magic number: 2051 for images, 2049 for labels.

  Returns:
    A ``uint8`` array with the dimensions given in the file's header.

  Raises:
    IdxFormatError: not gzip, another magic number, or a size that does not
      match the header (a truncated file).
  """
  path = pathlib.Path(path)
  try:
    with gzip.open(path, "rb") as f:
      raw = f.read()
  except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
    raise IdxFormatError(f"{path} is not a readable gzip file: {e}") from e
  if len(raw) < 4:
    raise IdxFormatError(f"{path} is too short for an IDX header ({len(raw)} bytes)")
  found = int.from_bytes(raw[:4], "big")
  if found != magic:
    raise IdxFormatError(
        f"{path} has IDX magic number {found}, expected {magic}"
    )
  ndim = magic & 0xFF
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise IdxFormatError(f"{path} is truncated inside its IDX header")
  shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, offset=4))
  expected = header + math.prod(shape)
  if len(raw) != expected:
    raise IdxFormatError(
        f"{path}: the IDX header announces shape {shape}, i.e. {expected} "
        f"bytes, but the file holds {len(raw)} bytes (truncated or corrupt)"
    )
  return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def read_examples(images_path, labels_path, split: str):
  """The images [N, 28, 28, 1] and labels [N] of one split, checked."""
  images = read_idx(images_path, IMAGES_MAGIC)
  labels = read_idx(labels_path, LABELS_MAGIC)
  n = _NUM_EXAMPLES[split]
  if images.shape != (n, 28, 28):
    raise IdxFormatError(
        f"{images_path} holds images of shape {images.shape}, expected "
        f"{(n, 28, 28)}"
    )
  if labels.shape != (n,) or labels.max(initial=0) >= NUM_CLASSES:
    raise IdxFormatError(
        f"{labels_path} holds {labels.shape[0]} labels up to "
        f"{labels.max(initial=0)}, expected {n} labels in 0..9"
    )
  return images[..., None], labels


def fetch(name: str, source_dir: pathlib.Path | None, dl_manager) -> dict:
  """The four checked files of ``name``: from ``source_dir`` if given, else
  downloaded.

  A source directory that was given but does not hold the four files (a
  mistyped path, an incomplete copy) is an error, not a reason to download:
  the download would only be the wrong answer, slowly (or, offline, minutes
  of retries).

  Raises:
    MissingFileError: ``source_dir/name`` lacks some of the files; the
      message names the folder and every missing file.
    ChecksumError: a file without its published sha256.
  """
  checksums = SHA256[name]
  if source_dir is None:
    urls = {f: URLS[name] + f for f in checksums}
    paths = {f: pathlib.Path(p) for f, p in dl_manager.download(urls).items()}
  else:
    folder = source_dir / name
    paths = {f: folder / f for f in checksums}
    missing = [f for f, path in paths.items() if not path.is_file()]
    if missing:
      where = (f"{folder} does not exist" if not folder.is_dir() else
               f"{folder} lacks {len(missing)} of the 4 files")
      raise MissingFileError(
          f"the source directory {source_dir} (source_dir or "
          f"$JAXPRUNE_DATA_DIR) does not hold the {name} files: {where}: "
          f"{', '.join(missing)}. Copy the original IDX files there, or give "
          "no source directory to download them"
      )
  return {f: check_sha256(paths[f], checksums[f]) for f in checksums}
