"""The `calibrate` mode: decode a threshold grid, turn the outputs into consistency losses,
choose thresholds with Learn-then-Test (and the naive rule for comparison) for every delta,
and run the validity study on random calibration/test splits.

Writes to the workdir: calibration.json (every rule's choice with its whole table),
validity.json, validity.md and validity.png.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
from typing import List

import jax
import ml_collections
import numpy as np
from absl import logging

from calm_jax import calibration, consistency, validity
from calm_jax.data.vocabulary import Vocabulary
from calm_jax.data.metrics import TEXT_SIMILARITIES
from calm_jax.decoding.exit_rule import ExitConfig
from calm_jax.decoding.classifiers import classifier_params_for
from calm_jax.decoding.threshold_grid import GridDecode, decode_threshold_grid
from calm_jax.files import write_json_atomically, write_text_atomically
from calm_jax.progress import RateLine
from calm_jax.model.source import load_model
from calm_jax.run_data import check_data, encode_split


@dataclasses.dataclass(frozen=True)
class CalibrationSettings:
  """The `calibration` config section, checked."""

  num_examples: int  # calibration examples decoded
  thresholds: np.ndarray  # [k] strictly decreasing grid
  deltas: List[float]  # tolerated expected losses
  epsilon: float  # allowed failure probability of the guarantee
  rules: List[str]  # calibration rules ('naive', 'ltt_<method>[_bonferroni]')
  objective: str  # 'textual' or 'risk'
  similarity: str  # per-example similarity behind the loss
  num_splits: int  # random splits of the validity study
  calibration_fraction: float  # share of examples used to calibrate in each split
  batch_size: int  # rows per packed grid decode call; 0 = the number of examples


def settings_from(section: ml_collections.ConfigDict) -> CalibrationSettings:
  """Checks the section before any model is loaded or anything is decoded."""
  deltas = [float(d) for d in section.deltas]
  if not deltas:
    raise ValueError("calibration.deltas is empty: give at least one tolerance in (0, 1)")
  for delta in deltas:
    if not 0.0 < delta < 1.0:
      raise ValueError(f"calibration.deltas must lie strictly between 0 and 1; got {delta!r}")
  if not _is_number(section.epsilon) or not 0.0 < section.epsilon < 1.0:
    raise ValueError(f"calibration.epsilon must lie strictly between 0 and 1; got "
                     f"{section.epsilon!r}")
  rules = list(section.rules)
  if not rules:
    raise ValueError("calibration.rules is empty; allowed: "
                     + ", ".join(calibration.rule_names()))
  for rule in rules:
    if rule not in calibration.rule_names():
      raise ValueError(f"calibration.rules has {rule!r}; allowed: "
                       f"{', '.join(calibration.rule_names())}")
  if section.objective not in consistency.OBJECTIVES:
    raise ValueError(f"calibration.objective={section.objective!r}; allowed: "
                     f"{', '.join(consistency.OBJECTIVES)}")
  allowed = list(TEXT_SIMILARITIES) + (["token_agreement"] if section.objective == "textual"
                                       else [])
  if section.similarity not in allowed:
    raise ValueError(f"calibration.similarity={section.similarity!r} is not allowed with "
                     f"objective {section.objective!r}; allowed: {', '.join(allowed)}")
  if not _is_integer(section.num_examples) or section.num_examples < 2:
    raise ValueError(f"calibration.num_examples must be an integer >= 2, got "
                     f"{section.num_examples!r}")
  if not _is_integer(section.batch_size) or section.batch_size < 0:
    raise ValueError(f"calibration.batch_size must be an integer >= 0 (0 = all examples), "
                     f"got {section.batch_size!r}")
  try:
    validity.check_split(section.num_examples, section.num_splits,
                         section.calibration_fraction)
  except ValueError as error:
    raise ValueError(f"calibration settings: {error}") from None
  return CalibrationSettings(
      num_examples=section.num_examples,
      thresholds=calibration.check_thresholds(section.thresholds), deltas=deltas,
      epsilon=float(section.epsilon), rules=rules, objective=section.objective,
      similarity=section.similarity, num_splits=section.num_splits,
      calibration_fraction=float(section.calibration_fraction), batch_size=section.batch_size)


def _is_number(value) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_integer(value) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def grid_outputs(grid: GridDecode, settings: CalibrationSettings, vocabulary: Vocabulary):
  """Early outputs [k][n] and full outputs [n]: token ids for token_agreement, else texts."""
  early, full = grid.generated_ids()
  if settings.similarity == "token_agreement":
    return early, full
  return [[vocabulary.decode(ids) for ids in column] for column in early], [
      vocabulary.decode(ids) for ids in full]


def _choices(losses, grid: GridDecode, settings: CalibrationSettings) -> List[dict]:
  """Every rule's choice at every delta on the whole set, with the chosen threshold's own
  mean loss, p-value and average exit layer."""
  layer_sums = grid.layer_sums.sum(axis=1)  # [k]
  token_counts = np.maximum(grid.num_tokens.sum(axis=1), 1)  # [k]
  records = []
  for delta in settings.deltas:
    results = calibration.calibrate_many(losses, settings.thresholds, delta,
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


def grid_progress(label: str, num_examples: int, num_thresholds: int):
  """A progress callback for decode_threshold_grid: a rate line of filled grid pairs."""
  line = RateLine(label, num_examples * num_thresholds, "(example, threshold) pairs")
  return lambda filled, decoded: line(filled, f"{decoded} decoded, the rest copied")


def calibrate_examples(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Runs the calibrate mode; returns the path of calibration.json."""
  settings = settings_from(config.calibration)
  exit_config = ExitConfig.from_section(config.exit)
  vocabulary = check_data(config)
  model_config, params = load_model(config.model, config.seed)
  exit_config.validate(model_config.num_decoder_layers)
  vocabulary.check_model(model_config.vocab_size)
  split = encode_split(config, config.data.calibration_split, settings.num_examples, vocabulary)
  examples, input_ids, mask = split.examples, split.input_ids, split.attention_mask
  logging.info("decoding %d examples under %d thresholds", len(examples),
               settings.thresholds.size)
  grid = decode_threshold_grid(model_config, params, input_ids, mask,
                               thresholds=settings.thresholds, exit=exit_config,
                               max_decode_len=config.decode.max_decode_len,
                               batch_size=settings.batch_size or None,
                               classifier_params=classifier_params_for(exit_config,
                                                                       model_config),
                               progress=grid_progress(f"calibrate {exit_config.measure}",
                                                      len(examples), settings.thresholds.size))
  early, full = grid_outputs(grid, settings, vocabulary)
  losses = consistency.consistency_losses(
      settings.objective, early, full, references=split.references,
      similarity=settings.similarity)  # [n, k]
  report = validity.validity_study(
      losses, settings.thresholds, grid.layer_sums.T, grid.num_tokens.T,
      model_config.num_decoder_layers, deltas=settings.deltas, epsilon=settings.epsilon,
      rules=settings.rules, num_splits=settings.num_splits,
      calibration_fraction=settings.calibration_fraction, seed=config.seed)
  summary = {
      "objective": settings.objective, "similarity": settings.similarity,
      "measure": exit_config.measure, "num_examples": len(examples),
      "num_layers": model_config.num_decoder_layers,
      "thresholds": settings.thresholds.tolist(),
      "mean_loss": losses.mean(axis=0).tolist(),
      "mean_exit_layer": (grid.layer_sums.sum(1) / np.maximum(grid.num_tokens.sum(1), 1)).tolist(),
      "decoded_pairs": grid.decoded_pairs,
      "choices": _choices(losses, grid, settings)}
  path = os.path.join(workdir, "calibration.json")
  if jax.process_index() == 0:
    table = validity.format_table(report)
    write_json_atomically(path, summary)
    write_json_atomically(os.path.join(workdir, "validity.json"), report.to_dict())
    write_text_atomically(os.path.join(workdir, "validity.md"), table + "\n")
    validity.plot_validity(report, os.path.join(workdir, "validity.png"))
    print(_format_choices(summary))
    print(table)
  return path


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
