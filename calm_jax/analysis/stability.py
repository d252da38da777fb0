"""Study 1: stability of the top-1 prediction over layers.

A token's top-1 is stable from layer i on when layers i, i+1, ..., L all predict the final
layer's top-1 (its "settle layer" is the smallest such i). The local oracle could exit at
the first layer that agrees with the final one; where that layer comes before the settle
layer, the prediction changed again after first agreeing. NumPy and matplotlib only.
"""

from __future__ import annotations

import dataclasses
from typing import List, Mapping

import numpy as np

from calm_jax.analysis import plots
from calm_jax.analysis.layerwise import tokens_of

TITLE = "Stability of the top-1 prediction over decoder layers"
DESCRIPTION = (
    "stable_fraction[i-1]: fraction of tokens whose top-1 at layers i..L all equal the final "
    "layer's (it no longer changes after layer i). agreeing_fraction[i-1]: fraction whose "
    "top-1 equalled the final one at some layer <= i (where the local oracle could exit). "
    "changed_after_agreeing_fraction: tokens whose top-1 agreed with the final one at some "
    "layer and changed again later.")


@dataclasses.dataclass(frozen=True)
class StabilityResult:
  """Top-1 stability of one model under one input setting."""

  num_tokens: int
  num_layers: int
  stable_fraction: List[float]  # [L] tokens whose top-1 no longer changes after layer i
  agreeing_fraction: List[float]  # [L] tokens whose top-1 equalled the final one by layer i
  mean_settle_layer: float  # average first layer from which the top-1 is fixed
  mean_first_agreement_layer: float  # average local-oracle exit layer
  changed_after_agreeing_fraction: float  # tokens whose top-1 left the final one again


def settle_layers(top1) -> np.ndarray:
  """[L, N] top-1 per layer -> [N] 1-based first layer from which it equals the final."""
  top1 = np.asarray(top1)
  agrees = top1 == top1[-1]  # [L, N]
  trailing = np.cumprod(agrees[::-1], axis=0).sum(axis=0)  # [N] agreeing layers at the end
  return top1.shape[0] - trailing + 1


def first_agreement_layers(top1) -> np.ndarray:
  """[L, N] top-1 per layer -> [N] 1-based first layer whose top-1 equals the final."""
  top1 = np.asarray(top1)
  return np.argmax(top1 == top1[-1], axis=0) + 1


def stability_study(top1, mask) -> StabilityResult:
  """top1: [L, B, T] each layer's top-1; mask: [B, T] positions that count."""
  tokens = tokens_of(top1, mask)  # [L, N]
  num_layers = tokens.shape[0]
  settle = settle_layers(tokens)  # [N]
  first = first_agreement_layers(tokens)  # [N]
  layers = np.arange(1, num_layers + 1)[:, None]  # [L, 1]
  return StabilityResult(
      num_tokens=int(tokens.shape[1]), num_layers=num_layers,
      stable_fraction=np.mean(settle[None] <= layers, axis=1).tolist(),
      agreeing_fraction=np.mean(first[None] <= layers, axis=1).tolist(),
      mean_settle_layer=float(settle.mean()),
      mean_first_agreement_layer=float(first.mean()),
      changed_after_agreeing_fraction=float(np.mean(first < settle)))


def figure(results: Mapping[str, Mapping[str, StabilityResult]], settings: List[str]):
  """One panel per input setting, one colour per model: the fraction of stable tokens
  (solid) and of tokens already agreeing with the final layer (dashed) at each layer."""
  fig, axes = plots.figure_grid(1, len(settings))
  for col, setting in enumerate(settings):
    axis = axes[0][col]
    for index, (model, by_setting) in enumerate(results.items()):
      result = by_setting[setting]
      layers = np.arange(1, result.num_layers + 1)
      axis.plot(layers, result.stable_fraction, marker="o", color=plots.color(index),
                label=f"{model}: top-1 fixed from layer i on")
      axis.plot(layers, result.agreeing_fraction, linestyle="--", color=plots.color(index),
                label=f"{model}: top-1 equal to final at some layer <= i")
    axis.set(title=plots.setting_title(setting), xlabel="decoder layer i",
             ylabel="fraction of tokens", ylim=(0, 1.02))
    plots.layer_ticks(axis, max(r[setting].num_layers for r in results.values()))
  plots.finish(fig, TITLE, [a for row in axes for a in row])
  return fig
