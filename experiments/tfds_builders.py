"""The tfds builders of MNIST and Fashion-MNIST, and their prepared records.

The builders store the images as plain ``uint8`` tensors in
``array_record`` files, so preparing and reading them needs neither
TensorFlow nor a network connection: the original IDX files
(:mod:`experiments.idx`) are read from a local *source directory*
(``mnist/`` and ``fashion_mnist/`` sub-folders) when there is one, and
downloaded otherwise.  :func:`prepared` prepares a builder's records once
(safely when several processes race to), :func:`decoded` reads a split's
arrays from them once and keeps them beside the records.  Both check what
they read: a prepared data set that does not read, or whose records are not
the original data, raises :class:`CorruptPreparedDataError` naming its
directory (:func:`reading_prepared` turns tfds's own errors into it).

Environment variables:
  JAXPRUNE_DATA_DIR: the source directory when ``source_dir`` is not given.
  JAXPRUNE_TFDS_DIR: the writable tfds data directory when ``tfds_dir`` is not
    given; else ``~/tensorflow_datasets``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import sys
import traceback
import zipfile
from collections.abc import Callable
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from experiments import files
from experiments import idx
from experiments import progress

__all__ = [
    "CorruptPreparedDataError",
    "DATA_DIR_ENV",
    "FashionMnistBuilder",
    "MnistBuilder",
    "TFDS_DIR_ENV",
    "builder",
    "cifar10_arrays",
    "data_dir",
    "decoded",
    "prepared",
    "reading_prepared",
    "resolve_source_dir",
    "resolve_tfds_dir",
]

DATA_DIR_ENV = "JAXPRUNE_DATA_DIR"
TFDS_DIR_ENV = "JAXPRUNE_TFDS_DIR"

_READ_CHUNK = 10_000  # records per `__getitems__` call


class CorruptPreparedDataError(ValueError):
  """A prepared data set (tfds's files under the tfds directory) does not
  read, or does not hold the original data."""


def resolve_source_dir(source_dir) -> pathlib.Path | None:
  """``source_dir``, else ``$JAXPRUNE_DATA_DIR``, else None (download)."""
  if source_dir is None:
    source_dir = os.environ.get(DATA_DIR_ENV) or None
  return None if source_dir is None else pathlib.Path(source_dir).expanduser()


def resolve_tfds_dir(tfds_dir) -> pathlib.Path:
  """``tfds_dir``, else ``$JAXPRUNE_TFDS_DIR``, else ``~/tensorflow_datasets``."""
  if tfds_dir is None:
    tfds_dir = os.environ.get(TFDS_DIR_ENV) or "~/tensorflow_datasets"
  return pathlib.Path(tfds_dir).expanduser()


class _IdxBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A data set of four IDX files, stored as uint8 tensors in array_record."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "uint8 tensors in array_record, no TensorFlow."}
  DATASET = ""  # the key of idx.SHA256 and idx.URLS
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
    self._source_dir = resolve_source_dir(source_dir)
    self._original_state["source_dir"] = self._source_dir  # for pickling

  def _info(self) -> tfds.core.DatasetInfo:
    if self.LABELS is None:
      label = tfds.features.ClassLabel(num_classes=idx.NUM_CLASSES)
    else:
      label = tfds.features.ClassLabel(names=list(self.LABELS))
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"{self.DATASET} from its original IDX files.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(
                shape=idx.IMAGE_SHAPE,
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
    paths = idx.fetch(self.DATASET, self._source_dir, dl_manager)
    return {
        split: self._generate_examples(
            paths[images], paths[labels], split=split
        )
        for split, (images, labels) in idx.FILES.items()
    }

  def _generate_examples(self, images_path, labels_path, split):
    images, labels = idx.read_examples(images_path, labels_path, split)
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
      source_dir=source_dir, data_dir=os.fspath(resolve_tfds_dir(tfds_dir))
  )


def data_dir(name: str, tfds_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """Where :func:`builder` keeps the prepared ``name``: its data directory
  under the tfds directory (``TFDS_DIR/jaxprune_mnist/1.0.0``)."""
  cls = _BUILDERS[name]
  return resolve_tfds_dir(tfds_dir) / cls.name / str(cls.VERSION)


@contextlib.contextmanager
def reading_prepared(directory: str | os.PathLike, split: str):
  """Turns the errors of reading an already prepared data set into a
  :class:`CorruptPreparedDataError` that names ``directory`` and says how
  to prepare it again.

  tfds and array_record report damage in their own words, without a path
  (``Corrupted Riegeli/records file ... at byte N``, a ``UnicodeDecodeError``
  or ``ParseError`` from a garbled ``dataset_info.json``, a ``KeyError`` for
  a missing one).  Only a directory that existed before the block is blamed:
  errors while preparing a new one (a bad IDX file) pass unchanged, as do
  the data-file errors of :mod:`experiments.idx`.
  """
  directory = pathlib.Path(directory)
  existed = directory.is_dir()
  try:
    yield
  except (CorruptPreparedDataError, idx.ChecksumError, idx.MissingFileError,
          idx.IdxFormatError):
    raise
  except Exception as e:  # pylint: disable=broad-except  # tfds's many kinds
    if not existed:
      raise
    raise CorruptPreparedDataError(
        f"the prepared data set in {directory} does not read: "
        f"{_read_in(directory, split, e)}: {type(e).__name__}: {e}. "
        f"{_REBUILD.format(directory=directory)}"
    ) from e


_REBUILD = ("Delete that directory (rm -r {directory}) and load again: it is "
            "prepared anew from the IDX files")


def _read_in(directory: pathlib.Path, split: str, error: Exception) -> str:
  """The files of ``directory`` that ``error`` most likely comes from."""
  frames = [frame.name for frame in traceback.extract_tb(error.__traceback__)]
  if "__init__" in frames or "download_and_prepare" in frames:
    return f"its {directory / 'dataset_info.json'} (or features.json)"
  return f"the {split} records ({_records_of(directory, split)})"


def _records_of(directory: pathlib.Path, split: str) -> str:
  found = sorted(directory.glob(f"*-{split}.array_record*"))
  return ", ".join(str(p) for p in found) or f"no {split} records there"


def prepared(
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
  if not progress.is_terminal(sys.stderr):
    # Its bars would leave carriage-return frames in a log, and the line
    # they clear unended, for the next output to land on.
    tfds.disable_progress_bar()
  b = make_builder()
  try:
    b.download_and_prepare()
  except FileExistsError:
    b = make_builder()
    if not os.path.isdir(b.data_dir):
      raise
    b.download_and_prepare()  # finds them prepared: reads their info only
  return b


def decoded(b: tfds.core.DatasetBuilder, split: str):
  """The split's images and labels, read from the prepared records once.

  tfds decodes a record at a time, in Python: 3 s for MNIST's 60,000
  training images on this project's CPU (5 s on a loaded one), paid by
  every process that loads them.  The arrays are then kept beside the
  records, in ``decoded/SPLIT.npz`` under the builder's data directory,
  and later loads read them (0.2 s, digest included).

  Both the kept arrays and those read from the records are checked against
  the split's sha256 in :data:`experiments.idx.ARRAYS_SHA256`, a constant
  of the code fixed by the IDX files' published checksums, not a digest
  kept beside the data (which whoever rewrites the data can rewrite too).
  A kept file that does not match it is read again from the records and
  replaced; records that do not match it raise
  :class:`CorruptPreparedDataError`.
  """
  source = b.as_data_source(split=split)
  if not os.path.isdir(b.data_dir):  # records not on disk (tfds mock data)
    return _read_all(source)
  expected = idx.ARRAYS_SHA256[b.DATASET][split]
  path = pathlib.Path(b.data_dir) / "decoded" / f"{split}.npz"
  kept = _read_decoded(path, expected)
  if kept is not None:
    return kept
  images, labels = _read_all(source)
  found = idx.arrays_sha256(images, labels)
  if found != expected:
    raise CorruptPreparedDataError(
        f"the prepared data set in {b.data_dir} is not the original "
        f"{b.DATASET}: the {split} records "
        f"({_records_of(pathlib.Path(b.data_dir), split)}) hold arrays of "
        f"sha256 {found}, expected {expected}. "
        f"{_REBUILD.format(directory=b.data_dir)}"
    )
  path.parent.mkdir(exist_ok=True)
  with files.replaced_atomically(path) as f:
    np.savez(f, images=images, labels=labels)
  return images, labels


def _read_decoded(path: pathlib.Path, expected: str):
  """The arrays kept at ``path`` if they have the sha256 ``expected``, else
  None."""
  try:
    with np.load(path) as f:
      images, labels = f["images"], f["labels"]
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
    # absent, torn or foreign
    return None
  if idx.arrays_sha256(images, labels) != expected:
    logging.warning("jaxprune: %s is not the original data (its sha256 is not "
                    "the split's); reading the records again", path)
    return None
  return images, labels


def _read_all(source) -> tuple[np.ndarray, np.ndarray]:
  """All records of a tfds data source, in its order, as two arrays."""
  n = len(source)
  images = np.empty((n, *idx.IMAGE_SHAPE), np.uint8)
  labels = np.empty((n,), np.int32)
  for start in range(0, n, _READ_CHUNK):
    stop = min(start + _READ_CHUNK, n)
    records = source.__getitems__(list(range(start, stop)))
    images[start:stop] = np.stack([r["image"] for r in records])
    labels[start:stop] = [r["label"] for r in records]
  return images, labels


def cifar10_arrays(split: str, source_dir=None,
                   tfds_dir=None) -> tuple[np.ndarray, np.ndarray]:
  """CIFAR-10's ``uint8`` images and ``int32`` labels of ``split``, from
  tfds's own builder (it needs TensorFlow and, the first time, a network
  connection).

  Raises:
    ImportError: TensorFlow is not installed.
    ValueError: a ``source_dir`` (tfds downloads CIFAR-10).
  """
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
  b = prepared(lambda: tfds.builder(
      "cifar10", data_dir=os.fspath(resolve_tfds_dir(tfds_dir))))
  arrays = tfds.as_numpy(b.as_dataset(split=split, batch_size=-1))
  return (np.asarray(arrays["image"], np.uint8),
          np.asarray(arrays["label"], np.int32))
