"""The `evaluate` mode: every requested measure at its calibrated threshold, against the full
model, static exits and the local oracle, on the test split.

For each measure of `evaluate.measures`: decode the calibration split under the threshold
grid of `calibration`, compute the consistency losses, choose a threshold per delta with
`evaluate.rule` (Learn-then-Test), then decode the test split at that threshold and
measure the average exit layer, the wall-clock speedup over full greedy decoding (median
of `evaluate.timing_repeats` timed runs after a warm-up), the task metric against the
references, the consistency loss against the full model's output, and whether that loss
exceeds delta on the test split (a violation). Static exits at `evaluate.static_layers` and
the oracle are measured the same way without calibration.

Writes report.json, report.md (printed at the end) and three plots: quality vs speedup,
exit-layer histograms, delta vs achieved loss.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Dict, List, Optional

import jax
import ml_collections
import numpy as np

from calm_jax.calibration import consistency, ltt
from calm_jax.decoding.exit_rule import ExitConfig
from calm_jax.decoding.generate import generate
from calm_jax.decoding.greedy import greedy_decode
from calm_jax.decoding.measures import build_measure, checked_measure
from calm_jax.exit_classifiers.registry import is_learned
from calm_jax.exit_classifiers.storage import load_classifier
from calm_jax.modes.context import (CLASSIFIER_DIR, EncodedSplit, RunContext, run_context,
                                    run_task)
from calm_jax.modes.evaluate_report import plot_report, report_table
from calm_jax.modes.grid import CalibrationSettings, GridLosses, calibration_settings


@dataclasses.dataclass(frozen=True)
class EvaluateSettings:
  """The `evaluate` section, checked."""

  measures: List[str]  # calibrated measures
  rule: str  # calibration rule choosing each threshold
  num_examples: int  # test examples
  static_layers: List[int]  # static exit layers measured (no calibration)
  oracle: bool  # also measure the local oracle
  timing_repeats: int  # timed runs per configuration (median)
  classifier_dir: str  # where learned classifiers are found (<dir>/<name>)


def evaluate_settings(section: ml_collections.ConfigDict, workdir: str) -> EvaluateSettings:
  """The `evaluate` section checked; every learned measure's classifier must exist."""
  measures = list(section.measures)
  for name in measures:
    build_measure(ExitConfig(measure=name))
    if name in ("static", "oracle"):
      raise ValueError(f"evaluate.measures has {name!r}, which is not calibrated; use "
                       "evaluate.static_layers / evaluate.oracle")
  if section.rule not in ltt.rule_names():
    raise ValueError(f"evaluate.rule={section.rule!r}; allowed: "
                     f"{', '.join(ltt.rule_names())}")
  for name in ("num_examples", "timing_repeats"):
    if section[name] < 1:
      raise ValueError(f"evaluate.{name} must be >= 1, got {section[name]!r}")
  directory = section.classifier_dir or os.path.join(workdir, CLASSIFIER_DIR)
  for name in measures:
    if is_learned(name) and not os.path.isdir(os.path.join(directory, name)):
      raise ValueError(f"evaluate.measures has the learned measure {name!r}, but "
                       f"{os.path.join(directory, name)} does not exist; run the train_exit "
                       f"mode with train_exit.classifier={name!r} first")
  return EvaluateSettings(measures, section.rule, section.num_examples,
                          [int(layer) for layer in section.static_layers], bool(section.oracle),
                          section.timing_repeats, directory)


@dataclasses.dataclass(frozen=True)
class Settings:
  """What the evaluate mode runs on, checked."""

  context: RunContext
  evaluate: EvaluateSettings
  calibration: CalibrationSettings
  exit: ExitConfig  # the base exit rule each measured configuration changes


def check(config: ml_collections.ConfigDict, workdir: str) -> Settings:
  """The `evaluate`, `calibration` and `exit` sections, the task and the model source,
  checked before any model is loaded."""
  evaluate = evaluate_settings(config.evaluate, workdir)
  calibration = calibration_settings(config.calibration)
  base_exit = ExitConfig.from_section(config.exit)
  return Settings(run_context(config, workdir), evaluate, calibration, base_exit)


@dataclasses.dataclass
class Decoded:
  """One decode of the test split."""

  tokens: np.ndarray  # [N, T] int32
  exit_layers: Optional[np.ndarray]  # [N, T] int32, 0 after EOS (None for greedy)
  seconds: float  # median wall-clock time of one decode of the split


def _timed(decode: Callable[[], Any], repeats: int):
  """(result, median seconds) after one untimed warm-up call (compilation)."""
  result = jax.block_until_ready(decode())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    result = jax.block_until_ready(decode())
    times.append(time.perf_counter() - start)
  return result, float(np.median(times))


def _generated_ids(tokens: np.ndarray, eos_id: int) -> List[List[int]]:
  """Each row's ids up to and including its first EOS."""
  rows = []
  for row in np.asarray(tokens):
    row = row.tolist()
    rows.append(row[:row.index(eos_id) + 1] if eos_id in row else row)
  return rows


class Evaluator:
  """Decodes and scores the test split for one model."""

  def __init__(self, settings: Settings, model_config, params, test: EncodedSplit):
    context = settings.context
    self.model_config, self.params, self.test = model_config, params, test
    self.vocabulary, self.settings = context.vocabulary, settings.evaluate
    self.calibration_settings = settings.calibration
    self.grid_losses = GridLosses(context, model_config, params, settings.calibration)
    self.task = run_task(context.config.data.task)
    self.max_decode_len = context.config.decode.max_decode_len
    tokens, seconds = _timed(lambda: greedy_decode(
        model_config, params, test.input_ids, test.attention_mask,
        max_decode_len=self.max_decode_len), self.settings.timing_repeats)
    self.full = Decoded(np.asarray(tokens), None, seconds)
    print(f"[evaluate] full model: {seconds:.2f} s per decode of {test.input_ids.shape[0]} "
          "test examples", flush=True)
    self.full_ids = _generated_ids(self.full.tokens, self.vocabulary.eos_id)
    self.full_texts = [self.vocabulary.decode(ids) for ids in self.full_ids]

  def decode(self, exit_config: ExitConfig, classifier_params=None) -> Decoded:
    out, seconds = _timed(lambda: generate(
        self.model_config, self.params, self.test.input_ids, self.test.attention_mask,
        exit=exit_config, max_decode_len=self.max_decode_len,
        classifier_params=classifier_params), self.settings.timing_repeats)
    return Decoded(np.asarray(out.tokens), np.asarray(out.exit_layers), seconds)

  def score(self, decoded: Decoded) -> Dict[str, Any]:
    """Exit layer, speedups, quality and consistency of one test decode."""
    ids = [row[layers > 0].tolist() for row, layers in zip(decoded.tokens, decoded.exit_layers)]
    texts = [self.vocabulary.decode(row) for row in ids]
    layers = decoded.exit_layers[decoded.exit_layers > 0]
    cal = self.calibration_settings
    early = ids if cal.similarity == "token_agreement" else texts
    full = self.full_ids if cal.similarity == "token_agreement" else self.full_texts
    losses = consistency.consistency_losses(cal.objective, [early], full,
                                            self.test.references, cal.similarity)[:, 0]
    mean_layer = float(layers.mean()) if layers.size else float("nan")
    return {
        "mean_exit_layer": mean_layer,
        "layer_speedup": self.model_config.num_decoder_layers / mean_layer,
        "wall_clock_speedup": self.full.seconds / decoded.seconds,
        "seconds": decoded.seconds,
        "quality": self.task.evaluate(texts, self.test.examples),
        "test_loss": float(losses.mean()),
        "exit_layer_counts": np.bincount(
            layers, minlength=self.model_config.num_decoder_layers + 1)[1:].tolist(),
    }

  def full_row(self) -> Dict[str, Any]:
    texts = self.full_texts
    return {"kind": "full", "measure": "full model", "seconds": self.full.seconds,
            "mean_exit_layer": float(self.model_config.num_decoder_layers),
            "wall_clock_speedup": 1.0, "layer_speedup": 1.0, "test_loss": 0.0,
            "quality": self.task.evaluate(texts, self.test.examples)}


def _calibrated_thresholds(evaluator: Evaluator, exit_config: ExitConfig, calib: EncodedSplit,
                           classifier_params) -> Dict[float, ltt.CalibrationResult]:
  """LTT's choice per delta on the calibration split's grid decode."""
  cal = evaluator.calibration_settings
  _, losses = evaluator.grid_losses(calib, exit_config, classifier_params,
                                    f"evaluate {exit_config.measure}: calibration grid")
  return {delta: ltt.calibrate(losses, cal.thresholds, delta, cal.epsilon,
                               evaluator.settings.rule)
          for delta in cal.deltas}


def _measure_rows(evaluator: Evaluator, base_exit: ExitConfig, measure: str,
                  calib: EncodedSplit) -> List[Dict[str, Any]]:
  exit_config = dataclasses.replace(base_exit, measure=measure, classifier_path="")
  classifier_params = None
  if is_learned(measure):
    classifier_params = load_classifier(
        os.path.join(evaluator.settings.classifier_dir, measure), evaluator.model_config,
        expected_name=measure).params
  rows = []
  for delta, result in _calibrated_thresholds(evaluator, exit_config, calib,
                                              classifier_params).items():
    decoded = evaluator.decode(dataclasses.replace(exit_config, threshold=result.threshold),
                               classifier_params)
    row = {"kind": "calibrated", "measure": measure, "delta": delta,
           "threshold": result.threshold, **evaluator.score(decoded)}
    row["violation"] = row["test_loss"] > delta
    rows.append(row)
    print(f"[evaluate] {measure} delta={delta:g}: threshold {result.threshold:.3f}, "
          f"mean exit layer {row['mean_exit_layer']:.2f}, speedup "
          f"{row['wall_clock_speedup']:.2f}x, test loss {row['test_loss']:.4f}", flush=True)
  return rows


def _reference_rows(evaluator: Evaluator, base_exit: ExitConfig) -> List[Dict[str, Any]]:
  rows = []
  for layer in evaluator.settings.static_layers:
    exit_config = dataclasses.replace(base_exit, measure="static", static_exit_layer=layer,
                                      classifier_path="")
    rows.append({"kind": "static", "measure": f"static layer {layer}",
                 **evaluator.score(evaluator.decode(exit_config))})
    _print_reference(rows[-1])
  if evaluator.settings.oracle:
    exit_config = dataclasses.replace(base_exit, measure="oracle", classifier_path="")
    rows.append({"kind": "oracle", "measure": "oracle",
                 **evaluator.score(evaluator.decode(exit_config))})
    _print_reference(rows[-1])
  return rows


def _print_reference(row: Dict[str, Any]) -> None:
  print(f"[evaluate] {row['measure']}: mean exit layer {row['mean_exit_layer']:.2f}, speedup "
        f"{row['wall_clock_speedup']:.2f}x, test loss {row['test_loss']:.4f}", flush=True)


def run(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Runs the evaluate mode; returns the path of report.json."""
  settings = check(config, workdir)
  context, base_exit = settings.context, settings.exit
  model_config, params = context.checked_model()
  for layer in settings.evaluate.static_layers:
    checked_measure(dataclasses.replace(base_exit, measure="static", static_exit_layer=layer),
                    model_config)
  test = context.split(config.data.test_split, settings.evaluate.num_examples)
  calib = context.split(config.data.calibration_split, settings.calibration.num_examples)
  evaluator = Evaluator(settings, model_config, params, test)
  rows = [evaluator.full_row()]
  for measure in settings.evaluate.measures:
    rows.extend(_measure_rows(evaluator, base_exit, measure, calib))
  rows.extend(_reference_rows(evaluator, base_exit))
  report = _report(settings, model_config.num_decoder_layers, (test, calib), rows)
  path = context.path("report.json")
  if context.writes:
    table = report_table(report)
    context.write_json("report.json", report)
    context.write_text("report.md", table + "\n")
    plot_report(report, workdir)
    print(table, flush=True)
  return path


def _report(settings: Settings, num_layers: int, splits, rows: List[Dict[str, Any]]) -> dict:
  """report.json: the run's task, splits and settings, and one row per configuration."""
  config, (test, calib) = settings.context.config, splits
  return {"task": config.data.task, "test_split": config.data.test_split,
          "num_test_examples": len(test.examples),
          "num_calibration_examples": len(calib.examples),
          "num_layers": num_layers, "rule": settings.evaluate.rule,
          "epsilon": settings.calibration.epsilon, "objective": settings.calibration.objective,
          "similarity": settings.calibration.similarity, "rows": rows}
