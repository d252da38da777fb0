"""Atomic output files (calm_jax.utils.files)."""

import os

import pytest

from calm_jax.utils import files


def test_atomic_write_leaves_nothing_behind_on_failure(tmp_path):
  target = tmp_path / "out.jsonl"
  target.write_text("old\n")
  with pytest.raises(TypeError):
    files.write_jsonl_atomically(str(target), [{"ok": 1}, {"bad": object()}])
  assert target.read_text() == "old\n"
  assert os.listdir(tmp_path) == ["out.jsonl"]


def test_directory_write_replaces_the_old_directory_or_leaves_it_as_it_was(tmp_path):
  target = tmp_path / "export"
  target.mkdir()
  (target / "old.txt").write_text("old")

  def failing(directory):
    (tmp_path / "seen").write_text(directory)
    with open(os.path.join(directory, "half.txt"), "w", encoding="utf-8") as f:
      f.write("half")
    raise RuntimeError("stopped")
  with pytest.raises(RuntimeError, match="stopped"):
    files.write_directory_atomically(str(target), failing)
  assert sorted(os.listdir(tmp_path)) == ["export", "seen"]
  assert os.listdir(target) == ["old.txt"]

  def complete(directory):
    with open(os.path.join(directory, "new.txt"), "w", encoding="utf-8") as f:
      f.write("new")
  files.write_directory_atomically(str(target), complete)
  assert sorted(os.listdir(tmp_path)) == ["export", "seen"]
  assert os.listdir(target) == ["new.txt"]
  assert (target / "new.txt").read_text() == "new"
