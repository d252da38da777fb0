"""Study 2: confidence in the eventual prediction over layers.

At every layer, the softmax probability the layer gives to the token the final layer
predicts: its mean and standard deviation over tokens, and the fraction of tokens for which
it never falls over layers k+1..L (monotone after layer k). NumPy and matplotlib only.
"""

from __future__ import annotations

import dataclasses
from typing import List, Mapping, Sequence

import numpy as np

from calm_jax.analysis import plots
from calm_jax.analysis.layerwise import check_after_layers, rises_after, tokens_of

TITLE = "Confidence in the eventual prediction over decoder layers"
DESCRIPTION = (
    "mean[i-1], std[i-1]: mean and population standard deviation over tokens of the "
    "probability layer i gives to the final layer's top-1. monotone_fraction[j]: fraction of "
    "tokens whose probability never decreases over layers after_layers[j]+1..L (0 = all "
    "layers).")


@dataclasses.dataclass(frozen=True)
class ConfidenceResult:
  """Confidence in the final prediction, per layer, for one model and input setting."""

  num_tokens: int
  num_layers: int
  mean: List[float]  # [L] mean probability of the final top-1 at layer i
  std: List[float]  # [L] its standard deviation over tokens
  after_layers: List[int]  # layers k the monotone fractions start after
  monotone_fraction: List[float]  # per k: probability non-decreasing over layers k+1..L


def confidence_study(final_prob, mask, after_layers: Sequence[int]) -> ConfidenceResult:
  """final_prob: [L, B, T] probability of the final layer's top-1; mask: [B, T]."""
  tokens = tokens_of(final_prob, mask).astype(np.float64)  # [L, N]
  after = check_after_layers(after_layers, tokens.shape[0])
  return ConfidenceResult(
      num_tokens=int(tokens.shape[1]), num_layers=int(tokens.shape[0]),
      mean=tokens.mean(axis=1).tolist(), std=tokens.std(axis=1).tolist(), after_layers=after,
      monotone_fraction=[float(rises_after(tokens, k, strict=False).mean()) for k in after])


def _monotone_label(result: ConfidenceResult) -> str:
  parts = [f"{f:.2f} after layer {k}" for k, f in zip(result.after_layers,
                                                    result.monotone_fraction)]
  return "monotone: " + ", ".join(parts) if parts else ""


def figure(results: Mapping[str, Mapping[str, ConfidenceResult]], settings: List[str]):
  """One panel per input setting: per model the mean probability of the final top-1 with a
  band of one standard deviation; the legend gives the monotone fractions."""
  fig, axes = plots.figure_grid(1, len(settings))
  for col, setting in enumerate(settings):
    axis = axes[0][col]
    for index, (model, by_setting) in enumerate(results.items()):
      result = by_setting[setting]
      layers = np.arange(1, result.num_layers + 1)
      mean, std = np.asarray(result.mean), np.asarray(result.std)
      axis.plot(layers, mean, marker="o", color=plots.color(index),
                label=f"{model} (mean; {_monotone_label(result)})")
      axis.fill_between(layers, np.clip(mean - std, 0, 1), np.clip(mean + std, 0, 1),
                        color=plots.color(index), alpha=0.2,
                        label=f"{model}: mean +/- one standard deviation (within [0, 1])")
    axis.set(title=plots.setting_title(setting), xlabel="decoder layer",
             ylabel="probability of the final layer's top-1", ylim=(0, 1.02))
    plots.layer_ticks(axis, max(r[setting].num_layers for r in results.values()))
  plots.finish(fig, TITLE, [a for row in axes for a in row])
  return fig
