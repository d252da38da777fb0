"""Study 4: accuracy and confidence per layer (intermediate-layer over-confidence).

At each layer: how often its top-1 is the target token, how confident it is in that top-1
(its softmax probability), the gap between the two and the expected calibration error.
Where early layers are confident but wrong, a softmax measure exits too early there: the
first layers worth exiting at suggest a minimum exit layer. In the free-running setting the
decoder's own confidence measure (its per-layer trace) is shown beside them. NumPy and
matplotlib only.
"""

from __future__ import annotations

import dataclasses
from typing import List, Mapping, Optional

import numpy as np

from calm_jax.analysis import plots
from calm_jax.analysis.layerwise import finite_or_none, tokens_of

TITLE = "Accuracy and confidence of each decoder layer"
DESCRIPTION = (
    "accuracy[i-1]: fraction of tokens whose top-1 at layer i is the target token (the "
    "reference in teacher-forced inputs, the full model's own output in free-running ones). "
    "confidence[i-1]: mean softmax probability of layer i's top-1. overconfidence = "
    "confidence - accuracy. calibration_error: expected calibration error over num_bins "
    "equal-width confidence bins. measure_confidence[i-1]: mean of the decoder's configured "
    "confidence measure at layer i (free-running only; null where the decoder computed none).")


@dataclasses.dataclass(frozen=True)
class AccuracyResult:
  """Accuracy and confidence per layer for one model and input setting."""

  num_tokens: int
  num_layers: int
  accuracy: List[float]  # [L] top-1 equals the target
  confidence: List[float]  # [L] mean probability of the top-1
  overconfidence: List[float]  # [L] confidence - accuracy
  calibration_error: List[float]  # [L] expected calibration error
  num_bins: int  # confidence bins of the calibration error
  measure: Optional[str] = None  # name of the decoder's measure (free-running)
  measure_confidence: Optional[List[Optional[float]]] = None  # [L] its mean


def expected_calibration_error(confidence, correct, num_bins: int) -> float:
  """sum over equal-width bins of [0, 1] of (share of tokens) * |accuracy - confidence|.

  confidence, correct: [N]. A confidence of exactly 1 falls into the last bin.
  """
  if isinstance(num_bins, bool) or not isinstance(num_bins, (int, np.integer)) or num_bins < 1:
    raise ValueError(f"num_bins must be an integer >= 1, got {num_bins!r}")
  confidence = np.asarray(confidence, np.float64)
  correct = np.asarray(correct, np.float64)
  bins = np.minimum((confidence * num_bins).astype(int), num_bins - 1)  # [N]
  gap = np.bincount(bins, weights=correct - confidence, minlength=num_bins)  # summed per bin
  return float(np.abs(gap).sum() / confidence.size)


def accuracy_study(top1, top1_prob, targets, mask, num_bins: int, measure_confidence=None,
                   measure: Optional[str] = None) -> AccuracyResult:
  """top1, top1_prob: [L, B, T]; targets: [B, T]; mask: [B, T];
  measure_confidence: optional [L, B, T] decoder trace (NaN where not computed)."""
  predicted = tokens_of(top1, mask)  # [L, N]
  probability = tokens_of(top1_prob, mask).astype(np.float64)  # [L, N]
  correct = predicted == np.asarray(targets)[np.asarray(mask, bool)][None]  # [L, N]
  accuracy = correct.mean(axis=1)
  confidence = probability.mean(axis=1)
  measured = None
  if measure_confidence is not None:
    traced = tokens_of(measure_confidence, mask).astype(np.float64)  # [L, N]
    computed = ~np.isnan(traced)
    sums = np.where(computed, traced, 0.0).sum(axis=1)
    counts = computed.sum(axis=1)
    measured = [finite_or_none(s / c) if c else None for s, c in zip(sums, counts)]
  return AccuracyResult(
      num_tokens=int(predicted.shape[1]), num_layers=int(predicted.shape[0]),
      accuracy=accuracy.tolist(), confidence=confidence.tolist(),
      overconfidence=(confidence - accuracy).tolist(),
      calibration_error=[expected_calibration_error(p, c, num_bins)
                         for p, c in zip(probability, correct)],
      num_bins=int(num_bins), measure=measure if measured is not None else None,
      measure_confidence=measured)


def figure(results: Mapping[str, Mapping[str, AccuracyResult]], settings: List[str]):
  """One panel per input setting, one colour per model: accuracy (solid), mean top-1
  probability (dashed) and, where traced, the decoder's measure (dotted)."""
  fig, axes = plots.figure_grid(1, len(settings))
  for col, setting in enumerate(settings):
    axis = axes[0][col]
    for index, (model, by_setting) in enumerate(results.items()):
      result = by_setting[setting]
      layers = np.arange(1, result.num_layers + 1)
      axis.plot(layers, result.accuracy, marker="o", color=plots.color(index),
                label=f"{model}: accuracy (top-1 = target)")
      axis.plot(layers, result.confidence, marker="s", linestyle="--", color=plots.color(index),
                label=f"{model}: confidence (mean top-1 probability)")
      if result.measure_confidence is not None:
        values = [np.nan if v is None else v for v in result.measure_confidence]
        axis.plot(layers, values, marker="^", linestyle=":", color=plots.color(index),
                  label=f"{model}: decoder's {result.measure} confidence (trace)")
    axis.set(title=plots.setting_title(setting), xlabel="decoder layer",
             ylabel="accuracy / confidence")
    plots.layer_ticks(axis, max(r[setting].num_layers for r in results.values()))
  plots.finish(fig, TITLE, [a for row in axes for a in row])
  return fig
