"""Checkpoints across device counts: a run cut in three, on 1, then 8, then 1
device(s), ends where an uninterrupted run on one device ends.

The 8-device leg is ``python -m experiments.run --resume`` in a subprocess
with 8 simulated CPU devices: it restores a checkpoint written on one device
(1 -> 8) and writes one that this process restores on one device (8 -> 1).
"""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments import checkpoints
from experiments import config as config_lib
from experiments import train

pytestmark = pytest.mark.usefixtures("splits_read_once")

# An 8-way batch split changes the order of the reductions of the gradients,
# so params and Adam moments match to float tolerance only; measured over the
# 12 steps below: max |difference| 1.2e-7, relative 4e-4 (on entries near 0).
# Integers (step, counters, flips, keys) and masks match exactly.
_RTOL, _ATOL = 1e-4, 1e-6


def _tiny(data_dirs, method: str, **changes) -> config_lib.Config:
  """12 steps of batch 64 (8 x 8); masks change at steps 2 to 10."""
  source, tfds_dir = data_dirs
  return dataclasses.replace(
      config_lib.PRESETS["smoke"], name=f"checkpoints_{method}", method=method,
      steps=12, batch_size=64, begin_step=2, end_step=10, frequency=2,
      prune_every=3, rate=0.5, log_every=4, eval_every=0, checkpoint_every=4,
      source_dir=source, tfds_dir=tfds_dir, **changes,
  )


def _resume_on_8_devices(config: config_lib.Config, workdir) -> subprocess.Popen:
  """Starts ``python -m experiments.run CONFIG --resume`` on 8 devices."""
  config_file = workdir.parent / f"{workdir.name}.json"
  config_file.write_text(json.dumps(config_lib.to_dict(config)))
  flags = os.environ.get("XLA_FLAGS", "")
  env = {**os.environ,
         "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count=8".strip()}
  return subprocess.Popen(
      [sys.executable, "-m", "experiments.run", str(config_file), "--workdir",
       str(workdir), "--resume", "--no-progress"],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
  )


def _assert_same_state(a: train.TrainState, b: train.TrainState) -> None:
  """Integers, booleans and keys equal; floats equal to tolerance."""
  paths = lambda t: [jax.tree_util.keystr(p) for p, _ in jax.tree.leaves_with_path(t)]
  assert paths(a) == paths(b)
  for path, x, y in zip(paths(a), jax.tree.leaves(a), jax.tree.leaves(b)):
    x, y = np.asarray(x), np.asarray(y)
    if np.issubdtype(x.dtype, np.inexact):
      np.testing.assert_allclose(x, y, rtol=_RTOL, atol=_ATOL, err_msg=path)
    else:
      np.testing.assert_array_equal(x, y, err_msg=path)
  for x, y in zip(jax.tree.leaves(a.masks), jax.tree.leaves(b.masks)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# FlipOut at a learning rate that flips the signs of surviving weights.
@pytest.mark.parametrize("method, changes, fields", [
    ("magnitude", {}, (".step", ".opt_state.masks", ".opt_state.level",
                       ".opt_state.key", ".count")),
    ("flipout", {"learning_rate": 0.03},
     (".step", ".opt_state.masks", ".opt_state.flips", ".opt_state.events",
      ".opt_state.key", ".count")),
])
@pytest.mark.long_running(45)
def test_one_then_eight_then_one_device_ends_where_one_device_ends(
    data_dirs, tmp_path, method, changes, fields):
  config = _tiny(data_dirs, method, **changes)
  one, cut = tmp_path / "one", tmp_path / "cut"
  train.train_and_evaluate(dataclasses.replace(config, steps=4), cut,
                           progress=False)
  eight_devices = _resume_on_8_devices(dataclasses.replace(config, steps=8), cut)
  try:
    train.train_and_evaluate(config, one, progress=False)  # meanwhile
    output, _ = eight_devices.communicate(timeout=600)
  finally:
    eight_devices.kill()
  assert eight_devices.returncode == 0, output[-3000:]
  assert json.loads((cut / "summary.json").read_text())["devices"] == 8

  # The state written on 8 devices at step 8, restored on one device: field
  # by field, what the 8-device process hashed when it saved it, and what
  # the uninterrupted run had at step 8.
  eight = train.load_checkpoint(config, cut)
  assert int(eight.step) == 8
  saved = json.loads((cut / "checkpoints" / "8" / "digest" / "metadata").read_text())
  restored = checkpoints.digest(eight)
  assert restored == saved
  for field in fields:
    assert any(field in key for key in restored), field
  _assert_same_state(eight, train.load_checkpoint(config, one, step=8))
  if method == "flipout":
    assert int(eight.opt_state.events) == 2
    assert sum(int(f.sum()) for f in jax.tree.leaves(eight.opt_state.flips)) > 0

  summary = train.train_and_evaluate(config, cut, resume=True, progress=False)
  assert summary["devices"] == 1
  _assert_same_state(train.load_checkpoint(config, cut),
                     train.load_checkpoint(config, one))
