"""Atomic output files: written to a temporary file beside the target, then renamed, so a
failed or interrupted write never leaves a half-written output behind."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, Callable, Iterable


def _umask() -> int:
  umask = os.umask(0)
  os.umask(umask)
  return umask


def _new_file_mode() -> int:
  """The mode a plain `open(path, 'w')` would give: 0o666 less the umask."""
  return 0o666 & ~_umask()


def temporary_beside(path: str) -> str:
  """A new empty file next to `path` (same directory, so the rename is atomic), with the
  permissions a normal write would give (mkstemp's own are 0600)."""
  directory = os.path.dirname(os.path.abspath(path))
  handle, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-",
                                       suffix=os.path.splitext(path)[1])
  os.close(handle)
  os.chmod(temporary, _new_file_mode())
  return temporary


def replace_atomically(path: str, write: Callable[[str], None]) -> None:
  """Calls write(temporary_path), then renames the temporary file onto `path`; on any
  failure the temporary file is removed and `path` is left as it was."""
  temporary = temporary_beside(path)
  try:
    write(temporary)
    os.replace(temporary, path)
  except BaseException:
    os.unlink(temporary)
    raise


def write_text_atomically(path: str, text: str) -> None:
  """Writes `text` (UTF-8) to `path` through a temporary file and a rename."""
  def write(temporary: str) -> None:
    with open(temporary, "w", encoding="utf-8") as f:
      f.write(text)
  replace_atomically(path, write)


def write_jsonl_atomically(path: str, records: Iterable[Any]) -> None:
  """One JSON object per line."""
  lines = [json.dumps(record, ensure_ascii=False) + "\n" for record in records]
  write_text_atomically(path, "".join(lines))


def write_json_atomically(path: str, value: Any) -> None:
  """Indented strict JSON (NaN or infinity is an error, not a non-standard token)."""
  write_text_atomically(path, json.dumps(value, indent=2, allow_nan=False) + "\n")


def write_directory_atomically(path: str, write: Callable[[str], None]) -> None:
  """Calls write(temporary_directory) on a new directory beside `path`, then renames it onto
  `path` (an older `path` is moved aside first and removed after); on any failure the
  temporary directory is removed and `path` is left as it was."""
  path = os.path.abspath(path)
  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  temporary = tempfile.mkdtemp(dir=parent, prefix=".tmp-")
  os.chmod(temporary, 0o777 & ~_umask())  # mkdtemp's own mode is 0700
  try:
    write(temporary)
  except BaseException:
    shutil.rmtree(temporary, ignore_errors=True)
    raise
  old = None
  if os.path.exists(path):
    old = tempfile.mkdtemp(dir=parent, prefix=".old-")
    os.replace(path, os.path.join(old, "previous"))
  os.replace(temporary, path)
  if old is not None:
    shutil.rmtree(old, ignore_errors=True)
