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
import re
import sys
from typing import Any, Dict, Protocol

import jax
import ml_collections

from calm_jax.modes import run_record
from calm_jax.modes.context import check_workdir
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


# One line per mode for --help (a mode missing here shows its docstring's first sentence).
SUMMARIES = {
    "all": "train -> train_exit -> calibrate -> evaluate in one workdir (the demo's default)",
    "decode": "decode data.num_examples test examples -> decode.jsonl with exit layers",
    "generate": "decode the lines of generate.input_file ('-' = stdin) -> generate.jsonl",
    "train": "CALM training with the anytime loss -> <workdir>/model (resumable)",
    "train_exit": "train a learned exit classifier on the frozen model",
    "calibrate": "threshold grid -> Learn-then-Test thresholds -> calibration.json, validity.*",
    "evaluate": "calibrated measures vs full model, static exits, oracle -> report.md",
    "analyze": "layer-wise studies (stability, confidence, saturation, oracle) -> analysis_*",
    "export_hf": "the run's model as a Hugging Face T5 directory -> <workdir>/hf_export",
}


def summary(name: str) -> str:
  """The one-line description of mode `name`."""
  if name in SUMMARIES:
    return SUMMARIES[name]
  doc = " ".join((MODES[name].__doc__ or "").split())
  return re.split(r"\.\s", doc + " ", maxsplit=1)[0].split(": ", 1)[-1][:90]


def get_mode(config: ml_collections.ConfigDict, workdir: str) -> Mode:
  """The module of `config.mode`; an unknown mode or an empty workdir is a ValueError."""
  if config.mode not in MODES:
    raise ValueError(f"config.mode={config.mode!r} is not a mode; allowed: {', '.join(MODES)}")
  if not workdir:
    raise ValueError("--workdir is required: the directory where outputs are written")
  _check_adaptive_threshold(config)
  return MODES[config.mode]


# Modes that decode at a lambda they choose themselves or read as given for a whole split
# (calibration, evaluation, analysis): FREE's between-call refits have no place there.
_FIXED_LAMBDA_MODES = ("calibrate", "evaluate", "analyze", "all")


def _check_adaptive_threshold(config: ml_collections.ConfigDict) -> None:
  """exit.adaptive_threshold refits lambda between the decode calls of `decode` and
  `generate` only; elsewhere it is refused before any work."""
  adaptive = config.get("exit", {}).get("adaptive_threshold", "none")
  if adaptive != "none" and config.mode in _FIXED_LAMBDA_MODES:
    raise ValueError(f"exit.adaptive_threshold={adaptive!r} refits lambda between the decode "
                     "calls of the decode and generate modes; mode "
                     f"{config.mode!r} decodes at the lambda it calibrates or is given: set "
                     "exit.adaptive_threshold='none'")


def check(config: ml_collections.ConfigDict, workdir: str) -> Any:
  """The checked settings of `config.mode`, before any work."""
  return get_mode(config, workdir).check(config, workdir)


def run(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Validates the mode and workdir, creates the workdir, says what of its outputs an
  interrupted run left mixed or partial, runs the mode and writes the run record last;
  returns the mode's main output path."""
  mode = get_mode(config, workdir)
  check_workdir(workdir)
  created = not os.path.isdir(workdir)
  os.makedirs(workdir, exist_ok=True)
  writes = jax.process_index() == 0
  if writes:
    for problem in run_record.inconsistencies(workdir):
      sys.stderr.write(f"calm_jax: warning: {workdir}: {problem}\n")
  started = run_record.workdir_clock(workdir) if writes else 0
  try:
    path = mode.run(config, workdir)
  except BaseException:
    if created and not os.listdir(workdir):
      os.rmdir(workdir)  # a run refused by its checks leaves nothing behind
    raise
  if writes:
    run_record.write_record(workdir, config.mode, config, started)
  return path
