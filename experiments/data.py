"""Data for the experiments: MNIST and Fashion-MNIST without TensorFlow.

The two data sets are TensorFlow-Datasets builders that store the images as
plain ``uint8`` tensors in ``array_record`` files, so preparing and reading
them needs neither TensorFlow nor a network connection: the original IDX
files are read from a local *source directory* (``mnist/`` and
``fashion_mnist/`` sub-folders) when there is one, and downloaded otherwise.
Every file is checked against its published sha256 before it is used.

Batches are pure functions of the step, so a resumed run sees exactly the
batches it would have seen: the position in the data is the step number.

Example (the source directory of this machine; preparing takes seconds once,
later calls reuse the prepared files)::

  from experiments import data

  train = data.load("mnist", "train", source_dir="/work/shared/data")
  train.images.shape, train.labels.dtype   # (60000, 28, 28, 1), int32
  batch = data.train_batch(train, batch_size=128, seed=0, step=1000)
  batch["image"].shape, batch["image"].dtype   # (128, 28, 28, 1), float32
  batch = data.shard(batch, data.data_mesh())  # split over all devices

With several processes (``jax.distributed``), each one builds the same
global batch and passes only its part on::

  mesh = data.data_mesh()
  batch = data.shard(data.process_part(batch, mesh), mesh)

Environment variables:
  JAXPRUNE_DATA_DIR: the source directory when ``source_dir`` is not given.
  JAXPRUNE_TFDS_DIR: the writable tfds data directory when ``tfds_dir`` is not
    given; else ``~/tensorflow_datasets``.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import logging
import math
import os
import pathlib
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from experiments import files

__all__ = [
    "ChecksumError",
    "FashionMnistBuilder",
    "IMAGE_SHAPES",
    "IdxFormatError",
    "MissingFileError",
    "MnistBuilder",
    "NAMES",
    "SHA256",
    "Split",
    "builder",
    "check_sha256",
    "data_mesh",
    "eval_batches",
    "load",
    "normalise",
    "process_part",
    "read_idx",
    "shard",
    "steps_per_epoch",
    "train_batch",
]

_log = logging.getLogger(__name__)

DATA_DIR_ENV = "JAXPRUNE_DATA_DIR"
TFDS_DIR_ENV = "JAXPRUNE_TFDS_DIR"

NAMES = ("mnist", "fashion_mnist", "cifar10")
SPLITS = ("train", "test")

# The original IDX files: (images, labels) per split.
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_NUM_EXAMPLES = {"train": 60_000, "test": 10_000}
_IMAGE_SHAPE = (28, 28, 1)
# The shape of one image of each data set, [H, W, C].
IMAGE_SHAPES = {"mnist": _IMAGE_SHAPE, "fashion_mnist": _IMAGE_SHAPE,
                "cifar10": (32, 32, 3)}
_NUM_CLASSES = 10

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
_URLS = {
    "mnist": "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "fashion_mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
}

# Per-channel mean and standard deviation of the training images in [0, 1].
_MEAN_STD = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}

_IDX_IMAGES_MAGIC = 2051  # unsigned bytes, 3 dimensions
_IDX_LABELS_MAGIC = 2049  # unsigned bytes, 1 dimension
_READ_CHUNK = 10_000  # records per `__getitems__` call


class ChecksumError(ValueError):
  """A data file does not have its published sha256."""


class MissingFileError(FileNotFoundError):
  """A data file is not where it should be."""


class IdxFormatError(ValueError):
  """A file is not a well-formed (gzipped) IDX file."""


# ---------------------------------------------------------------------------
# Raw files: checksums and IDX parsing.


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


def _read_examples(images_path, labels_path, split: str):
  """The images [N, 28, 28, 1] and labels [N] of one split, checked."""
  images = read_idx(images_path, _IDX_IMAGES_MAGIC)
  labels = read_idx(labels_path, _IDX_LABELS_MAGIC)
  n = _NUM_EXAMPLES[split]
  if images.shape != (n, 28, 28):
    raise IdxFormatError(
        f"{images_path} holds images of shape {images.shape}, expected "
        f"{(n, 28, 28)}"
    )
  if labels.shape != (n,) or labels.max(initial=0) >= _NUM_CLASSES:
    raise IdxFormatError(
        f"{labels_path} holds {labels.shape[0]} labels up to "
        f"{labels.max(initial=0)}, expected {n} labels in 0..9"
    )
  return images[..., None], labels


def _source_dir(source_dir) -> pathlib.Path | None:
  if source_dir is None:
    source_dir = os.environ.get(DATA_DIR_ENV) or None
  return None if source_dir is None else pathlib.Path(source_dir).expanduser()


def _tfds_dir(tfds_dir) -> pathlib.Path:
  if tfds_dir is None:
    tfds_dir = os.environ.get(TFDS_DIR_ENV) or "~/tensorflow_datasets"
  return pathlib.Path(tfds_dir).expanduser()


def _fetch(name: str, source_dir: pathlib.Path | None, dl_manager) -> dict:
  """The four checked files of ``name``: local if present, else downloaded.

  A local folder holding only some of the files is an error, not a reason to
  download: it is most likely an incomplete copy.
  """
  checksums = SHA256[name]
  folder = None if source_dir is None else source_dir / name
  present = [f for f in checksums if folder is not None and (folder / f).exists()]
  if present:
    paths = {f: folder / f for f in checksums}
  else:
    if folder is not None:
      _log.warning("no %s files in %s; downloading them", name, folder)
    urls = {f: _URLS[name] + f for f in checksums}
    paths = {f: pathlib.Path(p) for f, p in dl_manager.download(urls).items()}
  return {f: check_sha256(paths[f], checksums[f]) for f in checksums}


# ---------------------------------------------------------------------------
# The tfds builders.


class _IdxBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A data set of four IDX files, stored as uint8 tensors in array_record."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "uint8 tensors in array_record, no TensorFlow."}
  DATASET = ""  # the key of SHA256 and _URLS
  HOMEPAGE = ""
  LABELS: Sequence[str] | None = None
  # tfds 4.9.10 finds the code of a builder defined in a package through the
  # `importlib_resources` backport, which it does not install on Python >= 3.9
  # (tensorflow/datasets#11212); the code is this file.
  code_path = epath.Path(__file__)

  def __init__(self, *, source_dir: str | os.PathLike | None = None, **kwargs):
    """Args: ``source_dir`` (else ``$JAXPRUNE_DATA_DIR``), tfds's kwargs."""
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)
    self._source_dir = _source_dir(source_dir)
    self._original_state["source_dir"] = self._source_dir  # for pickling

  def _info(self) -> tfds.core.DatasetInfo:
    if self.LABELS is None:
      label = tfds.features.ClassLabel(num_classes=_NUM_CLASSES)
    else:
      label = tfds.features.ClassLabel(names=list(self.LABELS))
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"{self.DATASET} from its original IDX files.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(
                shape=_IMAGE_SHAPE,
                dtype=np.uint8,
                encoding=tfds.features.Encoding.BYTES,
            ),
            "label": label,
        }),
        supervised_keys=("image", "label"),
        homepage=self.HOMEPAGE,
        disable_shuffling=True,  # keep the order of the IDX files
    )

  def _split_generators(self, dl_manager):
    paths = _fetch(self.DATASET, self._source_dir, dl_manager)
    return {
        split: self._generate_examples(
            paths[images], paths[labels], split=split
        )
        for split, (images, labels) in _FILES.items()
    }

  def _generate_examples(self, images_path, labels_path, split):
    images, labels = _read_examples(images_path, labels_path, split)
    for index, (image, label) in enumerate(zip(images, labels)):
      yield index, {"image": image, "label": int(label)}


class MnistBuilder(_IdxBuilder):
  """MNIST (LeCun, Cortes & Burges): 28x28 handwritten digits."""

  name = "jaxprune_mnist"
  DATASET = "mnist"
  HOMEPAGE = "http://yann.lecun.com/exdb/mnist/"


class FashionMnistBuilder(_IdxBuilder):
  """Fashion-MNIST (Xiao, Rasul & Vollgraf, 2017): 28x28 Zalando articles."""

  name = "jaxprune_fashion_mnist"
  DATASET = "fashion_mnist"
  HOMEPAGE = "https://github.com/zalandoresearch/fashion-mnist"
  LABELS = (
      "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
  )


_BUILDERS = {"mnist": MnistBuilder, "fashion_mnist": FashionMnistBuilder}


# ---------------------------------------------------------------------------
# Loading.


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
  """One split of a data set, in memory.

  Attributes:
    images: ``uint8`` images ``[N, H, W, C]``.
    labels: ``int32`` labels ``[N]``.
    name: the data set (``"mnist"``, ...); it selects the normalisation.
  """

  images: np.ndarray
  labels: np.ndarray
  name: str

  def __post_init__(self):
    _check_name(self.name)
    if self.images.dtype != np.uint8 or self.images.ndim != 4:
      raise ValueError(
          f"images must be uint8 [N, H, W, C], got {self.images.dtype} "
          f"{self.images.shape}"
      )
    if self.labels.dtype != np.int32 or self.labels.shape != self.images.shape[:1]:
      raise ValueError(
          f"labels must be int32 [{self.images.shape[0]}], got "
          f"{self.labels.dtype} {self.labels.shape}"
      )

  def __len__(self) -> int:
    return self.images.shape[0]


def _check_name(name: str) -> None:
  if name not in NAMES:
    raise ValueError(f"unknown data set {name!r}; known: {', '.join(NAMES)}")


def builder(
    name: str,
    *,
    source_dir: str | os.PathLike | None = None,
    tfds_dir: str | os.PathLike | None = None,
) -> tfds.core.DatasetBuilder:
  """The tfds builder of ``"mnist"`` or ``"fashion_mnist"`` (not prepared).

  Args:
    name: ``"mnist"`` or ``"fashion_mnist"``.
    source_dir: folder with ``mnist/`` and ``fashion_mnist/`` sub-folders of
      the original IDX files; default ``$JAXPRUNE_DATA_DIR``; without it the
      files are downloaded.
    tfds_dir: writable folder for the prepared data; default
      ``$JAXPRUNE_TFDS_DIR``, else ``~/tensorflow_datasets``.

  Returns:
    The builder; ``builder.download_and_prepare()`` then
    ``builder.as_data_source(split)`` give random access to the records.
  """
  if name not in _BUILDERS:
    raise ValueError(
        f"no jaxprune builder for {name!r}; known: {', '.join(_BUILDERS)}"
    )
  return _BUILDERS[name](
      source_dir=source_dir, data_dir=os.fspath(_tfds_dir(tfds_dir))
  )


def load(
    name: str,
    split: str,
    *,
    source_dir: str | os.PathLike | None = None,
    tfds_dir: str | os.PathLike | None = None,
) -> Split:
  """Loads a whole split into memory, preparing the data set on first use.

  Processes that load at the same time from a fresh ``tfds_dir`` are safe:
  the first to finish preparing it wins, the others read its records.

  MNIST and Fashion-MNIST keep the order of the original files.  CIFAR-10
  uses tfds's own builder, which needs TensorFlow and a network connection.

  Args:
    name: ``"mnist"``, ``"fashion_mnist"`` or ``"cifar10"``.
    split: ``"train"`` or ``"test"``.
    source_dir: see :func:`builder`; not used by CIFAR-10.
    tfds_dir: see :func:`builder`.

  Returns:
    A :class:`Split` (its arrays are read-only).

  Raises:
    ValueError: an unknown name or split.
    MissingFileError, ChecksumError: a bad file in the source directory.
    ImportError: CIFAR-10 without TensorFlow.
  """
  _check_name(name)
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
  if name == "cifar10":
    return _load_cifar10(split, source_dir, tfds_dir)
  b = _prepared(lambda: builder(name, source_dir=source_dir, tfds_dir=tfds_dir))
  images, labels = _decoded(b, split)
  images.flags.writeable = labels.flags.writeable = False
  return Split(images=images, labels=labels, name=name)


def _prepared(
    make_builder: Callable[[], tfds.core.DatasetBuilder],
) -> tfds.core.DatasetBuilder:
  """A builder from ``make_builder`` with its records on disk, prepared if
  need be.

  Processes that start together on a fresh tfds directory (the cells of a
  sweep run with ``--jobs 2``) each prepare the records in a directory of
  their own and rename it into place; every one but the first then finds
  the place taken, and tfds raises ``FileExistsError``.  The records there
  are complete (tfds renames a directory only once it is finished), so such
  a process reads those, through a new builder that finds them.
  """
  b = make_builder()
  try:
    b.download_and_prepare()
  except FileExistsError:
    b = make_builder()
    if not os.path.isdir(b.data_dir):
      raise
    b.download_and_prepare()  # finds them prepared: reads their info only
  return b


def _decoded(b: tfds.core.DatasetBuilder, split: str):
  """The split's images and labels, read from the prepared records once.

  tfds decodes a record at a time, in Python: 3 s for MNIST's 60,000
  training images on this project's CPU (5 s on a loaded one), paid by
  every process that loads them.  The arrays are then kept beside the
  records, in ``decoded/SPLIT.npz`` under the builder's data directory,
  with their sha256, and later loads read them (0.2 s, digest included).  A kept file that does not match its digest or the
  split's size is read again from the records and replaced.
  """
  source = b.as_data_source(split=split)
  if not os.path.isdir(b.data_dir):  # records not on disk (tfds mock data)
    return _read_all(source)
  path = pathlib.Path(b.data_dir) / "decoded" / f"{split}.npz"
  kept = _read_decoded(path, len(source))
  if kept is not None:
    return kept
  images, labels = _read_all(source)
  path.parent.mkdir(exist_ok=True)
  with files.replaced_atomically(path) as f:
    np.savez(f, images=images, labels=labels,
             sha256=np.asarray(_arrays_digest(images, labels)))
  return images, labels


def _arrays_digest(images: np.ndarray, labels: np.ndarray) -> str:
  digest = hashlib.sha256()
  for array in (images, labels):
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    digest.update(np.ascontiguousarray(array).data)
  return digest.hexdigest()


def _read_decoded(path: pathlib.Path, size: int):
  """The arrays kept at ``path`` if they are whole and ``size`` long, else
  None."""
  try:
    with np.load(path) as f:
      images, labels, digest = f["images"], f["labels"], str(f["sha256"])
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
    # absent, torn or foreign
    return None
  if (images.shape != (size, *_IMAGE_SHAPE) or images.dtype != np.uint8
      or labels.shape != (size,) or labels.dtype != np.int32
      or digest != _arrays_digest(images, labels)):
    logging.warning("jaxprune: %s does not match its digest or its split; "
                    "reading the records again", path)
    return None
  return images, labels


def _read_all(source) -> tuple[np.ndarray, np.ndarray]:
  """All records of a tfds data source, in its order, as two arrays."""
  n = len(source)
  images = np.empty((n, *_IMAGE_SHAPE), np.uint8)
  labels = np.empty((n,), np.int32)
  for start in range(0, n, _READ_CHUNK):
    stop = min(start + _READ_CHUNK, n)
    records = source.__getitems__(list(range(start, stop)))
    images[start:stop] = np.stack([r["image"] for r in records])
    labels[start:stop] = [r["label"] for r in records]
  return images, labels


def _load_cifar10(split, source_dir, tfds_dir) -> Split:
  try:
    import tensorflow  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    raise ImportError(
        "CIFAR-10 needs TensorFlow, which is not installed: tfds's cifar10 "
        "builder decodes its PNG images with it. Install it with "
        "`pip install tensorflow` (or `pip install -e '.[cifar]'`); the first "
        "load then downloads CIFAR-10, "
        "which is not available offline here (only MNIST and Fashion-MNIST "
        "are)."
    ) from e
  if source_dir is not None:
    raise ValueError(
        "source_dir is only for mnist and fashion_mnist; tfds downloads cifar10"
    )
  b = _prepared(lambda: tfds.builder(
      "cifar10", data_dir=os.fspath(_tfds_dir(tfds_dir))))
  arrays = tfds.as_numpy(b.as_dataset(split=split, batch_size=-1))
  return Split(
      images=np.asarray(arrays["image"], np.uint8),
      labels=np.asarray(arrays["label"], np.int32),
      name="cifar10",
  )


# ---------------------------------------------------------------------------
# Batches.


def normalise(images: np.ndarray, name: str) -> np.ndarray:
  """``uint8`` images to ``float32``: ``(images / 255 - mean) / std``.

  Args:
    images: ``uint8`` array ``[..., C]``.
    name: the data set whose per-channel mean and std are used.

  Returns:
    A ``float32`` array of the same shape.
  """
  _check_name(name)
  mean, std = _MEAN_STD[name]
  if images.shape[-1:] != (len(mean),):
    raise ValueError(
        f"{name} images have {len(mean)} channel(s) (last axis), got shape "
        f"{images.shape}"
    )
  x = np.asarray(images, np.float32) / np.float32(255)
  return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def _check_nonnegative(value: int, what: str) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"{what} must be an integer, got {value!r}")
  if value < 0:
    raise ValueError(f"{what} must be >= 0, got {value}")
  return int(value)


def steps_per_epoch(split: Split, batch_size: int) -> int:
  """Full batches per epoch (the remainder of each epoch is dropped)."""
  batch_size = _check_nonnegative(batch_size, "batch_size")
  if not 1 <= batch_size <= len(split):
    raise ValueError(
        f"batch_size must be in [1, {len(split)}] (the size of the split), "
        f"got {batch_size}"
    )
  return len(split) // batch_size


@functools.lru_cache(maxsize=8)
def _permutation(n: int, seed: int, epoch: int) -> np.ndarray:
  order = np.random.default_rng([seed, epoch]).permutation(n)
  order.flags.writeable = False  # shared by every call of the cache
  return order


def train_batch(
    split: Split, batch_size: int, seed: int, step: int
) -> dict[str, np.ndarray]:
  """The training batch of ``step``: a pure function of its arguments.

  Epoch ``e = step // steps_per_epoch`` visits the examples in the order
  ``np.random.default_rng([seed, e]).permutation(N)``, ``batch_size`` at a
  time; the last ``N % batch_size`` of that order are skipped.

  Args:
    split: the training split.
    batch_size: examples per batch.
    seed: non-negative shuffling seed.
    step: non-negative step number.

  Returns:
    ``{"image": float32 [B, H, W, C] normalised, "label": int32 [B]}``.
  """
  per_epoch = steps_per_epoch(split, batch_size)
  seed = _check_nonnegative(seed, "seed")
  epoch, position = divmod(_check_nonnegative(step, "step"), per_epoch)
  index = _permutation(len(split), seed, epoch)[
      position * batch_size : (position + 1) * batch_size
  ]
  return {
      "image": normalise(split.images[index], split.name),
      "label": split.labels[index],
  }


def eval_batches(split: Split, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
  """The whole split in order, in batches of one shape.

  The last batch is padded with zero images and label 0; its ``mask`` is
  False there.

  Args:
    split: the split to evaluate.
    batch_size: examples per batch.

  Yields:
    ``{"image": float32 [B, H, W, C], "label": int32 [B], "mask": bool [B]}``.
  """
  batch_size = _check_nonnegative(batch_size, "batch_size")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  n = len(split)
  for start in range(0, n, batch_size):
    real = min(batch_size, n - start)
    pad = batch_size - real
    images = split.images[start : start + real]
    labels = split.labels[start : start + real]
    if pad:
      images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), np.uint8)])
      labels = np.concatenate([labels, np.zeros((pad,), np.int32)])
    yield {
        "image": normalise(images, split.name),
        "label": labels,
        "mask": np.arange(batch_size) < real,
    }


# ---------------------------------------------------------------------------
# Devices.


def data_mesh() -> jax.sharding.Mesh:
  """A 1-D mesh of all devices with the axis ``"data"`` (auto sharding)."""
  return jax.make_mesh(
      (jax.device_count(),),
      ("data",),
      axis_types=(jax.sharding.AxisType.Auto,),
  )


def _check_mesh(mesh: jax.sharding.Mesh, what: str) -> None:
  if tuple(mesh.axis_names) != ("data",):
    raise ValueError(
        f"{what} needs a 1-D mesh with the axis 'data', got axes "
        f"{mesh.axis_names}"
    )


def process_part(
    batch: Mapping[str, Any], mesh: jax.sharding.Mesh
) -> dict[str, np.ndarray]:
  """The rows of a global host batch that this process passes to :func:`shard`.

  Every device of ``mesh`` holds ``B / devices`` consecutive rows of the
  global batch; a process keeps the rows of its own devices, in increasing
  order (where ``jax.make_array_from_process_local_data`` puts them back).
  With one process that is the whole batch; with ``N`` processes whose
  devices follow each other on the mesh (as ``data_mesh`` orders them), it is
  the ``jax.process_index()``-th of ``N`` equal slices.

  Args:
    batch: numpy arrays with a common leading (batch) axis, the same on every
      process.
    mesh: a 1-D mesh whose axis is named ``"data"``, e.g. :func:`data_mesh`.

  Returns:
    The same dict, each array cut to this process's rows.
  """
  _check_mesh(mesh, "process_part")
  sizes = {np.shape(value)[0] if np.ndim(value) else None
           for value in batch.values()}
  if len(sizes) != 1 or None in sizes:
    raise ValueError(
        "process_part needs arrays with one common leading (batch) axis, got "
        f"shapes { {k: np.shape(v) for k, v in batch.items()} }"
    )
  (size,) = sizes
  if size % mesh.size:
    raise ValueError(
        f"a batch of {size} does not split over the {mesh.size} devices of "
        "the mesh"
    )
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  spans = sorted({(index[0].start or 0, index[0].stop or size) for index in
                  sharding.addressable_devices_indices_map((size,)).values()})
  if spans[0][0] == 0 and spans[-1][1] == size and all(
      stop == start for (_, stop), (start, _) in zip(spans, spans[1:])):
    return {key: np.asarray(value) for key, value in batch.items()}  # all rows
  rows = np.concatenate([np.arange(start, stop) for start, stop in spans])
  return {key: np.asarray(value)[rows] for key, value in batch.items()}


def shard(batch: Mapping[str, Any], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """Puts a host batch on the devices, its leading axis split over ``"data"``.

  Each process passes its own part of the global batch
  (:func:`process_part`); with one process, that is the whole batch.

  Args:
    batch: numpy arrays with a common leading (batch) axis.
    mesh: a 1-D mesh whose axis is named ``"data"``, e.g. :func:`data_mesh`.

  Returns:
    The same dict of global ``jax.Array`` s, sharded by
    ``NamedSharding(mesh, PartitionSpec("data"))``.
  """
  _check_mesh(mesh, "shard")
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  devices = len(mesh.local_devices)

  def put(key, value):
    value = np.asarray(value)
    if value.ndim == 0 or value.shape[0] % devices:
      raise ValueError(
          f"batch[{key!r}] has shape {value.shape}: its leading (batch) axis "
          f"must be divisible by the {devices} devices of this process"
      )
    return jax.make_array_from_process_local_data(sharding, value)

  return {key: put(key, value) for key, value in batch.items()}
