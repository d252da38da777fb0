"""The evaluate mode's report: a Markdown table and three plots from report.json's rows.

Plots (PNG, written atomically):
- report_quality_speedup.png: task quality vs the measured throughput speedup (interleaved
  rounds, against each row's reference), one line per measure over its deltas, with
  greedy decoding, static exits and the oracle as single points;
- report_exit_layers.png: the distribution of exit layers per measure at its middle delta;
- report_delta_loss.png: delta vs the consistency loss achieved on the test split.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List

import matplotlib

matplotlib.use("Agg")
# pylint: disable=wrong-import-position
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from calm_jax.modes.evaluate_free import free_lines  # noqa: E402
from calm_jax.utils.files import replace_atomically  # noqa: E402


def _quality(row: Dict[str, Any]) -> float:
  """The first metric of the task's quality dictionary."""
  return float(next(iter(row["quality"].values())))


def _quality_name(report: Dict[str, Any]) -> str:
  return next(iter(report["rows"][0]["quality"]))


def _ratio(value) -> str:
  return "-" if value is None else f"{value:.2f}x"


def _measured(row: Dict[str, Any], clock: str) -> str:
  """'1.42x (1.30-1.51)': the median per-round speedup and its spread over rounds."""
  low, high = row[f"{clock}_spread"]
  return f"{row[f'{clock}_speedup']:.2f}x ({low:.2f}-{high:.2f})"


def _realized(row: Dict[str, Any], clock: str) -> str:
  value = row[f"{clock}_realized"]
  return "-" if value is None else f"{value:.2f}"


def _fixed_text(report: Dict[str, Any]) -> str:
  """'31% of the first reference's throughput time, 29% of its latency time'."""
  first = next((row for row in report["rows"] if row["kind"] == "reference"),
               report["rows"][0])  # only greedy, timed against itself
  return (f"{first['wall_clock_fixed_share']:.0%} of {first['measure']}'s throughput time, "
          f"{first['latency_fixed_share']:.0%} of its latency time")


def report_table(report: Dict[str, Any]) -> str:
  """Markdown: one row per configuration, measured speedups beside their ideals."""
  metric = _quality_name(report)
  lines = [
      f"Evaluation on {report['num_test_examples']} {report['test_split']} examples of "
      f"{report['task']} ({report['num_layers']} decoder layers). Thresholds by "
      f"{report['rule']} (epsilon {report['epsilon']}) on {report['num_calibration_examples']} "
      f"calibration examples; loss = {report['objective']} consistency "
      f"({report['similarity']}).", "",
      f"Speedups are medians over {report['timing_rounds']} interleaved rounds of every "
      "configuration (lowest-highest round in brackets), each against its reference row: "
      "the same decoder at lambda = 1 (calibrated measures, greedy), or the static decoder "
      "exiting at the last layer (static exits, oracle). Throughput decodes the test split "
      f"as one batch; latency decodes {report['latency_examples']} test examples one at a "
      "time. Ideal = the speedup if the token loop's time followed its work: the "
      "reference's work / the row's work for the tokens decoded (layers, the measure's "
      "checks, the exit head, propagated K/V, in multiply-adds), applied to the reference's "
      "time less the fixed part every configuration runs once per input (encoder and "
      f"cross-attention K/V, timed in the same rounds: {_fixed_text(report)}); realized = "
      "measured / ideal.", "",
      f"| measure | delta | threshold | mean exit layer | ideal speedup | throughput speedup "
      f"| realized | latency speedup | realized | {metric} | test loss | violates delta |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for row in report["rows"]:
    delta = f"{row['delta']:g}" if "delta" in row else "-"
    threshold = f"{row['threshold']:.3f}" if "threshold" in row else "-"
    violation = ("yes" if row["violation"] else "no") if "violation" in row else "-"
    lines.append(
        f"| {row['measure']} | {delta} | {threshold} | {row['mean_exit_layer']:.2f} | "
        f"{_ratio(row['wall_clock_ideal_speedup'])} | {_measured(row, 'wall_clock')} | "
        f"{_realized(row, 'wall_clock')} | {_measured(row, 'latency')} | "
        f"{_realized(row, 'latency')} | {_quality(row):.2f} | {row['test_loss']:.4f} | "
        f"{violation} |")
  lines.extend(free_lines(report))
  return "\n".join(lines)


def _save(figure, path: str) -> None:
  replace_atomically(path, lambda temporary: figure.savefig(temporary, format="png", dpi=110))
  plt.close(figure)


def _by_measure(report: Dict[str, Any]) -> Dict[str, List[Dict[str, Any]]]:
  groups: Dict[str, List[Dict[str, Any]]] = {}
  for row in report["rows"]:
    if row["kind"] == "calibrated":
      groups.setdefault(row["measure"], []).append(row)
  return groups


def _plot_quality_speedup(report: Dict[str, Any], path: str) -> None:
  figure, axes = plt.subplots(figsize=(6.5, 4.5))
  for measure, rows in _by_measure(report).items():
    deltas = ", ".join(f"{r['delta']:g}" for r in rows)
    axes.plot([r["wall_clock_speedup"] for r in rows], [_quality(r) for r in rows], "o-",
              label=f"{measure} (deltas {deltas})")
  for row in report["rows"]:
    if row["kind"] not in ("calibrated", "reference"):
      axes.plot(row["wall_clock_speedup"], _quality(row), "s", label=row["measure"])
  axes.set_xlabel("measured throughput speedup over the same decoder at lambda = 1 (x)")
  axes.set_ylabel(f"test {_quality_name(report)}")
  axes.set_title("Quality vs speedup at the calibrated thresholds")
  axes.legend(fontsize=7)
  axes.grid(alpha=0.3)
  _save(figure, path)


def _plot_exit_layers(report: Dict[str, Any], path: str) -> None:
  groups = _by_measure(report)
  figure, axes = plt.subplots(figsize=(6.5, 4.5))
  layers = np.arange(1, report["num_layers"] + 1)
  width = 0.8 / max(len(groups), 1)
  for i, (measure, rows) in enumerate(groups.items()):
    row = rows[len(rows) // 2]
    counts = np.asarray(row["exit_layer_counts"], float)
    axes.bar(layers + i * width - 0.4 + width / 2, counts / max(counts.sum(), 1), width,
             label=f"{measure}, delta {row['delta']:g}")
  axes.set_xticks(layers)
  axes.set_xlabel("exit layer")
  axes.set_ylabel("share of generated tokens")
  axes.set_title("Where tokens exit (test split)")
  axes.legend(fontsize=7)
  _save(figure, path)


def _plot_delta_loss(report: Dict[str, Any], path: str) -> None:
  figure, axes = plt.subplots(figsize=(6.5, 4.5))
  deltas = sorted({r["delta"] for rows in _by_measure(report).values() for r in rows})
  if deltas:
    axes.plot(deltas, deltas, "k--", label="delta (the allowed loss)")
  for measure, rows in _by_measure(report).items():
    axes.plot([r["delta"] for r in rows], [r["test_loss"] for r in rows], "o-", label=measure)
  axes.set_xlabel("delta")
  axes.set_ylabel(f"test {report['objective']} consistency loss")
  axes.set_title("Tolerance vs loss achieved on the test split")
  axes.legend(fontsize=7)
  axes.grid(alpha=0.3)
  _save(figure, path)


def plot_report(report: Dict[str, Any], workdir: str) -> List[str]:
  """Writes the three plots; returns their paths."""
  paths = [os.path.join(workdir, name) for name in (
      "report_quality_speedup.png", "report_exit_layers.png", "report_delta_loss.png")]
  for plot, path in zip((_plot_quality_speedup, _plot_exit_layers, _plot_delta_loss), paths):
    plot(report, path)
  return paths
