"""Study 5: hidden-state saturation.

For every token, the cosine similarity of each layer's state with the final layer's. A layer
is saturated where that similarity reaches a threshold; the final layer always is (its
similarity with itself is 1). Sequences are ranked by their mean similarity over layers
1..L-1 and tokens: the most saturated form the "easy" group, the least the "difficult" one.
Per group: the first saturated layer and the number of saturated layers (averaged over the
group's tokens), sequence length in tokens, and the fraction of tokens whose similarity rises
strictly over layers k+1..L. NumPy and matplotlib only.
"""

from __future__ import annotations

import dataclasses
from typing import List, Mapping, Sequence

import numpy as np

from calm_jax.analysis import plots
from calm_jax.analysis.layerwise import check_after_layers, rises_after, tokens_of

TITLE = "Hidden-state saturation: cosine similarity of each layer's state with the final one"
DESCRIPTION = (
    "Sequences ranked by mean similarity over layers 1..L-1 and their tokens; 'easy' = the "
    "most saturated, 'difficult' = the least. first_saturated_layer: first layer whose "
    "similarity >= threshold (L when no earlier one), averaged over the group's tokens; "
    "saturated_layers: layers with similarity >= threshold, the final one included; "
    "rising_fraction[j]: tokens whose similarity rises strictly over layers "
    "after_layers[j]+1..L; curves: per sequence, the similarity at each layer averaged over "
    "its tokens.")


@dataclasses.dataclass(frozen=True)
class SaturationGroup:
  """The easy or the difficult sequences."""

  name: str  # 'easy' or 'difficult'
  sequences: List[int]  # example indices, from the most (easy) / least (difficult) saturated
  mean_similarity: List[float]  # per sequence, its ranking score
  mean_first_saturated_layer: float  # over the group's tokens
  mean_saturated_layers: float  # over the group's tokens
  mean_length: float  # tokens per sequence
  rising_fraction: List[float]  # per after-layer k: similarity rises strictly after k
  curves: List[List[float]]  # per sequence [L], similarity averaged over its tokens


@dataclasses.dataclass(frozen=True)
class SaturationResult:
  """Saturation of one model under one input setting."""

  num_tokens: int
  num_layers: int
  threshold: float
  after_layers: List[int]
  mean_similarity: List[float]  # [L] over all tokens
  easy: SaturationGroup
  difficult: SaturationGroup


def first_saturated_layers(similarity, threshold: float) -> np.ndarray:
  """[L, N] similarities -> [N] 1-based first layer with similarity >= threshold (L when
  none of layers 1..L-1 reaches it)."""
  reached = np.asarray(similarity)[:-1] >= threshold  # [L-1, N]
  num_layers = reached.shape[0] + 1
  return np.where(reached.any(axis=0), np.argmax(reached, axis=0) + 1, num_layers)


def saturated_layer_counts(similarity, threshold: float) -> np.ndarray:
  """[L, N] -> [N] layers with similarity >= threshold, counting the final layer."""
  return (np.asarray(similarity)[:-1] >= threshold).sum(axis=0) + 1


def sequence_scores(similarity, mask) -> np.ndarray:
  """[L, B, T] and [B, T] -> [B] mean over the sequence's tokens of the mean similarity
  over layers 1..L-1 (NaN for a sequence without tokens)."""
  per_token = np.asarray(similarity, np.float64)[:-1].mean(axis=0)  # [B, T]
  mask = np.asarray(mask, bool)
  counts = mask.sum(axis=1)
  sums = np.where(mask, per_token, 0.0).sum(axis=1)
  return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def check_group_sizes(num_easy: int, num_difficult: int, num_sequences: int) -> None:
  for name, value in (("num_easy", num_easy), ("num_difficult", num_difficult)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
  if num_easy + num_difficult > num_sequences:
    raise ValueError(f"num_easy + num_difficult = {num_easy + num_difficult} exceeds the "
                     f"{num_sequences} sequences with tokens; the groups must not overlap")


def _group(name: str, rows: np.ndarray, similarity: np.ndarray, mask: np.ndarray,
           scores: np.ndarray, threshold: float, after: List[int]) -> SaturationGroup:
  tokens = tokens_of(similarity[:, rows], mask[rows])  # [L, N_group]
  lengths = mask[rows].sum(axis=1)  # [G]
  curves = [(similarity[:, r][:, mask[r]].mean(axis=1)).tolist() for r in rows]
  return SaturationGroup(
      name=name, sequences=[int(r) for r in rows],
      mean_similarity=[float(scores[r]) for r in rows],
      mean_first_saturated_layer=float(first_saturated_layers(tokens, threshold).mean()),
      mean_saturated_layers=float(saturated_layer_counts(tokens, threshold).mean()),
      mean_length=float(lengths.mean()),
      rising_fraction=[float(rises_after(tokens, k, strict=True).mean()) for k in after],
      curves=curves)


def saturation_study(similarity, mask, *, threshold: float, num_easy: int,
                     num_difficult: int, after_layers: Sequence[int]) -> SaturationResult:
  """similarity: [L, B, T] cosine with the final state; mask: [B, T] positions that count."""
  similarity = np.asarray(similarity, np.float64)
  mask = np.asarray(mask, bool)
  tokens = tokens_of(similarity, mask)  # [L, N]
  num_layers = tokens.shape[0]
  if num_layers < 2:
    raise ValueError("saturation needs at least 2 decoder layers (the final one is the "
                     "reference)")
  if not 0.0 < threshold <= 1.0:
    raise ValueError(f"saturation threshold must lie in (0, 1], got {threshold!r}")
  after = check_after_layers(after_layers, num_layers)
  scores = sequence_scores(similarity, mask)  # [B]
  valid = np.flatnonzero(~np.isnan(scores))
  check_group_sizes(num_easy, num_difficult, valid.size)
  ranked = valid[np.argsort(-scores[valid], kind="stable")]  # most saturated first
  group = lambda name, rows: _group(name, rows, similarity, mask, scores, threshold, after)
  return SaturationResult(
      num_tokens=int(tokens.shape[1]), num_layers=num_layers, threshold=float(threshold),
      after_layers=after, mean_similarity=tokens.mean(axis=1).tolist(),
      easy=group("easy", ranked[:num_easy]),
      difficult=group("difficult", ranked[::-1][:num_difficult]))


GROUP_COLORS = {"easy": "tab:blue", "difficult": "tab:red"}


def _draw_group(axis, group: SaturationGroup, layers: np.ndarray) -> None:
  color = GROUP_COLORS[group.name]
  for curve in group.curves:
    axis.plot(layers, curve, color=color, alpha=0.35, linewidth=1)
  axis.plot(layers, np.mean(group.curves, axis=0), color=color, linewidth=2.5,
            label=f"{group.name}: {len(group.curves)} sequences (thin), their mean (thick); "
                  f"first saturated layer {group.mean_first_saturated_layer:.2f}")


def figure(results: Mapping[str, Mapping[str, SaturationResult]], settings: List[str]):
  """One row per model, one column per input setting: the example curves of the easy and
  the difficult sequences, with the saturation threshold."""
  fig, axes = plots.figure_grid(len(results), len(settings))
  for row, (model, by_setting) in enumerate(results.items()):
    for col, setting in enumerate(settings):
      result, axis = by_setting[setting], axes[row][col]
      layers = np.arange(1, result.num_layers + 1)
      for group in (result.easy, result.difficult):
        _draw_group(axis, group, layers)
      axis.axhline(result.threshold, color="grey", linestyle="--",
                   label=f"saturation threshold {result.threshold:g}")
      axis.set(title=f"{model}\n{plots.setting_title(setting)}", xlabel="decoder layer",
               ylabel="cosine similarity with the final layer's state")
      plots.layer_ticks(axis, result.num_layers)
  plots.finish(fig, TITLE, [a for row in axes for a in row])
  return fig
