"""The evaluate mode's FREE rows (evaluate.free): synchronized decoding (Bae et al. 2023)
calibrated like the other measures, and its verified, lossless mode.

With `evaluate.free` the report gains, after the per-token measures:
- 'FREE lambda=1': synchronized decoding that never exits at layer s (the FREE rows'
  reference: the same decoder, every token through all layers, one deep pass per token);
- one row per delta: synchronized decoding with `exit.measure` deciding at
  `exit.shallow_exit_layer` (and the exit section's max_pending, rollback_threshold), at the
  threshold Learn-then-Test chose on the calibration split's grid decode (every (threshold,
  example) pair decoded: synchronized decoding has no per-layer trace to share decodes);
- 'FREE verified': the same decoder with verify=True at the largest delta's threshold. Its
  output is the full model's by construction (test loss 0); what it gains comes from the
  deep layers running over several positions per pass.

Every FREE row is timed with the others against 'FREE lambda=1'. Its ideal speedup counts
weight reads (decoding.cost_model.synchronized_work: shallow steps and deep passes, a pass
reading the deep layers once for all its positions), and the row states its deep passes and
shallow steps per token (report_table's FREE lines).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional

import ml_collections
import numpy as np

from calm_jax.calibration import ltt
from calm_jax.decoding import cost_model
from calm_jax.decoding.exit_rule import ExitConfig
from calm_jax.decoding.generate import generate
from calm_jax.exit_classifiers.registry import is_learned

REFERENCE = "FREE lambda=1"
VERIFIED = "FREE verified"


@dataclasses.dataclass(frozen=True)
class FreeSettings:
  """What the FREE rows decode with."""

  exit: ExitConfig  # synchronized decoding, lambda to be calibrated

  @property
  def name(self) -> str:
    return f"FREE ({self.exit.measure}, s={self.exit.shallow_exit_layer})"

  def exits(self) -> List[ExitConfig]:
    """The exit rules decoded (checked against the model before it loads)."""
    return [self.exit, dataclasses.replace(self.exit, verify=True, rollback_threshold=float("inf"))]


def free_settings(section: ml_collections.ConfigDict,
                  base_exit: ExitConfig) -> Optional[FreeSettings]:
  """evaluate.free checked: None when off, else the synchronized decoding of the `exit`
  section's measure, shallow layer, buffer and rollback rule."""
  enabled = section.get("free", False)
  if not isinstance(enabled, bool):
    raise ValueError(f"evaluate.free must be true or false, got {enabled!r}")
  if not enabled:
    return None
  if is_learned(base_exit.measure):
    raise ValueError(f"evaluate.free decides FREE's shallow exit with exit.measure, but "
                     f"{base_exit.measure!r} is a learned classifier, which the FREE rows do "
                     "not load; set exit.measure to a measure on the state or the head (e.g. "
                     "softmax_diff)")
  exit_config = dataclasses.replace(base_exit, decoding="synchronized", verify=False,
                                    adaptive_threshold="none", classifier_path="")
  return FreeSettings(exit_config)


@dataclasses.dataclass(frozen=True)
class _Stats:
  """What one synchronized decode of the test split did, per example."""

  shallow_steps: np.ndarray  # [N] int32
  deep_passes: np.ndarray  # [N] int32
  tokens: int  # generated tokens (EOS included)


def free_rows(evaluator, free: FreeSettings, calib) -> List[Dict[str, Any]]:
  """The FREE rows of the report (untimed: evaluate times every row together)."""
  rows = [_row(evaluator, "reference", REFERENCE, REFERENCE,
               dataclasses.replace(free.exit, threshold=1.0))]
  results = _calibrated(evaluator, free.exit, calib)
  for delta, result in results.items():
    row = _row(evaluator, "calibrated", free.name, f"{free.name} delta={delta:g}",
               dataclasses.replace(free.exit, threshold=result.threshold), delta=delta)
    row["violation"] = row["test_loss"] > delta
    rows.append(row)
  loosest = results[max(results)].threshold
  rows.append(_row(evaluator, "free_verified", VERIFIED, VERIFIED,
                   dataclasses.replace(free.exits()[1], threshold=loosest)))
  return rows


def _calibrated(evaluator, exit_config: ExitConfig, calib) -> Dict[float, ltt.CalibrationResult]:
  """LTT's threshold per delta on the calibration split's synchronized grid decode (decoded
  apart from the resume store, whose grid parts are keyed by measure only)."""
  grid_losses = dataclasses.replace(evaluator.grid_losses, resume=None)
  _, losses = grid_losses(calib, exit_config, None, "evaluate FREE: calibration grid")
  cal = evaluator.calibration_settings
  return {delta: ltt.calibrate(losses, cal.thresholds, delta, cal.epsilon,
                               evaluator.settings.rule) for delta in cal.deltas}


def _row(evaluator, kind: str, measure: str, name: str, exit_config: ExitConfig,
         **fields) -> Dict[str, Any]:
  """One FREE configuration: decoded (and registered for timing) by the evaluator, its work
  counted in weight reads from its shallow steps and deep passes."""
  decoded = evaluator.decode(name, REFERENCE, exit_config)
  stats = _stats(evaluator, exit_config)
  prices = cost_model.work_prices(evaluator.model_config, exit_config,
                                  evaluator.test.input_ids.shape[1])
  work = lambda rows: cost_model.synchronized_work(
      stats.shallow_steps[rows], stats.deep_passes[rows], prices, exit_config,
      evaluator.num_layers, decoded.exit_layers[rows])
  evaluator.work[name] = {"batch": work(slice(None)),
                          "sample": work(slice(0, evaluator.sample_size))}
  row = {"kind": kind, "measure": measure, "timing": name, "threshold": exit_config.threshold,
         **fields, **evaluator.score(decoded),
         "deep_passes_per_token": float(stats.deep_passes.sum() / max(stats.tokens, 1)),
         "shallow_steps_per_token": float(stats.shallow_steps.sum() / max(stats.tokens, 1))}
  print(f"[evaluate] {name}: threshold {exit_config.threshold:.3f}, mean exit layer "
        f"{row['mean_exit_layer']:.2f}, deep passes per token "
        f"{row['deep_passes_per_token']:.2f}, test loss {row['test_loss']:.4f}", flush=True)
  return row


def _stats(evaluator, exit_config: ExitConfig) -> _Stats:
  """Shallow steps and deep passes of the test split under `exit_config` (a decode of its
  own: the evaluator's decodes keep tokens and exit layers only)."""
  test = evaluator.test
  out = generate(evaluator.model_config, evaluator.params, test.input_ids,
                 test.attention_mask, exit=exit_config,
                 max_decode_len=evaluator.max_decode_len, mesh=evaluator.mesh)
  return _Stats(np.asarray(out.shallow_steps), np.asarray(out.deep_passes),
                int((np.asarray(out.exit_layers) > 0).sum()))


def free_lines(report: Dict[str, Any]) -> List[str]:
  """Markdown lines on the FREE rows (none without them): their deep passes and shallow
  steps per token, and what the verified row's speedup means."""
  rows = [row for row in report["rows"] if "deep_passes_per_token" in row]
  if not rows:
    return []
  lines = ["", "FREE rows (synchronized decoding, against FREE lambda=1; ideal = weight "
           "reads: a deep pass reads the deep layers once for all its positions; FREE "
           "verified's output is the full model's by construction):", "",
           "| row | threshold | deep passes / token | shallow steps / token | mean exit layer "
           "| ideal | throughput | latency | test loss |", "|---|---|---|---|---|---|---|---|---|"]
  for row in rows:
    name = row["measure"] + (f" delta={row['delta']:g}" if "delta" in row else "")
    ideal = row["wall_clock_ideal_speedup"]
    lines.append(
        f"| {name} | {row['threshold']:.3f} | {row['deep_passes_per_token']:.2f} | "
        f"{row['shallow_steps_per_token']:.2f} | {row['mean_exit_layer']:.2f} | "
        f"{'-' if ideal is None else f'{ideal:.2f}x'} | {row['wall_clock_speedup']:.2f}x | "
        f"{row['latency_speedup']:.2f}x | {row['test_loss']:.4f} |")
  return lines
