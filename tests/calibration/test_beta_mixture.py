"""The two-component Beta mixture (calm_jax.calibration.beta_mixture): fits recover known
parameters from samples, with and without the verdicts; the threshold from the posterior;
bad input."""

import numpy as np
import pytest
from scipy import stats

from calm_jax.calibration.beta_mixture import BetaMixture, fit_beta_mixture

TRUE = BetaMixture(weights=(0.3, 0.7), alphas=(2.0, 9.0), betas=(6.0, 2.0))


def _samples(count=20000, seed=0):
  rng = np.random.default_rng(seed)
  labels = (rng.uniform(size=count) < TRUE.weights[1]).astype(int)
  x = np.where(labels == 1, rng.beta(TRUE.alphas[1], TRUE.betas[1], count),
               rng.beta(TRUE.alphas[0], TRUE.betas[0], count))
  return x, labels


@pytest.mark.parametrize("supervised", [True, False], ids=["labels", "em"])
def test_fit_recovers_known_parameters(supervised):
  x, labels = _samples()
  fitted = fit_beta_mixture(x, labels if supervised else None)
  tolerance = 0.05 if supervised else 0.12
  np.testing.assert_allclose(fitted.weights, TRUE.weights, atol=0.03)
  np.testing.assert_allclose(fitted.alphas, TRUE.alphas, rtol=tolerance)
  np.testing.assert_allclose(fitted.betas, TRUE.betas, rtol=tolerance)


def test_threshold_is_where_the_posterior_of_agreement_stays_above_the_target():
  grid = np.linspace(0, 1, 1001)
  clipped = np.clip(grid, 1e-6, 1 - 1e-6)
  densities = [w * stats.beta.pdf(clipped, a, b)
               for w, a, b in zip(TRUE.weights, TRUE.alphas, TRUE.betas)]
  posterior = densities[1] / (densities[0] + densities[1])
  np.testing.assert_allclose(TRUE.posterior_agree(grid), posterior, rtol=1e-6)
  for target in (0.5, 0.9, 0.99):
    threshold = TRUE.threshold(target)
    above = grid >= threshold - 1e-12
    assert np.all(posterior[above] >= target) and posterior[~above][-1] < target
  assert BetaMixture((0.5, 0.5), (1.0, 1.0), (1.0, 1.0)).threshold(0.9) == 1.0  # never


def test_bad_input_is_refused():
  with pytest.raises(ValueError, match="at least 4 confidences, got 2"):
    fit_beta_mixture([0.2, 0.9])
  with pytest.raises(ValueError, match="labels must be 5 values of 0 or 1"):
    fit_beta_mixture(np.linspace(0.1, 0.9, 5), np.array([0, 1, 2, 1, 0]))
