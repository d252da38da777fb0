"""Orbax checkpoints of training runs, and params-only exports for inference.

A run's workdir holds `checkpoints/<step>/` (the train state and a JSON description of the
model and what is trained) managed by an Orbax CheckpointManager: saved every N steps,
asynchronously, keeping the last K. A run started in a workdir that has checkpoints resumes
from the latest one, after checking that it describes the same model; a checkpoint of a
different model is reported as such instead of failing inside Orbax.

An export (`export_params`) is a directory with `config.json` (the T5Config) and `params/`
(an Orbax checkpoint of the parameters alone), loaded by `load_exported`; a model trained
with FREE's learned KD map also holds the map as `kd_map.npy` (`export_kd_map`,
`load_kd_map`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from typing import Any, Dict, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from calm_jax.utils.files import replace_atomically, write_json_atomically
from calm_jax.model.config import T5Config

EXPORT_CONFIG = "config.json"
EXPORT_PARAMS = "params"
EXPORT_KD_MAP = "kd_map.npy"
# Description keys a resumed run may change (announced, not refused): the run's length.
RESUMABLE_CHANGES = ("total_steps",)


class CheckpointMismatchError(ValueError):
  """A workdir's checkpoint does not fit the run that wants to resume from it."""


def _differences(stored: Dict[str, Any], wanted: Dict[str, Any], prefix: str = "") -> list:
  out = []
  for key in sorted(set(stored) | set(wanted)):
    if not prefix and key in RESUMABLE_CHANGES:
      continue
    a, b = stored.get(key, "<missing>"), wanted.get(key, "<missing>")
    if isinstance(a, dict) and isinstance(b, dict):
      out.extend(_differences(a, b, f"{prefix}{key}."))
    elif a != b:
      out.append(f"{prefix}{key}: checkpoint {a!r}, this run {b!r}")
  return out


def parameter_shapes(tree: Any) -> Dict[str, list]:
  """{path: shape} of every leaf, for a checkpoint's description (JSON)."""
  return {jax.tree_util.keystr(path): list(np.shape(leaf))
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


class TrainCheckpoints:
  """Save/restore of a training state pytree plus a JSON description, in `directory`."""

  def __init__(self, directory: str, *, save_every: int, keep: int, asynchronous: bool = True):
    if save_every < 1:
      raise ValueError(f"checkpoint_every must be >= 1, got {save_every}")
    if keep < 1:
      raise ValueError(f"keep_checkpoints must be >= 1, got {keep}")
    self.directory = os.path.abspath(directory)
    self.save_every = save_every
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep,
                                             enable_async_checkpointing=asynchronous))

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, description: Dict[str, Any], *, force: bool = False) -> bool:
    """At every `save_every`-th step, or when forced, starts saving (in the background when
    asynchronous); True if a save was started."""
    if step % self.save_every and not force:
      return False
    return self._manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                      description=ocp.args.JsonSave(description)),
        force=True)

  def stored_description(self, step: int) -> Dict[str, Any]:
    """The JSON description saved with `step`; unreadable data names the checkpoint."""
    with _readable(os.path.join(self.directory, str(step)), "checkpoint"):
      return self._manager.restore(
          step, args=ocp.args.Composite(description=ocp.args.JsonRestore()))["description"]

  def restore(self, step: int, like: Any, description: Dict[str, Any]) -> Any:
    """The state saved at `step`, placed like `like` (arrays with their shardings), after
    checking the stored description (model, setup, parameter shapes) against this run's."""
    stored = self.stored_description(step)
    problems = _differences(stored, json.loads(json.dumps(description)))
    if problems:
      raise CheckpointMismatchError(
          f"{self.directory} holds a checkpoint (step {step}) of a different model or "
          f"training setup; use a new workdir or the same settings. Differences: "
          + "; ".join(problems[:8]))
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    with _readable(os.path.join(self.directory, str(step)), "checkpoint"):
      return self._manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]

  def wait(self) -> None:
    """Blocks until background saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def export_params(directory: str, config: T5Config, params: Any) -> str:
  """Writes a params-only export (config.json + params/); replaces an older export."""
  directory = os.path.abspath(directory)
  os.makedirs(directory, exist_ok=True)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(directory, EXPORT_PARAMS), params, force=True)
  checkpointer.wait_until_finished()
  if jax.process_index() == 0:
    write_json_atomically(os.path.join(directory, EXPORT_CONFIG), dataclasses.asdict(config))
  return directory


def is_export(directory: str) -> bool:
  return (os.path.isfile(os.path.join(directory, EXPORT_CONFIG))
          and os.path.isdir(os.path.join(directory, EXPORT_PARAMS)))


@contextlib.contextmanager
def _readable(path: str, what: str):
  """Turns a failure inside Orbax (truncated or missing files: many exception types, the
  cause deep in a long traceback) into one ValueError naming `path` and what to do."""
  try:
    yield
  except Exception as error:  # pylint: disable=broad-except
    cause = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
    raise ValueError(f"{path}: the {what} cannot be read ({type(error).__name__}: "
                     f"{cause[:300]}); it is incomplete or corrupt: delete it (a training "
                     "run then resumes from an earlier checkpoint or starts over) or "
                     "export it again") from error


def read_export_config(directory: str) -> T5Config:
  """The T5Config of an export (its config.json), without reading the parameters; a
  missing, truncated or invalid file is a ValueError naming it."""
  if not is_export(directory):
    raise ValueError(f"{directory!r} is not a calm_jax params export (expected "
                     f"{EXPORT_CONFIG} and {EXPORT_PARAMS}/ inside)")
  path = os.path.join(directory, EXPORT_CONFIG)
  try:
    with open(path, encoding="utf-8") as f:
      return T5Config.from_dict(json.load(f))
  except json.JSONDecodeError as error:
    raise ValueError(f"{path} line {error.lineno}: not valid JSON ({error.msg}); the export "
                     "is incomplete or corrupt: export it again (the train mode writes "
                     "<workdir>/model)") from None
  except (TypeError, ValueError) as error:
    raise ValueError(f"{path}: not a T5 config ({error}); export it again") from None


def load_exported(directory: str) -> Tuple[T5Config, Any]:
  """(config, params) from an `export_params` directory, as host NumPy-backed arrays."""
  config = read_export_config(directory)
  params_dir = os.path.join(os.path.abspath(directory), EXPORT_PARAMS)
  with _readable(params_dir, "exported parameters"):
    params = ocp.StandardCheckpointer().restore(params_dir)
  return config, params


def export_kd_map(directory: str, kd_map: Any) -> str:
  """Writes FREE's learned KD map [d, d] into an export directory (process 0, atomically),
  or with None removes an older export's map; returns its path."""
  path = os.path.join(os.path.abspath(directory), EXPORT_KD_MAP)
  if jax.process_index() != 0:
    return path
  if kd_map is None:
    if os.path.isfile(path):
      os.unlink(path)
  else:
    # replicated on the training mesh: this process's copy is the whole map
    local = kd_map.addressable_data(0) if isinstance(kd_map, jax.Array) else kd_map
    values = np.asarray(local, np.float32)  # [d, d]
    def write(temporary: str) -> None:
      with open(temporary, "wb") as f:
        np.save(f, values)
    replace_atomically(path, write)
  return path


def load_kd_map(directory: str) -> Optional[np.ndarray]:
  """The learned KD map [d, d] of an export, or None when it was trained without one."""
  path = os.path.join(directory, EXPORT_KD_MAP)
  if not os.path.isfile(path):
    return None
  with _readable(path, "learned KD map"):
    return np.load(path)
