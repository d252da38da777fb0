"""The `all` mode: train -> train_exit (each learned measure evaluated) -> calibrate ->
evaluate, in one workdir; each later step uses the model the first one exported. Every
step's `check` runs before the first step's `run`."""

from __future__ import annotations

import copy
import dataclasses

import ml_collections

from calm_jax.exit_classifiers.registry import is_learned
from calm_jax.modes import calibrate, evaluate, train, train_exit


def _with(config: ml_collections.ConfigDict, **fields) -> ml_collections.ConfigDict:
  """A copy of `config` with dotted fields replaced (the original stays locked)."""
  changed = copy.deepcopy(config)
  with changed.unlocked():
    for dotted, value in fields.items():
      section, key = dotted.split("__")
      changed[section][key] = value
  return changed


@dataclasses.dataclass(frozen=True)
class Settings:
  """Every step's checked settings."""

  train: train.Settings
  train_exit: train_exit.Settings
  calibrate: calibrate.Settings
  evaluate: evaluate.Settings  # without the learned measures, whose classifiers come later


def check(config: ml_collections.ConfigDict, workdir: str) -> Settings:
  """Every step's settings, before the first one starts."""
  learned = [m for m in config.evaluate.measures if is_learned(m)]
  # The classifiers do not exist yet: check the rest of the evaluate section without them.
  untrained = _with(config, evaluate__measures=tuple(
      m for m in config.evaluate.measures if m not in learned))
  return Settings(train.check(config, workdir), train_exit.check(config, workdir),
                  calibrate.check(config, workdir), evaluate.check(untrained, workdir))


def run(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Runs the four steps; returns the path of report.json."""
  check(config, workdir)
  export = train.run(config, workdir)
  trained = _with(config, model__checkpoint=export, model__hf_path="")
  for measure in trained.evaluate.measures:
    if is_learned(measure):
      train_exit.run(_with(trained, train_exit__classifier=measure), workdir)
  calibrate.run(trained, workdir)
  return evaluate.run(trained, workdir)
