"""Files written whole or not at all."""

import pytest

from experiments import files


def test_text_replaces_the_old_contents(tmp_path):
  path = tmp_path / "summary.json"
  path.write_text("old\n")
  files.write_text_atomically(path, "new\n")
  assert path.read_text() == "new\n"
  assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_a_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text("line 1\nline 2\n")
  with pytest.raises(RuntimeError, match="killed"):
    with files.replaced_atomically(path) as f:
      f.write(b"line 1\n")
      raise RuntimeError("killed halfway")
  assert path.read_text() == "line 1\nline 2\n"
  assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]
  # A file that did not exist does not appear.
  with pytest.raises(RuntimeError):
    with files.replaced_atomically(tmp_path / "new.npz") as f:
      raise RuntimeError
  assert not (tmp_path / "new.npz").exists()
