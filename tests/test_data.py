"""Tests of the experiments' data (data.py, idx.py, tfds_builders.py, batching.py):
the tfds builders, loading, batches, sharding.

The real files are the shared IDX files (``<checkout>/../shared/data``);
MNIST is prepared once per session in a temporary tfds directory.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import hypothesis
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from hypothesis import strategies as st

from experiments import batching
from experiments import data
from experiments import idx

REPO = pathlib.Path(__file__).resolve().parents[1]
SOURCE = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]

needs_files = pytest.mark.skipif(
    not (SOURCE / "mnist").is_dir(), reason=f"no shared IDX files in {SOURCE}"
)


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="session")
def mnist_train(tfds_dir):
  if not (SOURCE / "mnist").is_dir():
    pytest.skip(f"no shared IDX files in {SOURCE}")
  return data.load("mnist", "train", source_dir=SOURCE, tfds_dir=tfds_dir)


@pytest.fixture(scope="session")
def mnist_test(tfds_dir, mnist_train):  # after mnist_train: prepared once
  del mnist_train
  return data.load("mnist", "test", source_dir=SOURCE, tfds_dir=tfds_dir)


def synthetic(n: int, name: str = "mnist", channels: int = 1) -> data.Split:
  """A split whose label is the example's index and whose pixels encode it."""
  images = np.arange(n * 2 * 2 * channels, dtype=np.int64) % 256
  return data.Split(
      images=images.astype(np.uint8).reshape(n, 2, 2, channels),
      labels=np.arange(n, dtype=np.int32),
      name=name,
  )


def copy_source(tmp_path, name="mnist", skip=()) -> pathlib.Path:
  """A writable copy of one data set's files, as a source directory."""
  (tmp_path / "src" / name).mkdir(parents=True)
  for file in data.SHA256[name]:
    if file not in skip:
      shutil.copyfile(SOURCE / name / file, tmp_path / "src" / name / file)
  return tmp_path / "src"


# ---------------------------------------------------------------------------
# Raw files.


@needs_files
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_checksums_are_the_published_ones_and_verified(name):
  published = dict(
      reversed(line.split())
      for line in (SOURCE / name / "SHA256SUMS").read_text().splitlines()
  )
  assert data.SHA256[name] == published
  for file, sha in data.SHA256[name].items():
    assert data.check_sha256(SOURCE / name / file, sha) == SOURCE / name / file


def test_check_sha256_names_path_and_both_digests(tmp_path):
  path = tmp_path / "f.gz"
  path.write_bytes(b"not mnist")
  with pytest.raises(data.ChecksumError) as e:
    data.check_sha256(path, "0" * 64)
  message = str(e.value)
  assert str(path) in message and "0" * 64 in message
  assert hashlib.sha256(b"not mnist").hexdigest() in message
  with pytest.raises(data.MissingFileError, match="absent.gz"):
    data.check_sha256(tmp_path / "absent.gz", "0" * 64)


def write_gz(path, payload: bytes) -> pathlib.Path:
  with gzip.open(path, "wb") as f:
    f.write(payload)
  return path


def test_read_idx(tmp_path):
  header = (2051).to_bytes(4, "big") + b"".join(
      d.to_bytes(4, "big") for d in (2, 3, 4)
  )
  good = write_gz(tmp_path / "good.gz", header + bytes(range(24)))
  np.testing.assert_array_equal(
      data.read_idx(good, 2051), np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
  )
  with pytest.raises(data.IdxFormatError, match="magic number 2051, expected 2049"):
    data.read_idx(good, 2049)
  short = write_gz(tmp_path / "short.gz", header + bytes(23))
  with pytest.raises(data.IdxFormatError, match="40 bytes.*holds 39"):
    data.read_idx(short, 2051)
  (tmp_path / "plain.gz").write_bytes(header + bytes(24))
  with pytest.raises(data.IdxFormatError, match="not a readable gzip"):
    data.read_idx(tmp_path / "plain.gz", 2051)


@needs_files
def test_fetch_downloads_from_canonical_urls_and_verifies(tmp_path):
  """The download branch, with a fake download manager (no network here)."""

  class FakeDownloads:
    def __init__(self, folder):
      self.folder, self.urls = folder, None

    def download(self, urls):
      self.urls = urls
      return {file: self.folder / file for file in urls}

  dl = FakeDownloads(SOURCE / "mnist")
  paths = idx.fetch("mnist", None, dl)
  assert dl.urls == {
      f: "https://storage.googleapis.com/cvdf-datasets/mnist/" + f
      for f in data.SHA256["mnist"]
  }
  assert paths == {f: SOURCE / "mnist" / f for f in data.SHA256["mnist"]}
  # A wrong download is caught.
  with pytest.raises(data.ChecksumError, match="3aede38d6186"):
    idx.fetch("fashion_mnist", None, dl)
  assert dl.urls["t10k-images-idx3-ubyte.gz"] == (
      "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
      "t10k-images-idx3-ubyte.gz"
  )


# ---------------------------------------------------------------------------
# Loading.


def test_mnist_shapes_dtypes_labels(mnist_train, mnist_test):
  for split, n in [(mnist_train, 60_000), (mnist_test, 10_000)]:
    assert split.name == "mnist" and len(split) == n
    assert split.images.shape == (n, 28, 28, 1)
    assert split.images.dtype == np.uint8 and split.labels.dtype == np.int32
    assert split.labels.min() == 0 and split.labels.max() == 9
    assert not split.images.flags.writeable


def test_mnist_train_class_counts(mnist_train):
  assert np.bincount(mnist_train.labels).tolist() == MNIST_TRAIN_COUNTS


def test_load_keeps_the_order_of_the_idx_files(mnist_test):
  images = data.read_idx(SOURCE / "mnist" / "t10k-images-idx3-ubyte.gz", 2051)
  labels = data.read_idx(SOURCE / "mnist" / "t10k-labels-idx1-ubyte.gz", 2049)
  np.testing.assert_array_equal(mnist_test.images[..., 0], images)
  np.testing.assert_array_equal(mnist_test.labels, labels)


def test_prepared_data_is_reused_and_env_vars_are_read(
    mnist_test, tfds_dir, tmp_path, monkeypatch
):
  # Prepared already: the (nonexistent) source directory is not consulted.
  monkeypatch.setenv("JAXPRUNE_DATA_DIR", str(tmp_path / "empty"))
  monkeypatch.setenv("JAXPRUNE_TFDS_DIR", str(tfds_dir))
  again = data.load("mnist", "test")
  np.testing.assert_array_equal(again.images, mnist_test.images)
  np.testing.assert_array_equal(again.labels, mnist_test.labels)


@needs_files
@pytest.mark.parametrize("damage", ["flip a byte", "truncate"])
def test_corrupt_file_raises_checksum_error(tmp_path, damage):
  source = copy_source(tmp_path)
  bad = source / "mnist" / "t10k-labels-idx1-ubyte.gz"
  raw = bytearray(bad.read_bytes())
  if damage == "truncate":
    raw = raw[:-100]
  else:
    raw[len(raw) // 2] ^= 0xFF
  bad.write_bytes(bytes(raw))
  expected = data.SHA256["mnist"]["t10k-labels-idx1-ubyte.gz"]
  with pytest.raises(data.ChecksumError) as e:
    data.load("mnist", "train", source_dir=source, tfds_dir=tmp_path / "tfds")
  assert str(bad) in str(e.value) and expected in str(e.value)
  assert "found sha256" in str(e.value)
  assert not (tmp_path / "tfds" / "jaxprune_mnist" / "1.0.0").exists()


class NoDownloads:
  """A download manager that fails at once: nothing may be downloaded."""

  def download(self, urls):
    raise AssertionError(f"tried to download {sorted(urls)}")


@needs_files
@pytest.mark.parametrize("case", [
    "no such directory", "no mnist folder", "the mnist folder itself",
    "one file missing", "two files missing"])
def test_a_source_directory_without_the_files_fails_at_once(
    tmp_path, monkeypatch, case):
  # Given through the environment, the way the runner gets it; it used to
  # mean a download (here, minutes of retries before a ConnectionError).
  names = list(data.SHA256["mnist"])
  missing = {"one file missing": names[1:2],
             "two files missing": names[2:]}.get(case, names)
  source = copy_source(tmp_path, skip=missing)
  given = {"no such directory": tmp_path / "absent",
           "no mnist folder": tmp_path / "empty",
           "the mnist folder itself": source / "mnist"}.get(case, source)
  (tmp_path / "empty").mkdir()
  monkeypatch.setenv("JAXPRUNE_DATA_DIR", str(given))
  monkeypatch.setenv("JAXPRUNE_TFDS_DIR", str(tmp_path / "tfds"))
  monkeypatch.setattr(tfds.download.DownloadManager, "download",
                      lambda self, urls: NoDownloads().download(urls))
  with pytest.raises(data.MissingFileError) as e:
    data.load("mnist", "test")
  message = str(e.value)
  assert f"source directory {given} " in message
  assert str(given / "mnist") in message
  assert ", ".join(missing) in message
  assert [n for n in names if n in message] == missing
  with pytest.raises(data.MissingFileError, match="does not exist"):
    idx.fetch("mnist", tmp_path / "absent", NoDownloads())


@needs_files
def test_missing_file_raises(tmp_path):
  source = copy_source(tmp_path, skip={"train-labels-idx1-ubyte.gz"})
  with pytest.raises(data.MissingFileError) as e:
    data.load("mnist", "test", source_dir=source, tfds_dir=tmp_path / "tfds")
  assert str(source / "mnist") in str(e.value)
  assert "lacks 1 of the 4 files: train-labels-idx1-ubyte.gz." in str(e.value)


@needs_files
def test_load_reads_the_records_another_process_prepared_first(
    tmp_path, monkeypatch
):
  # Two processes preparing one fresh tfds directory: the other one renames
  # its finished records into place while this one is still generating.
  source, tfds_dir = copy_source(tmp_path), tmp_path / "tfds"
  made = []
  real_builder = data.builder

  def builder_that_loses_the_race(name, **kwargs):
    b = real_builder(name, **kwargs)
    if not made:
      generate = b._download_and_prepare

      def generate_after_the_rival(*args, **kw):
        real_builder(name, **kwargs).download_and_prepare()
        return generate(*args, **kw)

      b._download_and_prepare = generate_after_the_rival
    made.append(b)
    return b

  monkeypatch.setattr(data, "builder", builder_that_loses_the_race)
  split = data.load("mnist", "test", source_dir=source, tfds_dir=tfds_dir)
  assert len(made) == 2  # the loser's builder, then one over the rival's records
  labels = data.read_idx(source / "mnist" / "t10k-labels-idx1-ubyte.gz", 2049)
  np.testing.assert_array_equal(split.labels, labels)
  assert [p.name for p in (tfds_dir / "jaxprune_mnist").iterdir()
          if p.is_dir()] == ["1.0.0"]  # no incomplete directory left


@needs_files
def test_fashion_mnist_loads(tfds_dir):
  split = data.load("fashion_mnist", "test", source_dir=SOURCE, tfds_dir=tfds_dir)
  assert split.images.shape == (10_000, 28, 28, 1) and split.name == "fashion_mnist"
  assert np.bincount(split.labels).tolist() == [1000] * 10
  labels = data.read_idx(SOURCE / "fashion_mnist" / "t10k-labels-idx1-ubyte.gz", 2049)
  np.testing.assert_array_equal(split.labels, labels)


def test_builder_features_under_mock_data():
  """tfds's own mock: random records of the declared features, no disk."""
  with tfds.testing.mock_data(
      num_examples=5, policy=tfds.testing.MockPolicy.USE_CODE
  ):
    b = data.builder("mnist", tfds_dir="/nonexistent/tfds")
    b.download_and_prepare()
    source = b.as_data_source(split="train")
    assert len(source) == 5
    for i in range(5):
      record = source[i]
      assert record["image"].shape == (28, 28, 1)
      assert record["image"].dtype == np.uint8
      assert 0 <= int(record["label"]) < 10


class FakeSource:
  """Records of a synthetic split, with the data-source protocol."""

  def __init__(self, n):
    self.n = n

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    return {"image": np.full((28, 28, 1), i % 256, np.uint8), "label": i % 10}

  def __getitems__(self, keys):
    return [self[i] for i in keys]


def test_load_on_mocked_records(tmp_path):
  """`load` reads every record in order; mock_data keeps it off the disk.

  tfds 4.9.10's default mock data source cannot serve `__getitems__` (it sets
  an unbound function on a MagicMock), so the records come from
  `as_data_source_fn`.
  """
  def as_data_source(self, split, **kwargs):
    del self, kwargs
    return FakeSource(25_003 if split == "train" else 7)

  with tfds.testing.mock_data(as_data_source_fn=as_data_source):
    split = data.load(
        "fashion_mnist",
        "train",
        source_dir=tmp_path / "src",
        tfds_dir=tmp_path / "tfds",
    )
  assert split.images.shape == (25_003, 28, 28, 1)
  np.testing.assert_array_equal(split.labels, np.arange(25_003) % 10)
  np.testing.assert_array_equal(split.images[:, 3, 5, 0], np.arange(25_003) % 256)
  assert not any(tmp_path.iterdir())


def test_unknown_names_and_splits():
  with pytest.raises(ValueError, match="mnist, fashion_mnist, cifar10"):
    data.load("imagenet", "train")
  with pytest.raises(ValueError, match="'validation'.*train, test"):
    data.load("mnist", "validation")


def test_cifar10_without_tensorflow_says_what_to_install():
  try:
    import tensorflow  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    pass
  else:
    pytest.skip("TensorFlow is installed")
  with pytest.raises(
      ImportError, match=r"pip install tensorflow.*not available offline"
  ):
    data.load("cifar10", "train")


def test_split_checks_its_arrays():
  with pytest.raises(ValueError, match="labels must be int32"):
    data.Split(np.zeros((3, 2, 2, 1), np.uint8), np.zeros(3, np.int64), "mnist")
  with pytest.raises(ValueError, match="images must be uint8"):
    data.Split(np.zeros((3, 2, 2), np.uint8), np.zeros(3, np.int32), "mnist")


# ---------------------------------------------------------------------------
# Batches.


@pytest.mark.parametrize(
    "name, mean, std",
    [
        ("mnist", [0.1307], [0.3081]),
        ("fashion_mnist", [0.2860], [0.3530]),
        ("cifar10", [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]),
    ],
)
def test_normalise_matches_numpy(name, mean, std):
  images = np.random.default_rng(0).integers(
      0, 256, (4, 3, 3, len(mean)), dtype=np.uint8
  )
  got = data.normalise(images, name)
  assert got.dtype == np.float32 and got.shape == images.shape
  np.testing.assert_allclose(got, (images / 255.0 - mean) / std, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="channel"):
    data.normalise(images[..., :1] if len(mean) == 3 else images.repeat(3, -1), name)


def test_mnist_normalised_has_zero_mean_unit_std(mnist_train):
  x = data.normalise(mnist_train.images, "mnist")
  assert abs(float(x.mean(dtype=np.float64))) < 1e-3
  assert abs(float(x.std(dtype=np.float64)) - 1) < 1e-3


def test_train_batch_on_mnist(mnist_train):
  batch = batching.train_batch(mnist_train, 128, seed=0, step=1000)
  assert batch["image"].shape == (128, 28, 28, 1)
  assert batch["image"].dtype == np.float32 and batch["label"].dtype == np.int32


@hypothesis.given(
    n=st.integers(1, 60),
    draw=st.data(),
    seed=st.integers(0, 2**32 - 1),
    epoch=st.integers(0, 5),
)
def test_each_epoch_is_a_permutation(n, draw, seed, epoch):
  batch_size = draw.draw(st.integers(1, n), label="batch_size")
  split = synthetic(n)
  per_epoch = batching.steps_per_epoch(split, batch_size)
  assert per_epoch == n // batch_size
  seen = np.concatenate([
      batching.train_batch(split, batch_size, seed, epoch * per_epoch + i)["label"]
      for i in range(per_epoch)
  ])
  order = np.random.default_rng([seed, epoch]).permutation(n)
  np.testing.assert_array_equal(seen, order[: per_epoch * batch_size])
  assert len(np.unique(seen)) == len(seen)  # nobody twice


def test_train_batch_is_a_pure_function_of_seed_and_step():
  split = synthetic(103)
  later = batching.train_batch(split, 10, seed=3, step=57)
  early = batching.train_batch(split, 10, seed=3, step=2)
  for key in ("image", "label"):  # same answer whatever ran before
    np.testing.assert_array_equal(batching.train_batch(split, 10, 3, 57)[key], later[key])
    np.testing.assert_array_equal(batching.train_batch(split, 10, 3, 2)[key], early[key])
  other_seed = batching.train_batch(split, 10, seed=4, step=57)
  assert not np.array_equal(other_seed["label"], later["label"])
  next_epoch = batching.train_batch(split, 10, seed=3, step=67)  # 10 steps/epoch
  assert not np.array_equal(next_epoch["label"], later["label"])
  np.testing.assert_array_equal(
      later["image"], data.normalise(split.images[later["label"]], "mnist")
  )
  assert later["label"].dtype == np.int32


def test_train_batch_rejects_bad_arguments():
  split = synthetic(10)
  with pytest.raises(ValueError, match=r"batch_size must be in \[1, 10\]"):
    batching.train_batch(split, 11, 0, 0)
  with pytest.raises(ValueError, match="step must be >= 0"):
    batching.train_batch(split, 2, 0, -1)
  with pytest.raises(TypeError, match="seed must be an integer"):
    batching.train_batch(split, 2, 0.5, 0)


@pytest.mark.parametrize("n, batch_size", [(103, 10), (100, 10), (3, 8)])
def test_eval_batches_cover_each_example_once(n, batch_size):
  split = synthetic(n)
  batches = list(batching.eval_batches(split, batch_size))
  assert len(batches) == -(-n // batch_size)
  for batch in batches:
    assert batch["image"].shape == (batch_size, 2, 2, 1)
    assert batch["image"].dtype == np.float32
    assert batch["mask"].dtype == bool and batch["label"].dtype == np.int32
  mask = np.concatenate([b["mask"] for b in batches])
  labels = np.concatenate([b["label"] for b in batches])
  images = np.concatenate([b["image"] for b in batches])
  assert mask.sum() == n and mask[:n].all()
  np.testing.assert_array_equal(labels[mask], np.arange(n))
  np.testing.assert_array_equal(images[mask], data.normalise(split.images, "mnist"))


# ---------------------------------------------------------------------------
# Devices.


def test_shard_on_one_device():
  mesh = batching.data_mesh()
  assert mesh.axis_names == ("data",) and mesh.devices.size == jax.device_count()
  batch = batching.train_batch(synthetic(16), 8, seed=0, step=0)
  sharded = batching.shard(batch, mesh)
  for key, value in sharded.items():
    assert isinstance(value, jax.Array)
    assert value.sharding == jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec("data")
    )
    np.testing.assert_array_equal(np.asarray(value), batch[key])
  with pytest.raises(ValueError, match="leading"):
    batching.shard({"x": np.float32(1.0)}, mesh)



def test_process_part_of_one_process_is_the_whole_batch():
  # Several processes: tests/test_distributed.py.
  mesh = batching.data_mesh()
  batch = batching.train_batch(synthetic(16), 8, seed=0, step=0)
  part = batching.process_part(batch, mesh)
  assert part.keys() == batch.keys()
  for key in batch:
    np.testing.assert_array_equal(part[key], batch[key])
  with pytest.raises(ValueError, match="one common leading"):
    batching.process_part({"x": np.zeros(4), "y": np.zeros(2)}, mesh)
  with pytest.raises(ValueError, match="one common leading"):
    batching.process_part({"x": np.float32(1.0)}, mesh)
  with pytest.raises(ValueError, match="1-D mesh"):
    batching.process_part(batch, jax.make_mesh((1,), ("batch",)))

TWO_DEVICES = textwrap.dedent("""
    import jax, numpy as np
    from experiments import batching

    def assert_raises(fn, arg, text):
      try:
        fn(arg, mesh)
      except ValueError as e:
        assert text in str(e), e
      else:
        raise AssertionError(f"no error for 3 examples on 2 devices ({text})")

    assert jax.device_count() == 2, jax.devices()
    mesh = batching.data_mesh()
    batch = {"image": np.arange(4 * 3, dtype=np.float32).reshape(4, 3),
             "label": np.arange(4, dtype=np.int32)}
    out = batching.shard(batch, mesh)
    for key, value in out.items():
      assert value.sharding.spec == jax.sharding.PartitionSpec("data"), value.sharding
      shards = sorted(value.addressable_shards, key=lambda s: s.index[0].start)
      assert [s.data.shape[0] for s in shards] == [2, 2]
      assert len({s.device for s in shards}) == 2
      for s in shards:
        np.testing.assert_array_equal(np.asarray(s.data), batch[key][s.index])
      np.testing.assert_array_equal(np.asarray(value), batch[key])
    assert_raises(batching.shard, {"label": np.arange(3)},
                  "divisible by the 2 devices")
    part = batching.process_part(batch, mesh)  # one process: all of it
    np.testing.assert_array_equal(part["label"], batch["label"])
    assert_raises(batching.process_part, {"label": np.arange(3)},
                  "does not split over the 2 devices")
    print("ok")
""")


def test_shard_on_two_devices_in_a_subprocess():
  env = dict(
      os.environ,
      XLA_FLAGS="--xla_force_host_platform_device_count=2",
      JAX_PLATFORMS="cpu",
      PYTHONPATH=os.pathsep.join(
          filter(None, [str(REPO), os.environ.get("PYTHONPATH")])
      ),
  )
  result = subprocess.run(
      [sys.executable, "-c", TWO_DEVICES],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().endswith("ok")


def test_decoded_arrays_are_kept_and_a_damaged_copy_is_replaced(
    mnist_test, tfds_dir, caplog
):
  kept = next(pathlib.Path(tfds_dir).glob("jaxprune_mnist/*/decoded/test.npz"))
  again = data.load("mnist", "test", source_dir=SOURCE, tfds_dir=tfds_dir)
  np.testing.assert_array_equal(again.images, mnist_test.images)
  np.testing.assert_array_equal(again.labels, mnist_test.labels)
  good = kept.read_bytes()
  with np.load(kept) as f:
    images, labels = f["images"].copy(), f["labels"]
  images[7, 3, 3, 0] ^= 1  # one flipped bit
  damaged = {"a flipped pixel": lambda: np.savez(
                 kept, images=images, labels=labels),
             "a torn file": lambda: kept.write_bytes(good[:len(good) // 2]),
             "no file": kept.unlink}
  for what, damage in damaged.items():
    damage()
    caplog.clear()
    again = data.load("mnist", "test", source_dir=SOURCE, tfds_dir=tfds_dir)
    np.testing.assert_array_equal(again.images, mnist_test.images, err_msg=what)
    np.testing.assert_array_equal(again.labels, mnist_test.labels, err_msg=what)
    assert kept.read_bytes() == good, what  # read from the records, rewritten
    assert ("not the original data" in caplog.text) == (what == "a flipped pixel")


def test_a_rewritten_decoded_copy_with_a_recomputed_digest_is_replaced(
    mnist_test, tfds_dir, tmp_path, caplog):
  # The kept arrays, rewritten with other pixels and labels and a digest
  # recomputed over them, stored inside the file the way it used to be: the
  # expected digest is a constant of the code, so they are still refused.
  copy = tmp_path / "tfds"
  shutil.copytree(tfds_dir / "jaxprune_mnist", copy / "jaxprune_mnist")
  kept = next(copy.glob("jaxprune_mnist/*/decoded/test.npz"))
  good = kept.read_bytes()
  with np.load(kept) as f:
    images, labels = f["images"].copy(), f["labels"].copy()
  images[0] = 255 - images[0]
  labels[0] = (labels[0] + 1) % 10
  digest = hashlib.sha256()
  for array in (images, labels):
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    digest.update(np.ascontiguousarray(array).data)
  np.savez(kept, images=images, labels=labels,
           sha256=np.asarray(digest.hexdigest()))
  again = data.load("mnist", "test", source_dir=tmp_path / "absent",
                    tfds_dir=copy)
  np.testing.assert_array_equal(again.images, mnist_test.images)
  np.testing.assert_array_equal(again.labels, mnist_test.labels)
  assert f"{kept} is not the original data" in caplog.text
  assert kept.read_bytes() == good  # rewritten from the records
  assert data.ARRAYS_SHA256["mnist"]["test"] == idx.arrays_sha256(
      mnist_test.images, mnist_test.labels)


def _flip(path, at):
  raw = bytearray(path.read_bytes())
  raw[int(len(raw) * at)] ^= 0xFF
  path.write_bytes(bytes(raw))


def _truncate(path):
  path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


RECORDS = "jaxprune_mnist-test.array_record-00000-of-00001"
INFO = "dataset_info.json"
# How each copy is damaged, and the file the error names (tfds reads the
# records a split's info announces, so wrong lengths show in the records).
DAMAGES = {
    "truncated records": (RECORDS, _truncate, RECORDS),
    "records with a flipped byte": (RECORDS, lambda p: _flip(p, 0.5), RECORDS),
    "records with a flipped byte in a chunk": (
        RECORDS, lambda p: _flip(p, 0.01), RECORDS),
    "no records": (RECORDS, pathlib.Path.unlink, "no test records there"),
    "dataset_info.json not UTF-8": (
        INFO, lambda p: p.write_bytes(b"\xff\xfe{garbage"), INFO),
    "truncated dataset_info.json": (INFO, _truncate, INFO),
    "dataset_info.json with wrong lengths": (
        INFO, lambda p: p.write_text(p.read_text().replace('"10000"', '"10001"')),
        RECORDS),
    "no dataset_info.json": (INFO, pathlib.Path.unlink, INFO),
}


def _prepared_copy(tfds_dir, tmp_path):
  """A copy of the prepared MNIST without its decoded arrays (so that the
  records are read), and its data directory."""
  copy = tmp_path / "tfds"
  shutil.copytree(tfds_dir / "jaxprune_mnist", copy / "jaxprune_mnist",
                  ignore=shutil.ignore_patterns("decoded"))
  return copy, data.tfds_builders.data_dir("mnist", copy)


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_corrupt_prepared_data_set_names_its_directory(
    mnist_test, tfds_dir, tmp_path, damage):
  # tfds's own errors named no path (`Corrupted Riegeli/records file ... at
  # byte N`, UnicodeDecodeError, KeyError).
  copy, directory = _prepared_copy(tfds_dir, tmp_path)
  file, spoil, named = DAMAGES[damage]
  spoil(directory / file)
  with pytest.raises(data.CorruptPreparedDataError) as e:
    data.load("mnist", "test", source_dir=tmp_path / "absent", tfds_dir=copy)
  message = str(e.value)
  assert f"the prepared data set in {directory} does not read: " in message
  assert (named if named.startswith("no ") else str(directory / named)) in message
  assert f"Delete that directory (rm -r {directory}) and load again" in message
  assert not (directory / "decoded" / "test.npz").exists()
  if damage == "truncated records":  # deleted, it is prepared again
    shutil.rmtree(directory)
    again = data.load("mnist", "test", source_dir=SOURCE, tfds_dir=copy)
    np.testing.assert_array_equal(again.images, mnist_test.images)


def test_prepared_records_that_are_not_the_original_data_are_refused(
    mnist_test, tfds_dir, tmp_path):
  # Records that read but hold other data: the training records copied over
  # the test ones (their first 10,000 read as the test split).  Caught by
  # the split's digest, a constant of the code.
  copy, directory = _prepared_copy(tfds_dir, tmp_path)
  shutil.copyfile(directory / RECORDS.replace("-test.", "-train."),
                  directory / RECORDS)
  with pytest.raises(data.CorruptPreparedDataError) as e:
    data.load("mnist", "test", source_dir=tmp_path / "absent", tfds_dir=copy)
  message = str(e.value)
  assert f"the prepared data set in {directory} is not the original mnist" in (
      message)
  assert f"expected {data.ARRAYS_SHA256['mnist']['test']}" in message
  assert str(directory / RECORDS) in message and "rm -r" in message
  assert not (directory / "decoded").exists()
