"""The validity study: does a calibration rule keep its promise on held-out inputs?

One set of outputs decoded under a threshold grid is split R times at random into a
calibration part (80% by default) and a test part. Each rule (LTT with a p-value method, or
the naive rule) picks a threshold on the calibration part; the test part then shows the loss
actually incurred at that threshold and the decoder layers it used. LTT promises that the
expected loss exceeds delta with probability at most epsilon; the naive rule promises
nothing. Two violation rates are reported: on the test part (what a user would observe; it
includes the test part's own sampling noise, and because the parts are drawn without
replacement from one set, a lucky calibration part means an unlucky test part), and on the
whole set of n examples (the finite-population stand-in for the expected loss, which is
what LTT bounds).

Speedups here count decoder layers (L / average exit layer), not wall-clock time: the grid
is decoded once, so no per-threshold timing exists.
NumPy and matplotlib only.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Sequence

import numpy as np

from calm_jax.calibration import ltt
from calm_jax.utils import files


@dataclasses.dataclass(frozen=True)
class RuleSummary:
  """One rule at one delta, over all splits."""

  rule: str  # 'naive' or 'ltt_<method>[_bonferroni]'
  delta: float
  violation_rate: float  # fraction of splits whose test loss exceeds delta
  # fraction of splits whose chosen threshold's mean loss over all n examples exceeds delta:
  # the population quantity LTT bounds, free of the test part's sampling noise
  population_violation_rate: float
  mean_threshold: float  # chosen threshold, averaged over splits
  mean_test_loss: float  # loss on the test part at the chosen threshold
  mean_exit_layer: float  # token-weighted average exit layer on the test part
  layer_speedup: float  # L / mean_exit_layer
  never_exit_fraction: float  # splits where nothing was certified (threshold 1)
  thresholds: List[float]  # the chosen threshold of every split
  test_losses: List[float]  # the test loss of every split


@dataclasses.dataclass(frozen=True)
class ValidityReport:
  """Everything the study computed, JSON-ready through `to_dict`."""

  epsilon: float
  num_splits: int
  calibration_fraction: float
  num_examples: int
  num_layers: int
  summaries: List[RuleSummary]

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  def summary(self, rule: str, delta: float) -> RuleSummary:
    """The summary of `rule` at `delta` (matched to 1e-12)."""
    for s in self.summaries:
      if s.rule == rule and abs(s.delta - delta) <= 1e-12:
        return s
    raise KeyError(f"no summary for rule={rule!r} at delta={delta!r}")


def check_split(num_examples: int, num_splits, calibration_fraction) -> int:
  """Checks the study's split settings; returns the calibration part's size."""
  if (isinstance(num_splits, bool) or not isinstance(num_splits, (int, np.integer))
      or num_splits < 1):
    raise ValueError(f"num_splits must be a positive integer, got {num_splits!r}")
  if (isinstance(calibration_fraction, bool)
      or not isinstance(calibration_fraction, (int, float, np.integer, np.floating))
      or not 0.0 < calibration_fraction < 1.0):
    raise ValueError(f"calibration_fraction must lie strictly between 0 and 1, got "
                     f"{calibration_fraction!r}")
  calibration_size = int(round(calibration_fraction * num_examples))
  if not 1 <= calibration_size < num_examples:
    raise ValueError(f"{num_examples} examples cannot be split {calibration_fraction:.0%} / "
                     f"{1 - calibration_fraction:.0%} with both parts non-empty")
  return calibration_size


def _check_inputs(losses: np.ndarray, layer_sums, token_counts, num_layers: int,
                  num_splits: int, calibration_fraction: float):
  if (isinstance(num_layers, bool) or not isinstance(num_layers, (int, np.integer))
      or num_layers < 1):
    raise ValueError(f"num_layers must be a positive integer, got {num_layers!r}")
  layer_sums = np.asarray(layer_sums, np.float64)
  token_counts = np.asarray(token_counts, np.float64)
  for name, array in (("layer_sums", layer_sums), ("token_counts", token_counts)):
    if array.shape != losses.shape:
      raise ValueError(f"{name} has shape {array.shape} but losses has {losses.shape}; both "
                       f"are [examples, thresholds]")
    if not np.all(np.isfinite(array) & (array >= 0)):
      raise ValueError(f"{name} must be finite and >= 0")
  bad = np.argwhere((layer_sums < token_counts) | (layer_sums > num_layers * token_counts))
  if bad.size:
    i, j = bad[0]
    raise ValueError(f"layer_sums[{i}, {j}] = {layer_sums[i, j]:g} is impossible for "
                     f"{token_counts[i, j]:g} tokens: every token runs 1..num_layers layers")
  calibration_size = check_split(losses.shape[0], num_splits, calibration_fraction)
  return layer_sums, token_counts, calibration_size


def validity_study(losses, thresholds, layer_sums, token_counts, num_layers: int, *,
                   deltas: Sequence[float], epsilon: float, rules: Sequence[str],
                   num_splits: int = 100, calibration_fraction: float = 0.8,
                   seed: int = 0) -> ValidityReport:
  """Runs every rule at every delta on `num_splits` random calibration/test splits.

  losses: [n, k] calibration losses in [0, 1]; column j decoded at thresholds[j].
  thresholds: [k] strictly decreasing.
  layer_sums, token_counts: [n, k] decoder layers run and tokens generated per example.
  """
  grid = ltt.check_thresholds(thresholds)
  matrix = ltt.check_losses(losses, grid.size)
  layer_sums, token_counts, calibration_size = _check_inputs(
      matrix, layer_sums, token_counts, num_layers, num_splits, calibration_fraction)
  if isinstance(rules, str) or not rules:
    raise ValueError(f"rules must be a non-empty list of rule names, got {rules!r}")
  if isinstance(deltas, str) or not len(deltas):
    raise ValueError(f"deltas must be a non-empty list of tolerances, got {deltas!r}")
  for rule in rules:
    if rule != "naive":
      ltt.parse_rule(rule)
  rng = np.random.default_rng(seed)
  splits = [rng.permutation(matrix.shape[0]) for _ in range(num_splits)]
  summaries = []
  for delta in deltas:
    for rule in rules:
      summaries.append(_summarise_rule(matrix, grid, layer_sums, token_counts, num_layers,
                                       splits, calibration_size, float(delta), epsilon, rule))
  return ValidityReport(epsilon=float(epsilon), num_splits=int(num_splits),
                        calibration_fraction=float(calibration_fraction),
                        num_examples=matrix.shape[0], num_layers=int(num_layers),
                        summaries=summaries)


def _summarise_rule(losses, grid, layer_sums, token_counts, num_layers, splits,
                    calibration_size, delta, epsilon, rule) -> RuleSummary:
  chosen, test_losses, exit_layers, population_losses = [], [], [], []
  column_means = losses.mean(axis=0)  # [k] over all n examples
  for order in splits:
    calib, test = order[:calibration_size], order[calibration_size:]
    result = ltt.calibrate(losses[calib], grid, delta, epsilon, rule)
    j = result.chosen_index
    population_losses.append(0.0 if j is None else float(column_means[j]))
    if j is None:  # never exit: the full model, loss 0, every token runs L layers
      test_losses.append(0.0)
      exit_layers.append(float(num_layers))
    else:
      test_losses.append(float(losses[test, j].mean()))
      tokens = token_counts[test, j].sum()
      exit_layers.append(float(layer_sums[test, j].sum() / tokens) if tokens else
                         float(num_layers))
    chosen.append(result.threshold)
  mean_layer = float(np.mean(exit_layers))
  return RuleSummary(
      rule=rule, delta=delta,
      violation_rate=float(np.mean(np.asarray(test_losses) > delta)),
      population_violation_rate=float(np.mean(np.asarray(population_losses) > delta)),
      mean_threshold=float(np.mean(chosen)), mean_test_loss=float(np.mean(test_losses)),
      mean_exit_layer=mean_layer, layer_speedup=num_layers / mean_layer,
      never_exit_fraction=float(np.mean(np.asarray(chosen) >= ltt.NEVER_EXIT)),
      thresholds=[float(t) for t in chosen], test_losses=test_losses)


def format_table(report: ValidityReport) -> str:
  """A Markdown table of the summaries."""
  lines = [f"Validity over {report.num_splits} random {report.calibration_fraction:.0%}/"
           f"{1 - report.calibration_fraction:.0%} splits of {report.num_examples} examples "
           f"(epsilon = {report.epsilon}; speedup counts decoder layers, L = "
           f"{report.num_layers})", "",
           "| delta | rule | violation rate (test) | violation rate (all n) | mean threshold "
           "| mean test loss | mean exit layer | layer speedup |",
           "|---|---|---|---|---|---|---|---|"]
  for s in report.summaries:
    lines.append(f"| {s.delta:g} | {s.rule} | {s.violation_rate:.3f} | "
                 f"{s.population_violation_rate:.3f} | {s.mean_threshold:.3f} "
                 f"| {s.mean_test_loss:.4f} | {s.mean_exit_layer:.2f} | {s.layer_speedup:.2f}x |")
  return "\n".join(lines)


def _by_rule(report: ValidityReport) -> Dict[str, List[RuleSummary]]:
  grouped: Dict[str, List[RuleSummary]] = {}
  for s in report.summaries:
    grouped.setdefault(s.rule, []).append(s)
  return {rule: sorted(items, key=lambda s: s.delta) for rule, items in grouped.items()}


def plot_validity(report: ValidityReport, path: str) -> None:
  """Two panels: delta vs achieved test loss (with the y = delta line) and delta vs average
  exit layer, one line per rule; written atomically as PNG."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel

  figure, (loss_axis, layer_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
  deltas = sorted({s.delta for s in report.summaries})
  loss_axis.plot(deltas, deltas, color="grey", linestyle="--", label="loss = delta (target)")
  for rule, items in _by_rule(report).items():
    xs = [s.delta for s in items]
    loss_axis.plot(xs, [s.mean_test_loss for s in items], marker="o", label=rule)
    layer_axis.plot(xs, [s.mean_exit_layer for s in items], marker="o", label=rule)
  loss_axis.set(title="Achieved loss on held-out inputs", xlabel="tolerance delta",
                ylabel="mean test loss at the chosen threshold")
  layer_axis.axhline(report.num_layers, color="grey", linestyle="--", label="full model (L)")
  layer_axis.set(title="Decoder layers used", xlabel="tolerance delta",
                 ylabel="average exit layer (test tokens)")
  for axis in (loss_axis, layer_axis):
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
  figure.suptitle(f"Calibration validity over {report.num_splits} random splits "
                  f"(epsilon = {report.epsilon})")
  figure.tight_layout()
  try:
    files.replace_atomically(path, lambda temporary: figure.savefig(temporary, dpi=110,
                                                                   format="png"))
  finally:
    plt.close(figure)
