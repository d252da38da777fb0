"""What the calibrate and evaluate modes share: the `calibration` section checked, and the
chain from a split decoded under the threshold grid to its [n, k] consistency losses."""

from __future__ import annotations

import dataclasses
from typing import Any, List, Optional, Tuple

import ml_collections
import numpy as np

from calm_jax.calibration import consistency, ltt, validity
from calm_jax.data.metrics import TEXT_SIMILARITIES
from calm_jax.data.vocabulary import Vocabulary
from calm_jax.decoding.exit_rule import ExitConfig
from calm_jax.decoding.sharded import DecodeMesh
from calm_jax.decoding.threshold_grid import GridDecode, decode_threshold_grid
from calm_jax.model.config import T5Config
from calm_jax.modes.checks import is_integer, is_number
from calm_jax.modes.context import EncodedSplit, RunContext
from calm_jax.modes.resume import ResumeStore
from calm_jax.utils.progress import RateLine


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
  save_every: int  # examples per saved (resumable) part of the grid; 0 = the whole split


def _check_rules(rules: List[str]) -> None:
  if not rules:
    raise ValueError("calibration.rules is empty; allowed: " + ", ".join(ltt.rule_names()))
  for rule in rules:
    if rule not in ltt.rule_names():
      raise ValueError(f"calibration.rules has {rule!r}; allowed: "
                       f"{', '.join(ltt.rule_names())}")


def _check_loss(section: ml_collections.ConfigDict) -> None:
  """The objective, and a similarity it allows."""
  if section.objective not in consistency.OBJECTIVES:
    raise ValueError(f"calibration.objective={section.objective!r}; allowed: "
                     f"{', '.join(consistency.OBJECTIVES)}")
  allowed = list(TEXT_SIMILARITIES) + (["token_agreement"] if section.objective == "textual"
                                       else [])
  if section.similarity not in allowed:
    raise ValueError(f"calibration.similarity={section.similarity!r} is not allowed with "
                     f"objective {section.objective!r}; allowed: {', '.join(allowed)}")


def _check_sizes(section: ml_collections.ConfigDict) -> None:
  """Examples, batch size and the validity study's splits."""
  if not is_integer(section.num_examples) or section.num_examples < 2:
    raise ValueError(f"calibration.num_examples must be an integer >= 2, got "
                     f"{section.num_examples!r}")
  if not is_integer(section.batch_size) or section.batch_size < 0:
    raise ValueError(f"calibration.batch_size must be an integer >= 0 (0 = all examples), "
                     f"got {section.batch_size!r}")
  if not is_integer(section.save_every) or section.save_every < 0:
    raise ValueError(f"calibration.save_every must be an integer >= 0 (0 = the whole split "
                     f"in one part), got {section.save_every!r}")
  try:
    validity.check_split(section.num_examples, section.num_splits,
                         section.calibration_fraction)
  except ValueError as error:
    raise ValueError(f"calibration settings: {error}") from None


def calibration_settings(section: ml_collections.ConfigDict) -> CalibrationSettings:
  """The `calibration` section checked, before any model is loaded or anything decoded."""
  deltas = [float(d) for d in section.deltas]
  if not deltas:
    raise ValueError("calibration.deltas is empty: give at least one tolerance in (0, 1)")
  for delta in deltas:
    if not 0.0 < delta < 1.0:
      raise ValueError(f"calibration.deltas must lie strictly between 0 and 1; got {delta!r}")
  if not is_number(section.epsilon) or not 0.0 < section.epsilon < 1.0:
    raise ValueError(f"calibration.epsilon must lie strictly between 0 and 1; got "
                     f"{section.epsilon!r}")
  rules = list(section.rules)
  _check_rules(rules)
  _check_loss(section)
  _check_sizes(section)
  return CalibrationSettings(
      num_examples=section.num_examples,
      thresholds=ltt.check_thresholds(section.thresholds), deltas=deltas,
      epsilon=float(section.epsilon), rules=rules, objective=section.objective,
      similarity=section.similarity, num_splits=section.num_splits,
      calibration_fraction=float(section.calibration_fraction), batch_size=section.batch_size,
      save_every=section.save_every)


def grid_outputs(grid: GridDecode, settings: CalibrationSettings, vocabulary: Vocabulary):
  """Early outputs [k][n] and full outputs [n]: token ids for token_agreement, else texts."""
  early, full = grid.generated_ids()
  if settings.similarity == "token_agreement":
    return early, full
  return [[vocabulary.decode(ids) for ids in column] for column in early], [
      vocabulary.decode(ids) for ids in full]


def grid_progress(label: str, num_examples: int, num_thresholds: int):
  """A progress callback for decode_threshold_grid: a rate line of filled grid pairs."""
  line = RateLine(label, num_examples * num_thresholds, "(example, threshold) pairs")
  return lambda filled, decoded: line(filled, f"{decoded} decoded, the rest copied")


@dataclasses.dataclass(frozen=True)
class GridLosses:
  """Decodes a split under the calibration grid and scores every early output against the
  full model's: the calibration data of Learn-then-Test, for one model."""

  context: RunContext
  model_config: T5Config
  params: Any
  settings: CalibrationSettings
  mesh: Optional[DecodeMesh] = None  # every grid decode split over its data shards
  resume: Optional[ResumeStore] = None  # the parts already decoded; new parts saved there

  def _decode_part(self, split: EncodedSplit, rows: slice, exit_config: ExitConfig,
                   classifier_params: Optional[Any], progress) -> GridDecode:
    settings = self.settings
    return decode_threshold_grid(self.model_config, self.params, split.input_ids[rows],
                                 split.attention_mask[rows], thresholds=settings.thresholds,
                                 exit=exit_config,
                                 max_decode_len=self.context.config.decode.max_decode_len,
                                 batch_size=settings.batch_size or None,
                                 classifier_params=classifier_params, mesh=self.mesh,
                                 progress=progress)

  def decode(self, split: EncodedSplit, exit_config: ExitConfig,
             classifier_params: Optional[Any], label: str) -> GridDecode:
    """The split's grid decode, in parts of calibration.save_every examples: a part the
    resume store holds is read back, the others are decoded and saved as they finish (batch
    invariance makes the parts' outputs those of one decode of the whole split)."""
    num_examples, num_thresholds = split.input_ids.shape[0], self.settings.thresholds.size
    line = grid_progress(label, num_examples, num_thresholds)
    size = self.settings.save_every or num_examples
    parts, decoded = [], 0
    for start in range(0, num_examples, size):
      key = f"grid_{exit_config.measure}_{start}"
      saved = self.resume.load(key) if self.resume is not None else None
      if saved is not None:
        parts.append(GridDecode.from_arrays(saved))
        continue
      progress = lambda filled, pairs, before=(start * num_thresholds, decoded): line(
          before[0] + filled, before[1] + pairs)
      part = self._decode_part(split, slice(start, start + size), exit_config,
                               classifier_params, progress)
      decoded += part.decoded_pairs
      if self.resume is not None:
        self.resume.save(key, part.to_arrays())
      parts.append(part)
    return GridDecode.concatenate(parts)

  def __call__(self, split: EncodedSplit, exit_config: ExitConfig,
               classifier_params: Optional[Any], label: str) -> Tuple[GridDecode, np.ndarray]:
    """(the grid decode, losses [n, k]) of `split` under `exit_config`'s measure; `label`
    names the progress line."""
    settings = self.settings
    grid = self.decode(split, exit_config, classifier_params, label)
    early, full = grid_outputs(grid, settings, self.context.vocabulary)
    losses = consistency.consistency_losses(settings.objective, early, full,
                                            references=split.references,
                                            similarity=settings.similarity)  # [n, k]
    return grid, losses
