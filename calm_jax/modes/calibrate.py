"""The `calibrate` mode: decode a threshold grid, turn the outputs into consistency losses,
choose thresholds with Learn-then-Test (and the naive rule for comparison) for every delta,
and run the validity study on random calibration/test splits.

Writes to the workdir: calibration.json (every rule's choice with its whole table),
validity.json, validity.md and validity.png.
"""

from __future__ import annotations

import dataclasses
from typing import List

import ml_collections
import numpy as np
from absl import logging

from calm_jax.calibration import ltt, validity
from calm_jax.decoding.exit_rule import ExitConfig
from calm_jax.decoding.threshold_grid import GridDecode
from calm_jax.exit_classifiers.storage import classifier_params_for
from calm_jax.modes import memory
from calm_jax.modes.context import RunContext, run_context
from calm_jax.modes.mesh import run_mesh
from calm_jax.modes.resume import open_store
from calm_jax.modes.grid import CalibrationSettings, GridLosses, calibration_settings


@dataclasses.dataclass(frozen=True)
class Settings:
  """What the calibrate mode runs on, checked."""

  context: RunContext
  calibration: CalibrationSettings
  exit: ExitConfig  # the measure calibrated (its threshold is replaced by the grid's)


def check(config: ml_collections.ConfigDict, workdir: str) -> Settings:
  """The `calibration` and `exit` sections, the task and the model source, checked before
  any model is loaded or anything is decoded."""
  calibration = calibration_settings(config.calibration)
  exit_config = ExitConfig.from_section(config.exit)
  context = run_context(config, workdir, splits=("data.calibration_split",),
                        exits=(exit_config,))
  memory.check_decoding(config, context.model_shape,
                        calibration.batch_size or calibration.num_examples,
                        "calibration.batch_size")
  return Settings(context, calibration, exit_config)


def _choices(losses, grid: GridDecode, settings: CalibrationSettings) -> List[dict]:
  """Every rule's choice at every delta on the whole set, with the chosen threshold's own
  mean loss, p-value and average exit layer."""
  layer_sums = grid.layer_sums.sum(axis=1)  # [k]
  token_counts = np.maximum(grid.num_tokens.sum(axis=1), 1)  # [k]
  records = []
  for delta in settings.deltas:
    results = ltt.calibrate_many(losses, settings.thresholds, delta,
                                         settings.epsilon, settings.rules)
    for rule, result in zip(settings.rules, results):
      j = result.chosen_index
      exit_layer = grid.num_layers if j is None else float(layer_sums[j] / token_counts[j])
      records.append({"rule": rule, "delta": delta,
                      "threshold": result.threshold,
                      "mean_exit_layer": exit_layer,
                      "layer_speedup": grid.num_layers / exit_layer,
                      "result": result.to_dict()})
  return records


def run(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Runs the calibrate mode; returns the path of calibration.json."""
  settings = check(config, workdir)
  context, calibration, exit_config = settings.context, settings.calibration, settings.exit
  model_config, params = context.checked_model(exit_config)
  split = context.split(config.data.calibration_split, calibration.num_examples)
  logging.info("decoding %d examples under %d thresholds", len(split.examples),
               calibration.thresholds.size)
  store = open_store(workdir, "calibrate", config, params)  # the parts a killed run decoded
  grid, losses = GridLosses(context, model_config, params, calibration,
                            run_mesh(config, "calibrate"), store)(
      split, exit_config, classifier_params_for(exit_config, model_config),
      f"calibrate {exit_config.measure}")
  report = validity.validity_study(
      losses, calibration.thresholds, grid.layer_sums.T, grid.num_tokens.T,
      model_config.num_decoder_layers, deltas=calibration.deltas, epsilon=calibration.epsilon,
      rules=calibration.rules, num_splits=calibration.num_splits,
      calibration_fraction=calibration.calibration_fraction, seed=config.seed)
  summary = _summary(settings, split.examples, model_config.num_decoder_layers, grid, losses)
  path = context.path("calibration.json")
  if context.writes:
    table = validity.format_table(report)
    context.write_json("calibration.json", summary)
    context.write_json("validity.json", report.to_dict())
    context.write_text("validity.md", table + "\n")
    validity.plot_validity(report, context.path("validity.png"))
    print(_format_choices(summary))
    print(table)
  store.finish()
  return path


def _summary(settings: Settings, examples: list, num_layers: int, grid: GridDecode,
             losses: np.ndarray) -> dict:
  """calibration.json: the grid's mean loss and exit layer per threshold, and every rule's
  choice."""
  calibration = settings.calibration
  return {
      "objective": calibration.objective, "similarity": calibration.similarity,
      "measure": settings.exit.measure, "num_examples": len(examples),
      "num_layers": num_layers,
      "thresholds": calibration.thresholds.tolist(),
      "mean_loss": losses.mean(axis=0).tolist(),
      "mean_exit_layer": (grid.layer_sums.sum(1) / np.maximum(grid.num_tokens.sum(1), 1)).tolist(),
      "decoded_pairs": grid.decoded_pairs,
      "choices": _choices(losses, grid, calibration)}


def _format_choices(summary: dict) -> str:
  lines = [f"Calibration on {summary['num_examples']} examples ({summary['objective']} "
           f"consistency, {summary['similarity']}; measure {summary['measure']})", "",
           "| delta | rule | threshold | mean loss there | p-value | mean exit layer |",
           "|---|---|---|---|---|---|"]
  for c in summary["choices"]:
    chosen = c["result"]["chosen_index"]
    row = c["result"]["table"][chosen] if chosen is not None else None
    loss = f"{row['mean_loss']:.4f}" if row else "0 (never exit)"
    p = row["p_value"] if row else None
    lines.append(f"| {c['delta']:g} | {c['rule']} | {c['threshold']:.4f} | {loss} | "
                 f"{'-' if p is None else f'{p:.3g}'} | {c['mean_exit_layer']:.2f} |")
  return "\n".join(lines)
