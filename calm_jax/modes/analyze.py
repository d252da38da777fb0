"""The `analyze` mode: run the analysis studies (calm_jax.analysis) on one or more models.

The models compared are the config's model (fresh init, `model.hf_path` or
`model.checkpoint`) followed by every local Hugging Face T5 directory in
`analysis.compare_hf_paths` and every calm_jax params export (what `train` writes to
<workdir>/model) in `analysis.compare_checkpoints`. Per model, the layer-wise
studies read per-layer statistics under each input setting in `analysis.inputs`
(teacher-forced on the references, free-running on the full model's own outputs); the
oracle study decodes free-running with the local oracle. Every decode runs on the run's
mesh (`mesh` section; printed as `[analyze] mesh data=D model=M over P process(es)`); the
teacher-forced forward passes run on one device.

Writes to the workdir, per study S: analysis_S.json (the numbers, with what they mean and
which inputs they come from) and analysis_S.png; and analysis.json, an index of the run.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Dict, List, Optional, Tuple

import ml_collections
from absl import logging

from calm_jax import analysis
from calm_jax.analysis import (accuracy, collect, confidence, layerwise, oracle, plots, rank,
                               saturation, stability)
from calm_jax.data.metrics import TEXT_SIMILARITIES
from calm_jax.data.vocabulary import Vocabulary
from calm_jax.decoding.exit_rule import ExitConfig
from calm_jax.decoding.measures import build_measure, checked_measure
from calm_jax.decoding.sharded import DecodeMesh
from calm_jax.exit_classifiers.registry import is_learned
from calm_jax.model.config import T5Config
from calm_jax.model.hf_import import load_hf_t5
from calm_jax.modes import memory
from calm_jax.modes.context import RunContext, encode_targets, run_context
from calm_jax.modes.checks import is_integer, is_number
from calm_jax.modes.mesh import run_mesh


@dataclasses.dataclass(frozen=True)
class AnalysisSettings:
  """The `analysis` config section, checked."""

  studies: List[str]  # names in calm_jax.analysis.STUDIES, in the order they run
  inputs: List[str]  # 'teacher_forced' and/or 'free_running'
  num_examples: int  # generated examples analysed
  batch_size: int  # examples per forward/decode call; 0 = all at once
  compare_hf_paths: List[str]  # local Hugging Face T5 directories compared with the model
  compare_checkpoints: List[str]  # calm_jax params exports compared with the model
  after_layers: List[int]  # layers k of the monotone / rising fractions
  rank_cutoffs: List[int]  # k of "final top-1 within the layer's top k"
  saturation_threshold: float  # similarity from which a layer counts as saturated
  num_easy: int  # most saturated sequences shown
  num_difficult: int  # least saturated sequences shown
  calibration_bins: int  # confidence bins of the expected calibration error
  similarity: str  # reference similarity of the oracle study


def _sequence(section, field: str) -> list:
  values = getattr(section, field)
  if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
    raise ValueError(f"analysis.{field} must be a tuple, got {values!r}")
  return list(values)


def _names(section, field: str, allowed) -> List[str]:
  values = _sequence(section, field)
  if not values:
    raise ValueError(f"analysis.{field} is empty; allowed: {', '.join(allowed)}")
  for value in values:
    if value not in allowed:
      raise ValueError(f"analysis.{field} has {value!r}; allowed: {', '.join(allowed)}")
  if len(set(values)) != len(values):
    raise ValueError(f"analysis.{field} repeats a name: {values!r}")
  return values


def _integer(section, field: str, minimum: int) -> int:
  value = getattr(section, field)
  if not is_integer(value) or value < minimum:
    raise ValueError(f"analysis.{field} must be an integer >= {minimum}, got {value!r}")
  return int(value)


def _integers(section, field: str, minimum: int) -> List[int]:
  values = _sequence(section, field)
  for value in values:
    if not is_integer(value) or value < minimum:
      raise ValueError(f"analysis.{field} has {value!r}; allowed: integers >= {minimum}")
  if sorted(set(values)) != values:
    raise ValueError(f"analysis.{field} must be strictly increasing, got {values!r}")
  return [int(v) for v in values]


def _hf_dirs(section) -> List[str]:
  paths = _sequence(section, "compare_hf_paths")
  for path in paths:
    if not isinstance(path, str) or not os.path.isfile(os.path.join(path, "config.json")):
      raise ValueError(f"analysis.compare_hf_paths has {path!r}, which is not a local "
                       f"Hugging Face T5 directory (a folder with config.json)")
  return paths


def _exports(section) -> List[str]:
  paths = _sequence(section, "compare_checkpoints")
  if paths:
    # Imported here: the export reader pulls in Orbax, which most analyses never need.
    from calm_jax.training.checkpoints import is_export  # pylint: disable=import-outside-toplevel
  for path in paths:
    if not isinstance(path, str) or not is_export(path):
      raise ValueError(f"analysis.compare_checkpoints has {path!r}, which is not a calm_jax "
                       f"params export (a folder with config.json and params/, as `train` "
                       f"writes to <workdir>/model)")
  return paths


def analysis_settings(section: ml_collections.ConfigDict) -> AnalysisSettings:
  """Checks the section before any model is loaded (layer numbers are checked against each
  model's depth once it is loaded, before anything runs)."""
  threshold = section.saturation_threshold
  if not is_number(threshold) or not 0.0 < threshold <= 1.0:
    raise ValueError(f"analysis.saturation_threshold must lie in (0, 1], got {threshold!r}")
  if section.similarity not in TEXT_SIMILARITIES:
    raise ValueError(f"analysis.similarity={section.similarity!r}; allowed: "
                     f"{', '.join(TEXT_SIMILARITIES)}")
  settings = AnalysisSettings(
      studies=_names(section, "studies", analysis.STUDIES),
      inputs=_names(section, "inputs", layerwise.SETTINGS),
      num_examples=_integer(section, "num_examples", 1),
      batch_size=_integer(section, "batch_size", 0),
      compare_hf_paths=_hf_dirs(section),
      compare_checkpoints=_exports(section),
      after_layers=_integers(section, "after_layers", 0),
      rank_cutoffs=_integers(section, "rank_cutoffs", 1),
      saturation_threshold=float(threshold),
      num_easy=_integer(section, "num_easy", 1),
      num_difficult=_integer(section, "num_difficult", 1),
      calibration_bins=_integer(section, "calibration_bins", 1),
      similarity=section.similarity)
  if "saturation" in settings.studies:
    saturation.check_group_sizes(settings.num_easy, settings.num_difficult,
                                 settings.num_examples)
  return settings


# ----------------------------------------------------------------------------- models

@dataclasses.dataclass(frozen=True)
class ModelSource:
  """One model compared in the analysis."""

  name: str  # short label in plots and JSON
  source: str  # where it came from
  config: T5Config
  params: Any


def _load_export(path: str) -> Tuple[T5Config, Any]:
  from calm_jax.training.checkpoints import load_exported  # pylint: disable=import-outside-toplevel
  return load_exported(path)


def compared_checkpoints(settings: AnalysisSettings) -> List[Tuple[str, Callable]]:
  """(path, loader) of every compared model, in the order they are shown. Another
  checkpoint format joins here with its own config field and loader."""
  return ([(path, load_hf_t5) for path in settings.compare_hf_paths]
          + [(path, _load_export) for path in settings.compare_checkpoints])


def _label(path: str) -> str:
  return os.path.basename(os.path.normpath(path))


def model_sources(context: RunContext, settings: AnalysisSettings) -> List[ModelSource]:
  """The config's model followed by every compared checkpoint, with distinct names."""
  config = context.config
  model_config, params = context.load_model()
  origin = config.model.get("checkpoint", "") or config.model.hf_path
  sources = [ModelSource(
      name=_label(origin) if origin else "config model",
      source=origin or f"fresh random initialisation (seed {config.seed}, untrained)",
      config=model_config, params=params)]
  for path, load in compared_checkpoints(settings):
    model_config, params = load(path)
    sources.append(ModelSource(_label(path), path, model_config, params))
  seen: Dict[str, int] = {}
  for i, source in enumerate(sources):
    count = seen[source.name] = seen.get(source.name, 0) + 1
    if count > 1:
      sources[i] = dataclasses.replace(source, name=f"{source.name} ({count})")
  return sources


def check_models(sources: List[ModelSource], settings: AnalysisSettings,
                 exit_config: ExitConfig, vocabulary: Vocabulary) -> None:
  """Per model: the vocabulary fits, the layer numbers exist, the exit grid is valid."""
  for source in sources:
    cfg = source.config
    if cfg.vocab_size < vocabulary.size:
      raise ValueError(f"model {source.source!r} has vocab_size {cfg.vocab_size}; the "
                       f"analysis examples use vocabulary {vocabulary.name!r} with "
                       f"{vocabulary.size} ids")
    where = f"model {source.source!r}"
    try:
      layerwise.check_after_layers(settings.after_layers, cfg.num_decoder_layers)
    except ValueError as error:
      raise ValueError(f"analysis.after_layers for {where}: {error}") from None
    try:
      checked_measure(exit_config, cfg)
    except ValueError as error:
      raise ValueError(f"exit settings for {where}: {error}") from None
    if "saturation" in settings.studies and cfg.num_decoder_layers < 2:
      raise ValueError(f"{where} has 1 decoder layer; saturation needs at least 2")


# ----------------------------------------------------------------------------- data

def analysis_inputs(context: RunContext, count: int) -> collect.AnalysisInputs:
  """The examples analysed: `count` of data.task's test split, through data.vocabulary."""
  config, vocabulary = context.config, context.vocabulary
  split = context.split(config.data.test_split, count)
  target_ids = encode_targets(split.examples, vocabulary, config.decode.max_decode_len)
  return collect.AnalysisInputs(
      input_ids=split.input_ids, input_mask=split.attention_mask, target_ids=target_ids,
      target_mask=target_ids != vocabulary.pad_id,
      references=[e.targets for e in split.examples], detokenize=vocabulary.decode)


# ----------------------------------------------------------------------------- studies

@dataclasses.dataclass(frozen=True)
class LayerwiseStudy:
  """A study of per-layer token statistics: its module (TITLE, DESCRIPTION, figure) and how
  to run it on one model's statistics under one input setting."""

  module: Any
  run: Callable[[layerwise.LayerwiseTokens, AnalysisSettings, Optional[str]], Any]


def _stability(tokens, settings, measure):
  del settings, measure
  return stability.stability_study(tokens.top1, tokens.mask)


def _confidence(tokens, settings, measure):
  del measure
  return confidence.confidence_study(tokens.final_prob, tokens.mask, settings.after_layers)


def _rank(tokens, settings, measure):
  del measure
  return rank.rank_study(tokens.final_rank, tokens.mask, settings.rank_cutoffs)


def _accuracy(tokens, settings, measure):
  return accuracy.accuracy_study(tokens.top1, tokens.top1_prob, tokens.targets, tokens.mask,
                                 settings.calibration_bins, tokens.measure_confidence, measure)


def _saturation(tokens, settings, measure):
  del measure
  return saturation.saturation_study(
      tokens.similarity, tokens.mask, threshold=settings.saturation_threshold,
      num_easy=settings.num_easy, num_difficult=settings.num_difficult,
      after_layers=settings.after_layers)


LAYERWISE: Dict[str, LayerwiseStudy] = {
    "stability": LayerwiseStudy(stability, _stability),
    "confidence": LayerwiseStudy(confidence, _confidence),
    "rank": LayerwiseStudy(rank, _rank),
    "accuracy": LayerwiseStudy(accuracy, _accuracy),
    "saturation": LayerwiseStudy(saturation, _saturation),
}


def _trace_exit(exit_config: ExitConfig) -> Optional[ExitConfig]:
  """The configured measure, traced during the free-running decode, where it is compared
  with a threshold (static and oracle exits would leave early even at lambda = 1) and needs
  no trained classifier (one belongs to one model, and several are compared here)."""
  thresholded = build_measure(exit_config).needs.thresholded
  return exit_config if thresholded and not is_learned(exit_config.measure) else None


@dataclasses.dataclass(frozen=True)
class ModelAnalysis:
  """Everything computed for one model."""

  source: ModelSource
  layerwise: Dict[str, Dict[str, Any]]  # study -> setting -> result
  oracle: Optional[oracle.OracleResult]  # when the oracle study ran


def analyze_model(source: ModelSource, inputs: collect.AnalysisInputs,
                  settings: AnalysisSettings, exit_config: ExitConfig,
                  max_decode_len: int, mesh: Optional[DecodeMesh] = None) -> ModelAnalysis:
  """Collects the arrays of one model and runs every requested study on them; every
  decode runs on `mesh` (None: one device)."""
  cfg, params, size = source.config, source.params, settings.batch_size
  trace_exit = _trace_exit(exit_config)
  tokens, full = {}, None
  needs_layerwise = any(s in LAYERWISE for s in settings.studies)
  if needs_layerwise and "teacher_forced" in settings.inputs:
    tokens["teacher_forced"] = collect.teacher_forced(cfg, params, inputs, size)
  if needs_layerwise and "free_running" in settings.inputs:
    tokens["free_running"], full = collect.free_running(
        cfg, params, inputs, max_decode_len=max_decode_len, batch_size=size,
        trace_exit=trace_exit, mesh=mesh)
  measure = trace_exit.measure if trace_exit else None
  results = {study: {setting: LAYERWISE[study].run(tokens[setting], settings, measure)
                     for setting in settings.inputs}
             for study in settings.studies if study in LAYERWISE}
  oracle_result = None
  if "oracle" in settings.studies:
    full = full or collect.full_decode(cfg, params, inputs, max_decode_len=max_decode_len,
                                       batch_size=size, mesh=mesh)
    oracles = collect.oracle_decodes(cfg, params, inputs, exit_config,
                                     max_decode_len=max_decode_len, batch_size=size, mesh=mesh)
    oracle_result = oracle.oracle_study(full, oracles, inputs.references,
                                        num_layers=cfg.num_decoder_layers,
                                        similarity=settings.similarity)
  return ModelAnalysis(source, results, oracle_result)


# ----------------------------------------------------------------------------- outputs

def _model_header(source: ModelSource) -> dict:
  return {"name": source.name, "source": source.source,
          "num_layers": source.config.num_decoder_layers}


def _study_json(study: str, reports: List[ModelAnalysis], settings: AnalysisSettings,
                num_examples: int) -> dict:
  module = LAYERWISE[study].module if study in LAYERWISE else oracle
  record = {"study": study, "title": module.TITLE, "description": module.DESCRIPTION,
            "num_examples": num_examples}
  if study == "oracle":
    record["inputs"] = {"free_running": "decodes that read their own outputs"}
    record["models"] = [{**_model_header(r.source), "result": dataclasses.asdict(r.oracle)}
                        for r in reports]
  else:
    record["inputs"] = {s: layerwise.SETTING_DESCRIPTIONS[s] for s in settings.inputs}
    record["models"] = [{**_model_header(r.source),
                         "results": {s: dataclasses.asdict(res)
                                     for s, res in r.layerwise[study].items()}}
                        for r in reports]
  return record


def _study_figure(study: str, reports: List[ModelAnalysis], settings: AnalysisSettings):
  if study == "oracle":
    return oracle.figure({r.source.name: r.oracle for r in reports})
  return LAYERWISE[study].module.figure({r.source.name: r.layerwise[study] for r in reports},
                                        settings.inputs)


def write_outputs(context: RunContext, reports: List[ModelAnalysis],
                  settings: AnalysisSettings, num_examples: int) -> str:
  """analysis_<study>.json and .png per study, and the analysis.json index (process 0)."""
  index = {"num_examples": num_examples, "inputs": settings.inputs,
           "settings": dataclasses.asdict(settings),
           "models": [_model_header(r.source) for r in reports], "studies": {}}
  for study in settings.studies:
    json_path = context.write_json(f"analysis_{study}.json",
                                   _study_json(study, reports, settings, num_examples))
    png_path = context.path(f"analysis_{study}.png")
    plots.save_figure(_study_figure(study, reports, settings), png_path)
    index["studies"][study] = {"json": os.path.basename(json_path),
                               "png": os.path.basename(png_path)}
    logging.info("wrote %s and %s", json_path, png_path)
  return context.write_json("analysis.json", index)


def _summary_lines(report: ModelAnalysis) -> List[str]:
  lines = [f"{report.source.name} ({report.source.source}; "
           f"{report.source.config.num_decoder_layers} decoder layers)"]
  for setting, result in report.layerwise.get("stability", {}).items():
    lines.append(f"  {setting}: top-1 settles at layer {result.mean_settle_layer:.2f} on "
                 f"average; first agrees with the final layer at "
                 f"{result.mean_first_agreement_layer:.2f}")
  for setting, result in report.layerwise.get("accuracy", {}).items():
    cells = ", ".join(f"{a:.2f}/{c:.2f}" for a, c in zip(result.accuracy, result.confidence))
    lines.append(f"  {setting}: accuracy/confidence per layer {cells}")
  if report.oracle is not None:
    for row in report.oracle.rows:
      lines.append(f"  {row.name}: mean exit layer {row.mean_exit_layer:.2f}, token agreement "
                   f"with full {row.token_agreement:.3f}, {report.oracle.similarity} "
                   f"{row.reference_quality:.3f}")
  return lines


@dataclasses.dataclass(frozen=True)
class Settings:
  """What the analyze mode runs on, checked."""

  context: RunContext
  analysis: AnalysisSettings
  exit: ExitConfig  # traced free-running, and the exit rule of the oracle study


def check(config: ml_collections.ConfigDict, workdir: str) -> Settings:
  """The `analysis` and `exit` sections, the compared checkpoints, the task and the model
  source, checked before any model is loaded (layer numbers are checked against each
  model's depth once it is loaded, before anything runs)."""
  analysis_section = analysis_settings(config.analysis)
  exit_config = ExitConfig.from_section(config.exit)
  context = run_context(config, workdir, splits=("data.test_split",))
  memory.check_decoding(config, context.model_shape,
                        analysis_section.batch_size or analysis_section.num_examples,
                        "analysis.batch_size")
  return Settings(context, analysis_section, exit_config)


def run(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Runs the analyze mode; returns the path of analysis.json."""
  checked = check(config, workdir)
  context, settings, exit_config = checked.context, checked.analysis, checked.exit
  mesh = run_mesh(config, "analyze")
  sources = model_sources(context, settings)
  check_models(sources, settings, exit_config, context.vocabulary)
  inputs = analysis_inputs(context, settings.num_examples)
  reports = []
  for source in sources:
    logging.info("analysing %s on %d examples", source.name, inputs.num_examples)
    reports.append(analyze_model(source, inputs, settings, exit_config,
                                 config.decode.max_decode_len, mesh))
  path = context.path("analysis.json")
  if context.writes:
    path = write_outputs(context, reports, settings, inputs.num_examples)
    print(f"Analysis of {inputs.num_examples} generated examples; studies: "
          f"{', '.join(settings.studies)}; inputs: {', '.join(settings.inputs)}")
    for report in reports:
      print("\n".join(_summary_lines(report)))
    print(f"Wrote {', '.join(f'analysis_{s}.json/.png' for s in settings.studies)} and "
          f"analysis.json to {workdir}")
  return path
