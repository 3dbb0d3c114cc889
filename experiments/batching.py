"""Batches of a data set in memory, and their way onto the devices.

Batches are pure functions of the step, so a resumed run sees exactly the
batches it would have seen: the position in the data is the step number.

Example (a split of :func:`experiments.data.load`)::

  from experiments import batching

  batch = batching.train_batch(train, batch_size=128, seed=0, step=1000)
  batch["image"].shape, batch["image"].dtype   # (128, 28, 28, 1), float32
  batch = batching.shard(batch, batching.data_mesh())  # over all devices

With several processes (``jax.distributed``), each one builds the same
global batch and passes only its part on::

  mesh = batching.data_mesh()
  batch = batching.shard(batching.process_part(batch, mesh), mesh)
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from experiments import data

__all__ = [
    "data_mesh",
    "eval_batches",
    "process_part",
    "shard",
    "steps_per_epoch",
    "train_batch",
]


def _check_nonnegative(value: int, what: str) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"{what} must be an integer, got {value!r}")
  if value < 0:
    raise ValueError(f"{what} must be >= 0, got {value}")
  return int(value)


def steps_per_epoch(split: data.Split, batch_size: int) -> int:
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
    split: data.Split, batch_size: int, seed: int, step: int
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
      "image": data.normalise(split.images[index], split.name),
      "label": split.labels[index],
  }


def eval_batches(split: data.Split, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
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
        "image": data.normalise(images, split.name),
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
