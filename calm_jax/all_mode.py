"""The `all` mode: train -> train_exit (each learned measure evaluated) -> calibrate ->
evaluate, in one workdir; each later step uses the model the first one exported."""

from __future__ import annotations

import copy

import ml_collections

from calm_jax.calibrate_mode import calibrate_examples, settings_from
from calm_jax.decoding.classifiers import CLASSIFIERS
from calm_jax.evaluate_mode import evaluate_examples, evaluate_settings_from
from calm_jax.train_exit_mode import check_train_exit_config, train_exit_examples
from calm_jax.train_mode import check_train_config, train_examples


def _with(config: ml_collections.ConfigDict, **fields) -> ml_collections.ConfigDict:
  """A copy of `config` with dotted fields replaced (the original stays locked)."""
  changed = copy.deepcopy(config)
  with changed.unlocked():
    for dotted, value in fields.items():
      section, key = dotted.split("__")
      changed[section][key] = value
  return changed


def check_all(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Every step's settings, before the first one starts."""
  check_train_config(config)
  check_train_exit_config(config)
  settings_from(config.calibration)
  learned = [m for m in config.evaluate.measures if m in CLASSIFIERS]
  # The classifiers do not exist yet: check the rest of the evaluate section without them.
  evaluate_settings_from(_with(config, evaluate__measures=tuple(
      m for m in config.evaluate.measures if m not in learned)).evaluate, workdir)


def run_all(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Runs the four steps; returns the path of report.json."""
  check_all(config, workdir)
  export = train_examples(config, workdir)
  trained = _with(config, model__checkpoint=export, model__hf_path="")
  for measure in trained.evaluate.measures:
    if measure in CLASSIFIERS:
      train_exit_examples(_with(trained, train_exit__classifier=measure), workdir)
  calibrate_examples(trained, workdir)
  return evaluate_examples(trained, workdir)
