"""Data for the experiments: MNIST, Fashion-MNIST and CIFAR-10 in memory.

:func:`load` gives a whole split as a :class:`Split` of ``uint8`` images and
``int32`` labels, preparing the data set on first use; :func:`normalise`
turns images into the network's ``float32`` input.  The parts live in
modules of their own, whose public names are re-exported here:

- :mod:`experiments.idx`: the original IDX files, their published sha256
  and their parsing (MNIST and Fashion-MNIST need neither TensorFlow nor a
  network connection);
- :mod:`experiments.tfds_builders`: the tfds builders that store them as
  ``array_record`` files, and the decoded arrays kept beside those;
- :mod:`experiments.batching`: training and evaluation batches, pure
  functions of the step, and their way onto the devices (several processes
  included).

Example (the source directory of this machine; preparing takes seconds once,
later calls reuse the prepared files)::

  from experiments import batching, data

  train = data.load("mnist", "train", source_dir="/work/shared/data")
  train.images.shape, train.labels.dtype   # (60000, 28, 28, 1), int32
  batch = batching.train_batch(train, batch_size=128, seed=0, step=1000)

Without ``source_dir`` and ``tfds_dir``, the environment variables
``JAXPRUNE_DATA_DIR`` and ``JAXPRUNE_TFDS_DIR`` give them (see
:mod:`experiments.tfds_builders`).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from experiments import tfds_builders
from experiments.idx import ARRAYS_SHA256
from experiments.idx import SHA256
from experiments.idx import ChecksumError
from experiments.idx import IdxFormatError
from experiments.idx import MissingFileError
from experiments.idx import check_sha256
from experiments.idx import read_idx
from experiments.tfds_builders import CorruptPreparedDataError
from experiments.tfds_builders import FashionMnistBuilder
from experiments.tfds_builders import MnistBuilder
from experiments.tfds_builders import builder

__all__ = [
    "ARRAYS_SHA256",
    "ChecksumError",
    "CorruptPreparedDataError",
    "FashionMnistBuilder",
    "IMAGE_SHAPES",
    "IdxFormatError",
    "MissingFileError",
    "MnistBuilder",
    "NAMES",
    "SHA256",
    "Split",
    "builder",
    "check_name",
    "check_sha256",
    "load",
    "normalise",
    "read_idx",
]

NAMES = ("mnist", "fashion_mnist", "cifar10")
SPLITS = ("train", "test")

# The shape of one image of each data set, [H, W, C].
IMAGE_SHAPES = {"mnist": (28, 28, 1), "fashion_mnist": (28, 28, 1),
                "cifar10": (32, 32, 3)}

# Per-channel mean and standard deviation of the training images in [0, 1].
_MEAN_STD = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


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
    check_name(self.name)
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


def check_name(name: str) -> None:
  """Raises ValueError unless ``name`` is one of :data:`NAMES`."""
  if name not in NAMES:
    raise ValueError(f"unknown data set {name!r}; known: {', '.join(NAMES)}")


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
    MissingFileError, ChecksumError: a bad file in the source directory, or
      a source directory (given, or ``$JAXPRUNE_DATA_DIR``) without the
      four files.
    CorruptPreparedDataError: the prepared data set in the tfds directory
      does not read or is not the original data; the message names its
      directory, to delete.
    ImportError: CIFAR-10 without TensorFlow.
  """
  check_name(name)
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
  if name == "cifar10":
    images, labels = tfds_builders.cifar10_arrays(split, source_dir, tfds_dir)
    return Split(images=images, labels=labels, name=name)
  with tfds_builders.reading_prepared(
      tfds_builders.data_dir(name, tfds_dir), split):
    b = tfds_builders.prepared(
        lambda: builder(name, source_dir=source_dir, tfds_dir=tfds_dir))
    images, labels = tfds_builders.decoded(b, split)
  images.flags.writeable = labels.flags.writeable = False
  return Split(images=images, labels=labels, name=name)


def normalise(images: np.ndarray, name: str) -> np.ndarray:
  """``uint8`` images to ``float32``: ``(images / 255 - mean) / std``.

  Args:
    images: ``uint8`` array ``[..., C]``.
    name: the data set whose per-channel mean and std are used.

  Returns:
    A ``float32`` array of the same shape.
  """
  check_name(name)
  mean, std = _MEAN_STD[name]
  if images.shape[-1:] != (len(mean),):
    raise ValueError(
        f"{name} images have {len(mean)} channel(s) (last axis), got shape "
        f"{images.shape}"
    )
  x = np.asarray(images, np.float32) / np.float32(255)
  return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
