"""The run modes of the main job, one module each, chosen by `config.mode`.

Every mode module has the same interface:
- `check(config, workdir) -> Settings`: every setting of the mode, the task and the model
  source checked before any model loads or anything runs; a bad value is a ValueError
  naming it and what is allowed. `Settings` is the mode's frozen dataclass of checked
  settings, with the run context (`context.RunContext`) built once.
- `run(config, workdir) -> str`: checks, then runs the mode; returns its main output path.

What several modes share lives beside them: `context` (task splits, vocabulary, model
source, workdir writing), `grid` (the calibration grid's losses), `training_setup` (loop,
optimizer and mesh of the two training modes) and `checks`.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Protocol

import ml_collections

from calm_jax.modes import (all as all_steps, analyze, calibrate, decode, evaluate,
                            export_hf, generate, train, train_exit)


class Mode(Protocol):
  """What every mode module provides."""

  def check(self, config: ml_collections.ConfigDict, workdir: str) -> Any: ...

  def run(self, config: ml_collections.ConfigDict, workdir: str) -> str: ...


MODES: Dict[str, Mode] = {
    "decode": decode,
    "train": train,
    "train_exit": train_exit,
    "calibrate": calibrate,
    "analyze": analyze,
    "evaluate": evaluate,
    "all": all_steps,
    "generate": generate,
    "export_hf": export_hf,
}


def get_mode(config: ml_collections.ConfigDict, workdir: str) -> Mode:
  """The module of `config.mode`; an unknown mode or an empty workdir is a ValueError."""
  if config.mode not in MODES:
    raise ValueError(f"config.mode={config.mode!r} is not a mode; allowed: {', '.join(MODES)}")
  if not workdir:
    raise ValueError("--workdir is required: the directory where outputs are written")
  return MODES[config.mode]


def check(config: ml_collections.ConfigDict, workdir: str) -> Any:
  """The checked settings of `config.mode`, before any work."""
  return get_mode(config, workdir).check(config, workdir)


def run(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Validates the mode and workdir, creates the workdir, then runs the mode; returns its
  main output path."""
  mode = get_mode(config, workdir)
  os.makedirs(workdir, exist_ok=True)
  return mode.run(config, workdir)
