"""Threshold calibration with Learn-then-Test (LTT), in NumPy and SciPy only.

The question LTT answers: given n calibration examples, each decoded at k candidate
thresholds lambda_1 > ... > lambda_k, with a loss L[i, j] in [0, 1] saying how much worse
example i got at lambda_j than with the full model, which is the smallest threshold we may
use so that, with probability at least 1 - epsilon over the calibration draw, the expected
loss on new inputs stays at or below delta?

Every threshold gets a valid p-value for the null hypothesis H_j: "E[L(lambda_j)] > delta".
Fixed-sequence testing walks the grid from the largest (safest) threshold down and rejects
while p_j <= epsilon; the first failure stops the walk. No extra correction is needed because
the order is fixed before looking at the data. The chosen threshold is the smallest rejected
one; when nothing is rejected the answer is 1.0, which the decoder treats as "never exit".

Everything returned keeps the whole table, so a report shows the chosen threshold's own
mean loss and p-value, not another row's.
"""

from __future__ import annotations

import dataclasses
import math
from typing import List, Optional, Sequence

import numpy as np
from scipy import special, stats

P_VALUE_METHODS = ("hoeffding", "bentkus", "hoeffding_bentkus", "binomial")
CORRECTIONS = ("fixed_sequence", "bonferroni")
NEVER_EXIT = 1.0  # the threshold returned when no candidate is certified

# n * mean closer than this (relative to the count) to an integer is taken to be it, so
# that a mean of 3/10 stored as 0.30000000000000004 counts 3 losses, not 4. Means computed
# from n losses carry rounding errors near 1e-16, far below this tolerance; a true mean that
# lies within 1e-9 of k/n without equalling it is counted as k (a negligible liberality).
_COUNT_TOLERANCE = 1e-9


# --------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------


def _check_open_unit(name: str, value: float) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
    raise ValueError(f"{name} must be a number in (0, 1); got {value!r}")
  value = float(value)
  if not 0.0 < value < 1.0:
    raise ValueError(f"{name} must lie strictly between 0 and 1; got {value!r}")
  return value


def _check_method(method: str) -> str:
  if method not in P_VALUE_METHODS:
    raise ValueError(f"method={method!r} is not a p-value method; allowed: "
                     f"{', '.join(P_VALUE_METHODS)}")
  return method


def _check_n(n) -> int:
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
    raise ValueError(f"n (the number of calibration examples) must be a positive integer; "
                     f"got {n!r}")
  return int(n)


def check_thresholds(thresholds) -> np.ndarray:
  """The candidate grid as float64 [k]: finite, in [0, 1], strictly decreasing."""
  grid = np.asarray(thresholds, dtype=np.float64)
  if grid.ndim != 1 or grid.size == 0:
    raise ValueError(f"thresholds must be a non-empty 1-D sequence; got shape {grid.shape}")
  bad = np.flatnonzero(~np.isfinite(grid) | (grid < 0.0) | (grid > 1.0))
  if bad.size:
    raise ValueError(f"thresholds must lie in [0, 1]; thresholds[{bad[0]}] = "
                     f"{float(grid[bad[0]])!r}")
  rises = np.flatnonzero(np.diff(grid) >= 0.0)
  if rises.size:
    j = rises[0]
    raise ValueError(f"thresholds must be strictly decreasing (largest first); thresholds[{j}]"
                     f" = {float(grid[j])!r} is followed by {float(grid[j + 1])!r}")
  return grid


def check_losses(losses, num_thresholds: Optional[int] = None) -> np.ndarray:
  """The loss matrix as float64 [n, k]: finite, in [0, 1], at least one row."""
  matrix = np.asarray(losses, dtype=np.float64)
  if matrix.ndim != 2:
    raise ValueError(f"losses must be a 2-D matrix [examples, thresholds]; got shape "
                     f"{matrix.shape}")
  if matrix.shape[0] == 0:
    raise ValueError("losses has no rows: calibration needs at least one example (n = 0)")
  if num_thresholds is not None and matrix.shape[1] != num_thresholds:
    raise ValueError(f"losses has {matrix.shape[1]} columns but there are {num_thresholds} "
                     f"thresholds; losses must be [examples, thresholds]")
  bad = np.argwhere(~np.isfinite(matrix) | (matrix < 0.0) | (matrix > 1.0))
  if bad.size:
    i, j = bad[0]
    raise ValueError(f"losses must be finite and in [0, 1]; losses[{i}, {j}] = "
                     f"{float(matrix[i, j])!r} ({len(bad)} bad entries)")
  return matrix


# --------------------------------------------------------------------------------------
# p-values for H_j: E[loss] > delta
# --------------------------------------------------------------------------------------


def _bernoulli_kl(a: np.ndarray, b: float) -> np.ndarray:
  """h1(a, b) = a log(a/b) + (1-a) log((1-a)/(1-b)), with 0 log 0 = 0."""
  return special.rel_entr(a, b) + special.rel_entr(1.0 - a, 1.0 - b)


def _loss_counts(mean_loss: np.ndarray, n: int, exact: bool) -> np.ndarray:
  """n * mean, snapped to the nearest integer when within rounding error of it."""
  count = mean_loss * n
  nearest = np.round(count)
  near = np.abs(count - nearest) <= _COUNT_TOLERANCE * np.maximum(nearest, 1.0)
  if exact and not np.all(near):
    bad = float(np.asarray(mean_loss).flat[np.flatnonzero(~near)[0]])
    raise ValueError(f"method='binomial' needs 0/1 losses, so mean_loss * n must be a whole "
                     f"number; got mean_loss={bad!r} with n={n}")
  return np.where(near, nearest, count)


def hoeffding_p_value(mean_loss, n: int, delta: float) -> np.ndarray:
  """exp(-2 n (delta - mean)_+^2)."""
  gap = np.maximum(delta - np.asarray(mean_loss, dtype=np.float64), 0.0)
  return np.exp(-2.0 * n * gap**2)


def bentkus_p_value(mean_loss, n: int, delta: float) -> np.ndarray:
  """e * P(Binomial(n, delta) <= ceil(n * mean)), capped at 1."""
  count = _loss_counts(np.asarray(mean_loss, dtype=np.float64), n, exact=False)
  return np.minimum(math.e * stats.binom.cdf(np.ceil(count), n, delta), 1.0)


def hoeffding_kl_p_value(mean_loss, n: int, delta: float) -> np.ndarray:
  """exp(-n h1(min(mean, delta), delta)): Hoeffding's bound in its relative-entropy form."""
  a = np.minimum(np.asarray(mean_loss, dtype=np.float64), delta)
  return np.exp(-n * _bernoulli_kl(a, delta))


def binomial_p_value(mean_loss, n: int, delta: float) -> np.ndarray:
  """P(Binomial(n, delta) <= n * mean): exact when every loss is 0 or 1."""
  count = _loss_counts(np.asarray(mean_loss, dtype=np.float64), n, exact=True)
  return stats.binom.cdf(count, n, delta)


def p_value(mean_loss, n: int, delta: float, method: str = "hoeffding_bentkus"):
  """A valid p-value for H: "expected loss > delta" from the empirical mean of n losses
  in [0, 1]. Vectorised over `mean_loss`; returns a float for a scalar mean.

  method: 'hoeffding' (exp(-2n(delta-mean)_+^2)), 'bentkus' (e * P(Bin(n, delta) <=
  ceil(n*mean))), 'hoeffding_bentkus' (the smaller of the two bounds, with Hoeffding in
  relative-entropy form; CALM's choice), or 'binomial' (exact, for 0/1 losses only).
  """
  _check_method(method)
  n = _check_n(n)
  delta = _check_open_unit("delta", delta)
  means = np.asarray(mean_loss, dtype=np.float64)
  if not np.all(np.isfinite(means) & (means >= 0.0) & (means <= 1.0)):
    raise ValueError(f"mean_loss must be finite and in [0, 1]; got {mean_loss!r}")
  if method == "hoeffding":
    p = hoeffding_p_value(means, n, delta)
  elif method == "bentkus":
    p = bentkus_p_value(means, n, delta)
  elif method == "hoeffding_bentkus":
    p = np.minimum(hoeffding_kl_p_value(means, n, delta), bentkus_p_value(means, n, delta))
  else:
    p = binomial_p_value(means, n, delta)
  return float(p) if np.ndim(p) == 0 else p


# --------------------------------------------------------------------------------------
# Choosing the threshold
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CalibrationRow:
  """One candidate threshold's line of the calibration table."""
  threshold: float  # lambda_j
  mean_loss: float  # empirical mean of the n calibration losses at lambda_j
  p_value: float  # p-value of H_j: E[loss] > delta (NaN for the naive rule)
  rejected: bool  # certified: H_j rejected (LTT) or mean <= delta (naive)


@dataclasses.dataclass(frozen=True)
class CalibrationResult:
  """The chosen threshold together with the table it was chosen from."""
  threshold: float  # the threshold to decode with; 1.0 (never exit) when none certified
  chosen_index: Optional[int]  # row of `table` that was chosen; None for the fallback
  rule: str  # 'ltt' or 'naive'
  method: str  # p-value method ('' for the naive rule)
  correction: str  # 'fixed_sequence' or 'bonferroni' ('' for the naive rule)
  delta: float  # tolerated expected loss
  epsilon: float  # allowed probability that the guarantee fails (NaN for naive)
  num_examples: int  # n
  table: List[CalibrationRow]  # every candidate, largest threshold first

  @property
  def chosen(self) -> Optional[CalibrationRow]:
    """The chosen row, whose mean loss and p-value a report should show."""
    return None if self.chosen_index is None else self.table[self.chosen_index]

  def to_dict(self) -> dict:
    """Strict-JSON form (NaN, used by the naive rule for 'no p-value', becomes None)."""
    return _nan_to_none(dataclasses.asdict(self))


def _nan_to_none(value):
  if isinstance(value, dict):
    return {key: _nan_to_none(item) for key, item in value.items()}
  if isinstance(value, list):
    return [_nan_to_none(item) for item in value]
  if isinstance(value, float) and math.isnan(value):
    return None
  return value


def _table(grid: np.ndarray, means: np.ndarray, p: np.ndarray,
           rejected: np.ndarray) -> List[CalibrationRow]:
  return [CalibrationRow(float(t), float(m), float(q), bool(r))
          for t, m, q, r in zip(grid, means, p, rejected)]


def fixed_sequence_rejections(p_values, epsilon: float) -> np.ndarray:
  """Rejects H_1, H_2, ... in order while p <= epsilon; everything after the first
  failure is kept. [k] bool."""
  passed = np.asarray(p_values) <= epsilon
  return np.cumprod(passed).astype(bool)


def learn_then_test(losses, thresholds, delta: float, epsilon: float,
                    method: str = "hoeffding_bentkus",
                    correction: str = "fixed_sequence") -> CalibrationResult:
  """Learn-then-Test: the smallest threshold certified to keep E[loss] <= delta with
  probability >= 1 - epsilon.

  losses: [n, k] in [0, 1], column j decoded at thresholds[j].
  thresholds: [k] strictly decreasing in [0, 1] (lambda_1 > ... > lambda_k).
  correction: 'fixed_sequence' (test from the largest threshold down, stop at the first
    failure) or 'bonferroni' (test each at epsilon / k, keep the smallest rejected).
  """
  _check_method(method)
  if correction not in CORRECTIONS:
    raise ValueError(f"correction={correction!r} is not allowed; allowed: "
                     f"{', '.join(CORRECTIONS)}")
  delta = _check_open_unit("delta", delta)
  epsilon = _check_open_unit("epsilon", epsilon)
  grid = check_thresholds(thresholds)
  matrix = check_losses(losses, grid.size)
  if method == "binomial" and not np.all((matrix == 0.0) | (matrix == 1.0)):
    raise ValueError("method='binomial' is exact only for 0/1 losses; these losses take other "
                     "values (use 'hoeffding_bentkus')")
  n = matrix.shape[0]
  means = matrix.mean(axis=0)  # [k]
  p = np.atleast_1d(p_value(means, n, delta, method))
  if correction == "fixed_sequence":
    rejected = fixed_sequence_rejections(p, epsilon)
  else:
    rejected = p <= epsilon / grid.size
  chosen = _smallest_certified(rejected)
  return CalibrationResult(
      threshold=NEVER_EXIT if chosen is None else float(grid[chosen]), chosen_index=chosen,
      rule="ltt", method=method, correction=correction, delta=delta, epsilon=epsilon,
      num_examples=n, table=_table(grid, means, p, rejected))


def naive_threshold(losses, thresholds, delta: float) -> CalibrationResult:
  """The uncalibrated baseline: the smallest threshold whose empirical mean loss on the
  calibration set is <= delta (1.0 when none). It carries no guarantee on new inputs."""
  delta = _check_open_unit("delta", delta)
  grid = check_thresholds(thresholds)
  matrix = check_losses(losses, grid.size)
  means = matrix.mean(axis=0)  # [k]
  certified = means <= delta
  chosen = _smallest_certified(certified)
  return CalibrationResult(
      threshold=NEVER_EXIT if chosen is None else float(grid[chosen]), chosen_index=chosen,
      rule="naive", method="", correction="", delta=delta, epsilon=float("nan"),
      num_examples=matrix.shape[0],
      table=_table(grid, means, np.full_like(means, np.nan), certified))


def _smallest_certified(certified: np.ndarray) -> Optional[int]:
  """Index of the last (smallest) certified threshold, or None."""
  indices = np.flatnonzero(certified)
  return int(indices[-1]) if indices.size else None


def calibrate(losses, thresholds, delta: float, epsilon: float,
              rule: str) -> CalibrationResult:
  """One entry for reports and studies: rule 'naive' or 'ltt_<method>' (e.g.
  'ltt_hoeffding_bentkus'), optionally suffixed '_bonferroni'."""
  return calibrate_many(losses, thresholds, delta, epsilon, [rule])[0]


def calibrate_many(losses, thresholds, delta: float, epsilon: float,
                   rules: Sequence[str]) -> List[CalibrationResult]:
  """`calibrate` for several rules on the same losses."""
  if isinstance(rules, str):
    raise ValueError(f"rules must be a list of rule names, got the string {rules!r}")
  _check_open_unit("epsilon", epsilon)
  results = []
  for rule in rules:
    if rule == "naive":
      results.append(naive_threshold(losses, thresholds, delta))
      continue
    method, correction = parse_rule(rule)
    results.append(learn_then_test(losses, thresholds, delta, epsilon, method, correction))
  return results


def rule_names() -> List[str]:
  """Every rule name `calibrate` accepts."""
  names = ["naive"]
  for method in P_VALUE_METHODS:
    names += [f"ltt_{method}", f"ltt_{method}_bonferroni"]
  return names


def parse_rule(rule: str):
  """'ltt_<method>[_bonferroni]' -> (method, correction)."""
  if rule not in rule_names() or rule == "naive":
    raise ValueError(f"rule={rule!r} is not a calibration rule; allowed: "
                     f"{', '.join(rule_names())}")
  body = rule[len("ltt_"):]
  if body.endswith("_bonferroni"):
    return body[:-len("_bonferroni")], "bonferroni"
  return body, "fixed_sequence"
