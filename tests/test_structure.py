"""experiments.structure: the units a mask cuts off, against a hand count."""

import numpy as np

from experiments import structure


def test_a_dead_filter_removes_its_flattened_inputs_downstream():
  # conv (3x3, 1 -> 4 filters), flatten 2x2x4 = 16, dense 16 -> 5, dense 5 -> 3.
  params = {
      "Conv_0": {"kernel": np.ones((3, 3, 1, 4)), "bias": np.ones(4)},
      "Dense_0": {"kernel": np.ones((16, 5)), "bias": np.ones(5)},
      "Dense_1": {"kernel": np.ones((5, 3)), "bias": np.ones(3)},
  }
  conv = np.ones((3, 3, 1, 4), bool)
  conv[..., 1] = False  # filter 1 is gone: inputs 1, 5, 9, 13 of Dense_0 too
  dense0 = np.ones((16, 5), bool)
  dense0[:, 4] = False  # hidden unit 4 reads nothing...
  dense1 = np.ones((5, 3), bool)
  dense1[2] = False  # ...and hidden unit 2 is read by nothing
  masks = {"Conv_0": {"kernel": conv, "bias": None},
           "Dense_0": {"kernel": dense0, "bias": None},
           "Dense_1": {"kernel": dense1, "bias": None}}
  report = structure.kept_params(params, masks)
  assert report.units == {"Conv_0": [1, 3], "Dense_0": [12, 3], "Dense_1": [3, 3]}
  assert report.kept == (9 * 3 + 3) + (12 * 3 + 3) + (3 * 3 + 3)
  assert report.total == 36 + 4 + 80 + 5 + 15 + 3
  assert report.fraction == report.kept / report.total


def test_unmasked_networks_keep_everything():
  params = {"Dense_0": {"kernel": np.ones((4, 3)), "bias": np.ones(3)},
            "Dense_1": {"kernel": np.ones((3, 2))}}
  report = structure.kept_params(params, {"Dense_0": {"kernel": None, "bias": None},
                                          "Dense_1": {"kernel": None}})
  assert report.kept == report.total == 12 + 3 + 6
