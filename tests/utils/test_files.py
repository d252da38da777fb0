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
