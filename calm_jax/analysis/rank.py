"""Study 3: rank of the final prediction within each layer's distribution.

Where the final layer's top-1 already ranks among the first k tokens of an early layer, a
confidence measure may look at those k tokens only: this is the evidence behind vocabulary
pruning. NumPy and matplotlib only.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Mapping, Sequence

import numpy as np

from calm_jax.analysis import plots
from calm_jax.analysis.layerwise import tokens_of

TITLE = "Rank of the final layer's top-1 in each layer's distribution"
DESCRIPTION = (
    "Rank 1 = the layer's most likely token (ties with the maximum count as rank 1). "
    "percentiles[p][i-1]: the p-th percentile over tokens (linear interpolation) of the rank "
    "at layer i; within_cutoff[j][i-1]: fraction of tokens whose rank at layer i is <= "
    "cutoffs[j].")
PERCENTILES = (5, 25, 50, 75, 95)


@dataclasses.dataclass(frozen=True)
class RankResult:
  """Rank of the final top-1 per layer, for one model and input setting."""

  num_tokens: int
  num_layers: int
  percentiles: Dict[str, List[float]]  # 'p5', 'p25', 'p50', 'p75', 'p95' -> [L]
  mean: List[float]  # [L] mean rank
  max: List[int]  # [L] worst rank
  cutoffs: List[int]  # the k of the within_cutoff fractions
  within_cutoff: List[List[float]]  # [cutoffs][L] fraction of tokens with rank <= k


def check_cutoffs(cutoffs: Sequence[int]) -> List[int]:
  """Rank cutoffs: strictly increasing integers >= 1."""
  checked = []
  for k in cutoffs:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
      raise ValueError(f"rank cutoff {k!r} is not allowed; allowed: integers >= 1")
    if checked and k <= checked[-1]:
      raise ValueError(f"rank cutoffs must be strictly increasing; got {list(cutoffs)!r}")
    checked.append(int(k))
  return checked


def rank_study(final_rank, mask, cutoffs: Sequence[int]) -> RankResult:
  """final_rank: [L, B, T] rank of the final top-1 (1 = top); mask: [B, T]."""
  tokens = tokens_of(final_rank, mask)  # [L, N]
  cutoffs = check_cutoffs(cutoffs)
  return RankResult(
      num_tokens=int(tokens.shape[1]), num_layers=int(tokens.shape[0]),
      percentiles={f"p{p}": np.percentile(tokens, p, axis=1).tolist() for p in PERCENTILES},
      mean=tokens.mean(axis=1).tolist(), max=tokens.max(axis=1).astype(int).tolist(),
      cutoffs=cutoffs, within_cutoff=[np.mean(tokens <= k, axis=1).tolist() for k in cutoffs])


def _box_stats(result: RankResult, layer: int) -> dict:
  """The layer's box for `Axes.bxp`: quartiles, 5th-95th percentile whiskers, mean."""
  p = result.percentiles
  return {"q1": p["p25"][layer], "med": p["p50"][layer], "q3": p["p75"][layer],
          "whislo": p["p5"][layer], "whishi": p["p95"][layer], "mean": result.mean[layer],
          "fliers": []}


def _draw_boxes(axis, results: Mapping[str, Mapping[str, RankResult]], setting: str):
  """One box per model at every layer, side by side; returns the legend handles."""
  from matplotlib.patches import Patch  # pylint: disable=import-outside-toplevel
  width = 0.8 / len(results)
  handles = []
  for index, (model, by_setting) in enumerate(results.items()):
    result = by_setting[setting]
    positions = np.arange(1, result.num_layers + 1) - 0.4 + width * (index + 0.5)
    boxes = [_box_stats(result, layer) for layer in range(result.num_layers)]
    axis.bxp(boxes, positions=positions, widths=width * 0.9, showmeans=True,
             showfliers=False, patch_artist=True,
             boxprops={"facecolor": plots.color(index), "alpha": 0.5})
    handles.append(Patch(facecolor=plots.color(index), alpha=0.5,
                         label=f"{model} (box: quartiles; line: median; whiskers: 5th-95th "
                               f"percentile; triangle: mean)"))
  return handles


def _log_rank_axis(axis) -> None:
  """A log scale labelled with plain numbers (minor ticks too within about a decade)."""
  from matplotlib.ticker import FuncFormatter  # pylint: disable=import-outside-toplevel
  axis.set_yscale("log")
  plain_numbers = FuncFormatter(lambda value, _: f"{value:g}")
  axis.yaxis.set_major_formatter(plain_numbers)
  low, high = axis.get_ylim()
  if high / low < 20:
    axis.yaxis.set_minor_formatter(plain_numbers)


def figure(results: Mapping[str, Mapping[str, RankResult]], settings: List[str]):
  """One panel per input setting: per layer one box per model (quartiles, whiskers at the
  5th and 95th percentiles, the mean as a marker), ranks on a log scale."""
  fig, axes = plots.figure_grid(1, len(settings))
  for col, setting in enumerate(settings):
    axis = axes[0][col]
    handles = _draw_boxes(axis, results, setting)
    layers = max(r[setting].num_layers for r in results.values())
    axis.set_xticks(np.arange(1, layers + 1), [str(i) for i in range(1, layers + 1)])
    _log_rank_axis(axis)
    axis.set(title=plots.setting_title(setting), xlabel="decoder layer",
             ylabel="rank of the final top-1 (1 = most likely)")
    axis.grid(alpha=0.3)
    plots.legend_below(axis, handles)
  fig.suptitle(TITLE)
  fig.tight_layout()
  return fig
