"""The resume store of long decoding runs (calibrate, evaluate): what a run has decoded so
far, saved atomically as it goes, so that a killed run restarted with the same workdir and
config continues where it stopped.

A store is a directory `<workdir>/resume/<name>` holding `description.json` (what the run
decodes: the config without its `mesh` section, and a fingerprint of the model's
parameters) and one `<key>.npz` per finished part. Opening a store whose description
differs from the run's is a `ResumeMismatchError` listing every difference (the workdir
belongs to another run: use a fresh workdir, or delete the store). A run that completes
removes its store, so it ends with exactly the files of an uninterrupted run.

Process 0 writes; every process reads which parts exist once, when the store is opened (so
all processes skip the same parts; the workdir must be shared storage over hosts).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from typing import Any, Dict, Optional

import jax
import ml_collections
import numpy as np

from calm_jax.utils.files import replace_atomically, write_json_atomically

RESUME_DIR = "resume"
DESCRIPTION_FILE = "description.json"
# Sections that do not change what a run decodes: a restart may change them.
UNCHECKED_SECTIONS = ("mesh",)


class ResumeMismatchError(ValueError):
  """A workdir's resume store belongs to a run with another config or model."""


def _flat(tree: Any, prefix: str = "") -> Dict[str, Any]:
  """{'a.b': leaf} of nested dicts."""
  if not isinstance(tree, dict):
    return {prefix[:-1]: tree}
  flat = {}
  for key, value in tree.items():
    flat.update(_flat(value, f"{prefix}{key}."))
  return flat


def description_differences(stored: Dict[str, Any], wanted: Dict[str, Any]) -> list:
  """'key: stored X, this run Y' for every dotted key whose values differ."""
  old, new = _flat(stored), _flat(wanted)
  return [f"{key}: stored {old.get(key, '<missing>')!r}, this run {new.get(key, '<missing>')!r}"
          for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]


def params_fingerprint(params: Any) -> str:
  """SHA-256 over every parameter's path, dtype, shape and bytes."""
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    array = np.asarray(leaf)
    digest.update(f"{jax.tree_util.keystr(path)}:{array.dtype}:{array.shape};".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
  return digest.hexdigest()


def run_description(config: ml_collections.ConfigDict, params: Any) -> Dict[str, Any]:
  """What a run decodes: its config (less UNCHECKED_SECTIONS) and its model's fingerprint."""
  # Tuples become lists and infinities strings, as description.json stores them.
  values = json.loads(json.dumps(config.to_dict(), default=repr), parse_constant=str)
  for name in UNCHECKED_SECTIONS:
    values.pop(name, None)
  return {"config": values, "model_sha256": params_fingerprint(params)}


def resume_key(kind: str, name: str) -> str:
  """A file-name safe part key for a free-form `name` (e.g. 'softmax_diff delta=0.1'): its
  safe characters, and a digest of the whole name so that distinct names never share one."""
  safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")
  return f"{kind}_{safe}_{hashlib.sha256(name.encode('utf-8')).hexdigest()[:8]}"


class ResumeStore:
  """The finished parts of one run, by key (file-name safe: letters, digits, '_', '-',
  '.')."""

  def __init__(self, directory: str, description: Dict[str, Any]):
    self.directory = directory
    self._writes = jax.process_index() == 0
    path = os.path.join(directory, DESCRIPTION_FILE)
    if os.path.isfile(path):
      with open(path, encoding="utf-8") as f:
        stored = json.load(f)
      differences = description_differences(stored, description)
      if differences:
        raise ResumeMismatchError(
            f"{directory} holds an unfinished run with another config or model: "
            f"{'; '.join(differences)}. Restart with that run's config, use a new workdir, "
            "or delete that directory to start over")
    elif self._writes:
      os.makedirs(directory, exist_ok=True)
      write_json_atomically(path, description)
    self._done = set(self._finished_keys())

  def _finished_keys(self):
    if not os.path.isdir(self.directory):
      return []
    return [name[:-len(".npz")] for name in os.listdir(self.directory)
            if name.endswith(".npz") and not name.startswith(".")]

  def __len__(self) -> int:
    return len(self._done)

  def load(self, key: str) -> Optional[Dict[str, np.ndarray]]:
    """The arrays saved under `key`, or None when that part was not finished."""
    if key not in self._done:
      return None
    with np.load(os.path.join(self.directory, f"{key}.npz")) as arrays:
      return {name: arrays[name] for name in arrays.files}

  def save(self, key: str, arrays: Dict[str, np.ndarray]) -> None:
    """Saves a finished part (process 0; atomically)."""
    if self._writes:
      def write(temporary: str) -> None:
        with open(temporary, "wb") as f:
          np.savez(f, **arrays)
      replace_atomically(os.path.join(self.directory, f"{key}.npz"), write)
    self._done.add(key)

  def finish(self) -> None:
    """Removes the store: the run is complete."""
    if self._writes:
      shutil.rmtree(self.directory, ignore_errors=True)
      parent = os.path.dirname(self.directory)
      if os.path.isdir(parent) and not os.listdir(parent):
        os.rmdir(parent)


def open_store(workdir: str, name: str, config: ml_collections.ConfigDict,
               params: Any) -> ResumeStore:
  """The resume store <workdir>/resume/<name> of this run (created, or checked)."""
  return ResumeStore(os.path.join(workdir, RESUME_DIR, name), run_description(config, params))
