"""A two-component Beta mixture over confidences in (0, 1), for FREE's adaptive threshold.

Component 0 holds the tokens the deep layers disagreed with, component 1 those they agreed
with (after a fit, component 1 is the one with the larger mean). With the verdicts known
(`labels`), the fit is the maximum-likelihood Beta of each group and the share of agreed
tokens; without them, EM alternates posterior responsibilities with weighted maximum-
likelihood Betas. The threshold is the smallest confidence from which on the posterior
probability of agreement stays at or above a target.

NumPy and SciPy only.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import numpy as np
from scipy import optimize, special

EPSILON = 1e-6  # confidences are clipped into [EPSILON, 1 - EPSILON]


@dataclasses.dataclass(frozen=True)
class BetaMixture:
  """weights[k] * Beta(alphas[k], betas[k]) for k = 0 (disagree), 1 (agree)."""

  weights: Tuple[float, float]
  alphas: Tuple[float, float]
  betas: Tuple[float, float]

  def log_densities(self, x) -> np.ndarray:
    """[n] confidences -> [n, 2] log(weight_k * Beta_k pdf)."""
    x = np.clip(np.asarray(x, np.float64), EPSILON, 1 - EPSILON)[:, None]
    a, b, w = (np.asarray(v)[None] for v in (self.alphas, self.betas, self.weights))
    return (np.log(w) + (a - 1) * np.log(x) + (b - 1) * np.log1p(-x)
            - special.betaln(a, b))

  def posterior_agree(self, x) -> np.ndarray:
    """[n] confidences -> [n] P(component 1 | x)."""
    log_d = self.log_densities(x)
    return np.exp(log_d[:, 1] - np.logaddexp(log_d[:, 0], log_d[:, 1]))

  def threshold(self, target: float, grid_size: int = 1001) -> float:
    """The smallest c on a grid of [0, 1] with P(agree | x) >= target for every grid x >=
    c; 1.0 (never exit) when even x = 1 falls short."""
    grid = np.linspace(0.0, 1.0, grid_size)
    falls_short = np.flatnonzero(self.posterior_agree(grid) < target)
    if falls_short.size == 0:
      return 0.0
    if falls_short[-1] == grid_size - 1:
      return 1.0
    return float(grid[falls_short[-1] + 1])


def _weighted_beta(x: np.ndarray, weights: np.ndarray) -> Tuple[float, float]:
  """Maximum-likelihood Beta(a, b) of x [n] under sample weights [n] (moments start it)."""
  total = weights.sum()
  mean = float((weights * x).sum() / total)
  var = float((weights * (x - mean) ** 2).sum() / total)
  common = max(mean * (1 - mean) / max(var, 1e-12) - 1, 1e-2)
  start = np.log([mean * common, (1 - mean) * common])
  mean_log_x = (weights * np.log(x)).sum() / total
  mean_log_1mx = (weights * np.log1p(-x)).sum() / total

  def negative(log_ab):  # mean negative log-likelihood and its gradient in log a, log b
    a, b = np.exp(log_ab)
    value = special.betaln(a, b) - (a - 1) * mean_log_x - (b - 1) * mean_log_1mx
    digamma_ab = special.digamma(a + b)
    grad = np.array([(special.digamma(a) - digamma_ab - mean_log_x) * a,
                     (special.digamma(b) - digamma_ab - mean_log_1mx) * b])
    return value, grad
  result = optimize.minimize(negative, start, jac=True, method="L-BFGS-B",
                             bounds=[(-7.0, 7.0)] * 2)
  a, b = np.exp(result.x)
  return float(a), float(b)


def _mixture(x: np.ndarray, responsibility: np.ndarray) -> BetaMixture:
  """The M-step: responsibility [n] of component 1 -> weights and weighted MLE Betas."""
  share = float(np.clip(responsibility.mean(), EPSILON, 1 - EPSILON))
  low = _weighted_beta(x, 1 - responsibility + EPSILON)
  high = _weighted_beta(x, responsibility + EPSILON)
  mixture = BetaMixture(weights=(1 - share, share), alphas=(low[0], high[0]),
                        betas=(low[1], high[1]))
  mean = lambda k: mixture.alphas[k] / (mixture.alphas[k] + mixture.betas[k])
  if mean(0) > mean(1):  # component 1 is the confident one
    mixture = BetaMixture(weights=mixture.weights[::-1], alphas=mixture.alphas[::-1],
                          betas=mixture.betas[::-1])
  return mixture


def fit_beta_mixture(confidences, labels: Optional[np.ndarray] = None, *,
                     iterations: int = 200, tolerance: float = 1e-7) -> BetaMixture:
  """Fits the mixture to confidences [n] in [0, 1] (clipped into the open interval).
  `labels` [n] (1 agreed, 0 not) make it a supervised maximum-likelihood fit; without them
  EM runs from a split at the median until the log-likelihood gains less than `tolerance`
  per sample."""
  x = np.clip(np.asarray(confidences, np.float64).ravel(), EPSILON, 1 - EPSILON)
  if x.size < 4:
    raise ValueError(f"a Beta mixture needs at least 4 confidences, got {x.size}")
  if labels is not None:
    labels = np.asarray(labels).ravel()
    if labels.shape != x.shape or not np.isin(labels, (0, 1)).all():
      raise ValueError(f"labels must be {x.size} values of 0 or 1, got shape {labels.shape}")
    return _mixture(x, labels.astype(np.float64))
  responsibility = (x > np.median(x)).astype(np.float64)
  previous = -np.inf
  for _ in range(iterations):
    mixture = _mixture(x, responsibility)
    log_d = mixture.log_densities(x)
    log_total = np.logaddexp(log_d[:, 0], log_d[:, 1])
    responsibility = np.exp(log_d[:, 1] - log_total)
    likelihood = float(log_total.mean())
    if likelihood - previous < tolerance:
      break
    previous = likelihood
  return mixture
