"""The `evaluate` mode: every requested measure at its calibrated threshold, against the full
model, static exits and the local oracle, on the test split.

For each measure of `evaluate.measures`: decode the test split at lambda = 1 (the measure's
reference: the same decoder, never exiting), decode the calibration split under the
threshold grid of `calibration`, compute the consistency losses, choose a threshold per
delta with `evaluate.rule` (Learn-then-Test), then decode the test split at that threshold:
the average exit layer, the task metric against the references, the consistency loss
against the full model's output, and whether that loss exceeds delta on the test split (a
violation). Static exits at `evaluate.static_layers` and the oracle are decoded the same
way without calibration, against the static decoder exiting at layer L; plain greedy
decoding is its own row, against the first measure's reference. With `evaluate.free`, FREE's
synchronized decoding follows, calibrated the same way, and its verified (lossless) mode
(`modes.evaluate_free`).

Only then is anything timed: every configuration in `evaluate.timing_rounds` interleaved
rounds (`modes.evaluate_timing`), on two clocks: throughput (the whole test split as one
batch) and latency (`evaluate.latency_examples` test examples one at a time). A speedup is
the median per-round ratio against the row's reference, with its spread over rounds, beside
the ideal speedup that the work of the decoded tokens implies (`decoding.cost_model`:
layers run, the measure's checks, the exit head, propagated K/V), applied to the reference's
time less the fixed part every configuration runs once per input (encoder, cross-attention
K/V: `generate.decode_fixed_part`, timed in the same rounds), and realized / ideal.

Every decode, the timed ones included, runs on the run's mesh (`mesh` section): the rows
over its data shards, the parameters over 'model'. A killed run restarted with the same
workdir and config continues from its resume store (`modes.resume`): calibration grid parts,
test decodes and finished timing rounds are saved as they finish and read back, not
redone, so the restarted run writes the files the killed one would have written.

Writes report.json, report.md (printed at the end) and three plots: quality vs speedup,
exit-layer histograms, delta vs achieved loss.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Dict, List, Optional

import ml_collections
import numpy as np

from calm_jax.calibration import consistency, ltt
from calm_jax.decoding import cost_model
from calm_jax.decoding.exit_rule import ExitConfig
from calm_jax.decoding.generate import decode_fixed_part, generate
from calm_jax.decoding.greedy import greedy_decode
from calm_jax.decoding.measures import build_measure, checked_measure
from calm_jax.decoding.sharded import DecodeMesh
from calm_jax.exit_classifiers.registry import is_learned
from calm_jax.exit_classifiers.storage import load_classifier
from calm_jax.modes.context import (CLASSIFIER_DIR, EncodedSplit, RunContext, run_context,
                                    run_task)
from calm_jax.modes import memory
from calm_jax.modes.evaluate_free import FreeSettings, free_rows, free_settings
from calm_jax.modes.evaluate_report import plot_report, report_table
from calm_jax.modes.evaluate_timing import Configuration, time_configurations
from calm_jax.modes.grid import CalibrationSettings, GridLosses, calibration_settings
from calm_jax.modes.mesh import run_mesh
from calm_jax.modes.resume import open_store, resume_key


# Fewer rounds leave the median at the mercy of one noisy round.
MIN_TIMING_ROUNDS = 5
# The timed configuration that runs only what every decode starts with (encoder, cross K/V).
FIXED_PART = "fixed part (encoder, cross-attention K/V)"
MAX_FIXED_SHARE = 0.99


@dataclasses.dataclass(frozen=True)
class EvaluateSettings:
  """The `evaluate` section, checked."""

  measures: List[str]  # calibrated measures
  rule: str  # calibration rule choosing each threshold
  num_examples: int  # test examples
  static_layers: List[int]  # static exit layers measured (no calibration)
  oracle: bool  # also measure the local oracle
  timing_rounds: int  # interleaved timing rounds of every configuration (medians)
  latency_examples: int  # test examples decoded one at a time for the latency clock
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
  for name, least in (("num_examples", 1), ("timing_rounds", MIN_TIMING_ROUNDS),
                      ("latency_examples", 1)):
    if section[name] < least:
      raise ValueError(f"evaluate.{name} must be >= {least}, got {section[name]!r}")
  directory = section.classifier_dir or os.path.join(workdir, CLASSIFIER_DIR)
  for name in measures:
    if is_learned(name) and not os.path.isdir(os.path.join(directory, name)):
      raise ValueError(f"evaluate.measures has the learned measure {name!r}, but "
                       f"{os.path.join(directory, name)} does not exist; run the train_exit "
                       f"mode with train_exit.classifier={name!r} first")
  return EvaluateSettings(measures, section.rule, section.num_examples,
                          [int(layer) for layer in section.static_layers], bool(section.oracle),
                          section.timing_rounds, section.latency_examples, directory)


@dataclasses.dataclass(frozen=True)
class Settings:
  """What the evaluate mode runs on, checked."""

  context: RunContext
  evaluate: EvaluateSettings
  calibration: CalibrationSettings
  exit: ExitConfig  # the base exit rule each measured configuration changes
  free: Optional[FreeSettings] = None  # evaluate.free: FREE's rows (modes.evaluate_free)


def check(config: ml_collections.ConfigDict, workdir: str) -> Settings:
  """The `evaluate`, `calibration` and `exit` sections, the task and the model source,
  checked before any model is loaded."""
  evaluate = evaluate_settings(config.evaluate, workdir)
  calibration = calibration_settings(config.calibration)
  base_exit = ExitConfig.from_section(config.exit)
  free = free_settings(config.evaluate, base_exit)
  context = run_context(config, workdir, splits=("data.test_split", "data.calibration_split"),
                        exits=measured_exits(evaluate, base_exit)
                        + (free.exits() if free else []))
  memory.check_decoding(config, context.model_shape,
                        max(evaluate.num_examples,
                            calibration.batch_size or calibration.num_examples),
                        "evaluate.num_examples, calibration.batch_size")
  return Settings(context, evaluate, calibration, base_exit, free)


def measured_exits(settings: EvaluateSettings, base_exit: ExitConfig) -> List[ExitConfig]:
  """The exit rules the run decodes with (every measure, every static layer), each
  checked against the model before it loads."""
  return ([dataclasses.replace(base_exit, measure=m, classifier_path="")
           for m in settings.measures]
          + [dataclasses.replace(base_exit, measure="static", static_exit_layer=layer,
                                 classifier_path="") for layer in settings.static_layers])


@dataclasses.dataclass
class Decoded:
  """One decode of the test split."""

  tokens: np.ndarray  # [N, T] int32
  exit_layers: np.ndarray  # [N, T] int32 layers run per token, 0 after EOS


def _generated_ids(tokens: np.ndarray, eos_id: int) -> List[List[int]]:
  """Each row's ids up to and including its first EOS."""
  mask = _generated_mask(tokens, eos_id)
  return [row[kept].tolist() for row, kept in zip(np.asarray(tokens), mask)]


def _reference_name(measure: str) -> str:
  """The row a configuration's speedups divide: the same decoder at lambda = 1."""
  return f"{measure} lambda=1"


class Evaluator:
  """Decodes and scores the test split for one model, and keeps every configuration it
  decoded so that all can be timed together (`time_all`)."""

  def __init__(self, settings: Settings, model_config, params, test: EncodedSplit,
               mesh: DecodeMesh):
    context = settings.context
    self.model_config, self.params, self.test = model_config, params, test
    self.vocabulary, self.settings = context.vocabulary, settings.evaluate
    self.calibration_settings = settings.calibration
    # Every decode (the calibration grid, the test split, the timed calls) runs on the run's
    # mesh. Grid parts, test decodes and timing rounds go to the resume store as they finish.
    self.mesh = mesh
    self.resume = open_store(context.workdir, "evaluate", context.config, params)
    self.grid_losses = GridLosses(context, model_config, params, settings.calibration,
                                  self.mesh, self.resume)
    self.task = run_task(context.config.data.task)
    self.max_decode_len = context.config.decode.max_decode_len
    self.configurations: List[Configuration] = []
    self.work: Dict[str, Dict[str, float]] = {}  # name -> {'batch': .., 'sample': ..}
    self._add_fixed_part()
    self.full = self._stored("greedy", self._greedy_full)
    self.full_ids = _generated_ids(self.full.tokens, self.vocabulary.eos_id)
    self.full_texts = [self.vocabulary.decode(ids) for ids in self.full_ids]

  @property
  def num_layers(self) -> int:
    return self.model_config.num_decoder_layers

  @property
  def sample_size(self) -> int:
    return min(self.settings.latency_examples, self.test.input_ids.shape[0])

  def _greedy_rows(self, input_ids, attention_mask):
    """Plain greedy decoding (its own code path) of some rows, on the run's mesh."""
    return greedy_decode(self.model_config, self.params, input_ids, attention_mask,
                         max_decode_len=self.max_decode_len, mesh=self.mesh)

  def _greedy_full(self) -> Decoded:
    """The full model's output on the test split (every token runs layer L)."""
    tokens = np.asarray(self._greedy_rows(self.test.input_ids, self.test.attention_mask))
    layers = np.where(_generated_mask(tokens, self.vocabulary.eos_id), self.num_layers, 0)
    return Decoded(tokens, layers)

  def _stored(self, name: str, decode: Callable[[], Decoded]) -> Decoded:
    """The test decode `name`: read back when the resume store holds it (a killed run
    decoded it), else decoded and saved."""
    key = resume_key("test", name)
    saved = self.resume.load(key)
    if saved is not None:
      return Decoded(saved["tokens"], saved["exit_layers"])
    decoded = decode()
    self.resume.save(key, {"tokens": decoded.tokens, "exit_layers": decoded.exit_layers})
    return decoded

  def _run_sample(self, decode_rows: Callable[[Any, Any], Any]) -> Callable[[], Any]:
    """A call decoding the latency sample one example at a time (batch 1)."""
    rows = [(self.test.input_ids[i:i + 1], self.test.attention_mask[i:i + 1])
            for i in range(self.sample_size)]
    return lambda: [decode_rows(ids, mask) for ids, mask in rows]

  def _add_fixed_part(self) -> None:
    """The start every configuration runs once per input (encoder, cross-attention K/V),
    timed in the same rounds as the decodes: the part of their time no exit shortens."""
    rows = lambda ids, mask: decode_fixed_part(self.model_config, self.params, ids, mask,
                                               max_decode_len=self.max_decode_len,
                                               mesh=self.mesh)
    batch = lambda: rows(self.test.input_ids, self.test.attention_mask)
    self.configurations.append(Configuration(FIXED_PART, FIXED_PART, batch,
                                             self._run_sample(rows)))

  def add_greedy(self, reference: str) -> None:
    """Plain greedy decoding (its own code path) as a timed configuration."""
    decode_rows = self._greedy_rows
    greedy = ExitConfig(measure="static", static_exit_layer=self.num_layers)
    self._add("greedy", reference, decode_rows, greedy, self.full)

  def decode(self, name: str, reference: str, exit_config: ExitConfig,
             classifier_params=None) -> Decoded:
    """Decodes the test split under `exit_config` on the run's mesh (or reads it back from
    the resume store) and registers it for timing."""
    rows = lambda ids, mask: generate(
        self.model_config, self.params, ids, mask, exit=exit_config,
        max_decode_len=self.max_decode_len, classifier_params=classifier_params,
        mesh=self.mesh)
    decode_rows = lambda ids, mask: rows(ids, mask).exit_layers
    def decode_test() -> Decoded:
      out = rows(self.test.input_ids, self.test.attention_mask)
      return Decoded(np.asarray(out.tokens), np.asarray(out.exit_layers))
    decoded = self._stored(name, decode_test)
    self._add(name, reference, decode_rows, exit_config, decoded, classifier_params)
    return decoded

  def _add(self, name: str, reference: str, decode_rows, exit_config: ExitConfig,
           decoded: Decoded, classifier_params=None) -> None:
    batch = lambda: decode_rows(self.test.input_ids, self.test.attention_mask)
    self.configurations.append(Configuration(name, reference, batch,
                                             self._run_sample(decode_rows)))
    prices = cost_model.work_prices(self.model_config, exit_config,
                                    self.test.input_ids.shape[1], classifier_params)
    work = lambda layers: cost_model.decode_work(layers, prices, exit_config,
                                                 self.num_layers)
    self.work[name] = {"batch": work(decoded.exit_layers),
                       "sample": work(decoded.exit_layers[:self.sample_size])}

  def time_all(self) -> Dict[str, Dict[str, Any]]:
    """Every registered configuration timed in the same interleaved rounds: per name, the
    throughput and latency figures with their ideal speedups and realized / ideal, and under
    FIXED_PART the fixed part's median seconds per clock."""
    progress = lambda line: print(f"[evaluate] timing {line}", flush=True)
    clocks = time_configurations(self.configurations, self.settings.timing_rounds, progress,
                                 self.resume)
    figures = {FIXED_PART: {clock: clocks[clock][FIXED_PART].seconds for clock in clocks}}
    for config in self.configurations:
      if config.name == FIXED_PART:
        continue
      row = {}
      for clock, work_key, prefix in (("throughput", "batch", "wall_clock"),
                                      ("latency", "sample", "latency")):
        timing = clocks[clock][config.name]
        loop_ideal = cost_model.ideal_speedup(self.work[config.reference][work_key],
                                              self.work[config.name][work_key])
        share = _fixed_share(clocks[clock][FIXED_PART].seconds,
                             clocks[clock][config.reference].seconds)
        ideal = cost_model.with_fixed_part(loop_ideal, share)
        row.update({f"{prefix}_seconds": timing.seconds, f"{prefix}_speedup": timing.speedup,
                    f"{prefix}_spread": timing.spread, f"{prefix}_ideal_speedup": ideal,
                    f"{prefix}_loop_ideal_speedup": loop_ideal, f"{prefix}_fixed_share": share,
                    f"{prefix}_realized": None if not ideal else timing.speedup / ideal})
      figures[config.name] = {"reference": config.reference, **row}
    return figures

  def score(self, decoded: Decoded) -> Dict[str, Any]:
    """Exit layers, quality and consistency of one test decode."""
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
        "layer_speedup": self.num_layers / mean_layer,
        "quality": self.task.evaluate(texts, self.test.examples),
        "test_loss": float(losses.mean()),
        "exit_layer_counts": np.bincount(layers, minlength=self.num_layers + 1)[1:].tolist(),
    }


def _fixed_share(fixed_seconds: float, reference_seconds: float) -> float:
  """The fixed part's share of a reference's median time, held below 1 (a fixed part timed
  at or above a whole decode's time, which only noise can give, would leave no loop)."""
  return min(max(fixed_seconds / reference_seconds, 0.0), MAX_FIXED_SHARE)


def _generated_mask(tokens: np.ndarray, eos_id: int) -> np.ndarray:
  """[N, T] True at every generated position up to and including the first EOS."""
  tokens = np.asarray(tokens)
  after_eos = np.cumsum(tokens == eos_id, axis=1) - (tokens == eos_id)  # EOS seen before
  return after_eos == 0


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
  """The measure at lambda = 1 (its reference row), then at each delta's threshold."""
  exit_config = dataclasses.replace(base_exit, measure=measure, classifier_path="")
  classifier_params = None
  if is_learned(measure):
    classifier_params = load_classifier(
        os.path.join(evaluator.settings.classifier_dir, measure), evaluator.model_config,
        expected_name=measure).params
  reference = _reference_name(measure)
  decoded = evaluator.decode(reference, reference,
                             dataclasses.replace(exit_config, threshold=1.0), classifier_params)
  rows = [{"kind": "reference", "measure": reference, "timing": reference, "threshold": 1.0,
           **evaluator.score(decoded)}]
  for delta, result in _calibrated_thresholds(evaluator, exit_config, calib,
                                              classifier_params).items():
    name = f"{measure} delta={delta:g}"
    decoded = evaluator.decode(name, reference,
                               dataclasses.replace(exit_config, threshold=result.threshold),
                               classifier_params)
    row = {"kind": "calibrated", "measure": measure, "timing": name, "delta": delta,
           "threshold": result.threshold, **evaluator.score(decoded)}
    row["violation"] = row["test_loss"] > delta
    rows.append(row)
    print(f"[evaluate] {measure} delta={delta:g}: threshold {result.threshold:.3f}, "
          f"mean exit layer {row['mean_exit_layer']:.2f}, test loss {row['test_loss']:.4f}",
          flush=True)
  return rows


def _reference_rows(evaluator: Evaluator, base_exit: ExitConfig) -> List[Dict[str, Any]]:
  """Static exits and the oracle, against the static decoder that exits at layer L."""
  rows = []
  if not (evaluator.settings.static_layers or evaluator.settings.oracle):
    return rows
  static = lambda layer: dataclasses.replace(base_exit, measure="static",
                                             static_exit_layer=layer, classifier_path="")
  reference = f"static layer {evaluator.num_layers} (never exits)"
  rows.append({"kind": "reference", "measure": reference, "timing": reference,
               **evaluator.score(evaluator.decode(reference, reference,
                                                  static(evaluator.num_layers)))})
  for layer in evaluator.settings.static_layers:
    name = f"static layer {layer}"
    rows.append({"kind": "static", "measure": name, "timing": name,
                 **evaluator.score(evaluator.decode(name, reference, static(layer)))})
  if evaluator.settings.oracle:
    exit_config = dataclasses.replace(base_exit, measure="oracle", classifier_path="")
    rows.append({"kind": "oracle", "measure": "oracle", "timing": "oracle",
                 **evaluator.score(evaluator.decode("oracle", reference, exit_config))})
  return rows


def _greedy_row(evaluator: Evaluator, reference: str) -> Dict[str, Any]:
  evaluator.add_greedy(reference)
  return {"kind": "greedy", "measure": "greedy (full model)", "timing": "greedy",
          "test_loss": 0.0, **{k: v for k, v in evaluator.score(evaluator.full).items()
                               if k != "test_loss"}}


def _timed_rows(figures: Dict[str, Dict[str, Any]], rows: List[Dict[str, Any]]
                ) -> List[Dict[str, Any]]:
  """The rows with their clocks' figures (`Evaluator.time_all`: every configuration timed
  together)."""
  timed = []
  for row in rows:
    row = {**row, **figures[row.pop("timing")]}
    timed.append(row)
    print(f"[evaluate] {row['measure']}{_delta_text(row)}: speedup "
          f"{row['wall_clock_speedup']:.2f}x (rounds {row['wall_clock_spread'][0]:.2f}-"
          f"{row['wall_clock_spread'][1]:.2f}) vs {row['reference']}, ideal "
          f"{row['wall_clock_ideal_speedup']:.2f}x", flush=True)
  return timed


def _delta_text(row: Dict[str, Any]) -> str:
  return f" delta={row['delta']:g}" if "delta" in row else ""


def run(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Runs the evaluate mode; returns the path of report.json."""
  settings = check(config, workdir)
  context, base_exit = settings.context, settings.exit
  mesh = run_mesh(config, "evaluate")
  model_config, params = context.checked_model()
  for layer in settings.evaluate.static_layers:
    checked_measure(dataclasses.replace(base_exit, measure="static", static_exit_layer=layer),
                    model_config)
  test = context.split(config.data.test_split, settings.evaluate.num_examples)
  calib = context.split(config.data.calibration_split, settings.calibration.num_examples)
  evaluator = Evaluator(settings, model_config, params, test, mesh)
  rows = []
  for measure in settings.evaluate.measures:
    rows.extend(_measure_rows(evaluator, base_exit, measure, calib))
  rows.extend(_reference_rows(evaluator, base_exit))
  if settings.free is not None:
    rows.extend(free_rows(evaluator, settings.free, calib))
  rows.insert(0, _greedy_row(evaluator, rows[0]["timing"] if rows else "greedy"))
  figures = evaluator.time_all()
  rows = _timed_rows(figures, rows)
  report = _report(settings, model_config.num_decoder_layers, (test, calib), rows)
  report["fixed_part_seconds"] = figures[FIXED_PART]
  path = context.path("report.json")
  if context.writes:
    table = report_table(report)
    context.write_json("report.json", report)
    context.write_text("report.md", table + "\n")
    plot_report(report, workdir)
    print(table, flush=True)
  evaluator.resume.finish()
  return path


def _report(settings: Settings, num_layers: int, splits, rows: List[Dict[str, Any]]) -> dict:
  """report.json: the run's task, splits and settings, and one row per configuration."""
  config, (test, calib) = settings.context.config, splits
  return {"task": config.data.task, "test_split": config.data.test_split,
          "num_test_examples": len(test.examples),
          "num_calibration_examples": len(calib.examples),
          "num_layers": num_layers, "rule": settings.evaluate.rule,
          "epsilon": settings.calibration.epsilon, "objective": settings.calibration.objective,
          "similarity": settings.calibration.similarity,
          "timing_rounds": settings.evaluate.timing_rounds,
          "latency_examples": min(settings.evaluate.latency_examples, len(test.examples)),
          "rows": rows}
