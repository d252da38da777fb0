"""Saving and loading learned exit classifiers.

A saved classifier is a directory holding `params.msgpack` (flax.serialization) and
`classifier.json` (name, options, input width, SHA-256 of the parameter file), each written
atomically; `load_classifier` checks all of it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Dict, Optional

import flax
import jax
import numpy as np

from calm_jax.exit_classifiers.registry import (check_classifier_params, classifier_options,
                                                get_classifier, is_learned)
from calm_jax.utils.files import replace_atomically, write_json_atomically

Params = Any
PARAMS_FILE = "params.msgpack"
INFO_FILE = "classifier.json"


@dataclasses.dataclass(frozen=True)
class SavedClassifier:
  """A classifier read back from disk."""

  name: str
  options: Dict[str, int]
  input_width: int  # d_model of the decoder it was trained on
  params: Params


def _input_width(name: str, params: Params) -> int:
  """d_model of the states the classifier reads (its input norm's width)."""
  try:
    return int(params["norm"]["scale"].shape[0])
  except (KeyError, TypeError, IndexError, AttributeError):
    raise ValueError(f"parameters do not look like an exit classifier {name!r} (no "
                     "norm/scale)") from None


def save_classifier(directory: str, name: str, params: Params) -> str:
  """Writes classifier `name`'s parameters and a description to `directory` (created if
  needed): params.msgpack first, then classifier.json, each atomically; returns the
  directory. ValueError if the parameters are not a complete classifier `name`."""
  options = classifier_options(name, params)
  width = _input_width(name, params)
  check_classifier_params(name, params, width)
  payload = flax.serialization.msgpack_serialize(jax.tree.map(np.asarray, params))
  os.makedirs(directory, exist_ok=True)

  def write(temporary: str) -> None:
    with open(temporary, "wb") as f:
      f.write(payload)
  replace_atomically(os.path.join(directory, PARAMS_FILE), write)
  write_json_atomically(os.path.join(directory, INFO_FILE), {
      "name": name, "options": options, "input_width": width,
      "params_sha256": hashlib.sha256(payload).hexdigest()})
  return directory


RETRAIN = "train it again (the train_exit mode writes <workdir>/exit_classifiers/<name>)"


def _read_info(directory: str) -> Dict[str, Any]:
  path = os.path.join(directory, INFO_FILE)
  if not os.path.isfile(path):
    raise ValueError(f"no saved exit classifier at {directory!r}: {INFO_FILE} is missing")
  try:
    with open(path, encoding="utf-8") as f:
      info = json.load(f)
  except json.JSONDecodeError as error:
    raise ValueError(f"{path} line {error.lineno}: not valid JSON ({error.msg}); the saved "
                     f"classifier is incomplete or corrupt: {RETRAIN}") from None
  missing = [key for key in ("name", "options", "input_width", "params_sha256")
             if not isinstance(info, dict) or key not in info]
  if missing:
    raise ValueError(f"{path!r} lacks {', '.join(missing)}")
  return info


def load_classifier(directory: str, model_config=None,
                    expected_name: Optional[str] = None) -> SavedClassifier:
  """Reads a classifier written by `save_classifier` and checks it: known name (equal to
  `expected_name` when given), parameter file intact and of the recorded options' shapes,
  input width equal to `model_config.d_model` when given. ValueError naming what is wrong."""
  info = _read_info(directory)
  name = info["name"]
  get_classifier(name)
  if expected_name is not None and name != expected_name:
    raise ValueError(f"the exit classifier at {directory!r} is {name!r}, but the measure is "
                     f"{expected_name!r}")
  path = os.path.join(directory, PARAMS_FILE)
  if not os.path.isfile(path):
    raise ValueError(f"no saved exit classifier at {directory!r}: {PARAMS_FILE} is missing")
  with open(path, "rb") as f:
    payload = f.read()
  if hashlib.sha256(payload).hexdigest() != info["params_sha256"]:
    raise ValueError(f"{path!r} does not match the checksum in {INFO_FILE} (changed or "
                     f"partly written): {RETRAIN}")
  params = flax.serialization.msgpack_restore(payload)
  width = int(info["input_width"])
  if model_config is not None and model_config.d_model != width:
    raise ValueError(f"the exit classifier at {directory!r} reads states of width {width}, "
                     f"but the model's d_model is {model_config.d_model}")
  options = check_classifier_params(name, params, width)
  if options != info["options"]:
    raise ValueError(f"the exit classifier at {directory!r} has options {options}, but "
                     f"{INFO_FILE} records {info['options']}")
  return SavedClassifier(name, options, width, params)


def classifier_params_for(exit_config, model_config) -> Optional[Params]:
  """The classifier parameters a run config asks for: None unless the measure is a learned
  classifier, else those saved at `exit_config.classifier_path` (checked)."""
  if not is_learned(exit_config.measure):
    return None
  if not exit_config.classifier_path:
    raise ValueError(f"measure {exit_config.measure!r} is a learned exit classifier: set "
                     "exit.classifier_path to a directory written by save_classifier")
  return load_classifier(exit_config.classifier_path, model_config,
                         expected_name=exit_config.measure).params
