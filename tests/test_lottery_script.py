"""The lottery-ticket script on real MNIST, a few steps a round: IMP, its
control on the same masks, Accelerated IMP's shorter rounds, the table."""

import json

import numpy as np
import pytest

from experiments import lottery


@pytest.mark.long_running(40)
@pytest.mark.usefixtures("splits_read_once")
def test_imp_control_and_aimp_runs_write_their_rounds_and_table(data_dirs, tmp_path):
  source, tfds = data_dirs
  common = ["--seed", "0", "--rounds", "2", "--steps", "20", "--eval-every", "10",
            "--out", str(tmp_path / "out"), "--workdir", str(tmp_path / "runs"),
            "--source-dir", source, "--tfds-dir", tfds]
  assert lottery.main(["--variant", "imp", *common]) == 0
  imp = json.loads((tmp_path / "out" / "imp_seed0.json").read_text())
  remaining = [r["remaining"] for r in imp["rounds"]]
  kept = [235_200 - round(0.2 * 235_200), 30_000 - round(0.2 * 30_000),
          1000 - round(0.1 * 1000)]
  assert remaining[0] == 1.0
  assert remaining[1] == sum(kept) / 266_200
  assert all(r["early_stop_step"] in (10, 20) for r in imp["rounds"])

  assert lottery.main(["--variant", "control", "--rounds-of",
                       str(tmp_path / "out" / "imp_seed0.json"), *common]) == 0
  control = json.loads((tmp_path / "out" / "control_seed0.json").read_text())
  assert [r["remaining"] for r in control["rounds"]] == remaining[1:]

  assert lottery.main(["--variant", "aimp", "--short-steps", "10", *common]) == 0
  aimp = json.loads((tmp_path / "out" / "aimp_seed0.json").read_text())
  assert [r["steps"] for r in aimp["rounds"]] == [10, 10, 20]

  assert lottery.main(["--collect", str(tmp_path / "out")]) == 0
  headline, every = (tmp_path / "out" / "table.md").read_text().split("Every round")
  every = [line for line in every.splitlines() if line.startswith("| ")]
  assert len(every) == 2 + 3 + 2 + 3
  assert np.isclose(float(every[-1].split("|")[4]), 100 * remaining[-1], atol=0.05)
  rows = [line.split("|")[1:3] for line in headline.splitlines() if line.startswith("| ")]
  assert [" imp ", " 2 "] in rows and [" control ", " 1 "] in rows
  assert any(line.startswith("| aimp | 1 |") for line in headline.splitlines())
