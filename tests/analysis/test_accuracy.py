"""Study 4, accuracy and calibration (calm_jax.analysis.accuracy), on hand-made arrays
with known answers."""

import numpy as np
import pytest

from calm_jax.analysis import accuracy


def test_expected_calibration_error_by_hand():
  # One token per bin: |1 - .95| + |0 - .85| + |1 - .15| + |0 - .05| over 4 tokens.
  assert accuracy.expected_calibration_error([0.95, 0.85, 0.15, 0.05], [1, 0, 1, 0],
                                             10) == pytest.approx(0.45)
  # Confidence 1.0 falls in the last bin; two tokens share bin 5 (accuracy 1, confidence .5).
  assert accuracy.expected_calibration_error([1.0, 0.5, 0.5, 0.25], [1, 1, 1, 1],
                                             10) == pytest.approx(1.75 / 4)
  assert accuracy.expected_calibration_error([0.5, 0.5], [1, 0], 2) == 0.0
  with pytest.raises(ValueError, match="num_bins must be an integer >= 1, got 0"):
    accuracy.expected_calibration_error([0.5], [1], 0)


def test_accuracy_confidence_gap_and_traced_measure():
  top1 = np.array([[[5, 0, 7, 0, 9]], [[5, 6, 7, 8, 9]]])  # [L=2, B=1, T=5]
  prob = np.array([[[0.95, 0.85, 0.15, 0.05, 0.5]], [[1.0, 0.5, 0.5, 0.25, 0.5]]])
  targets = np.array([[5, 6, 7, 8, 0]])
  mask = np.array([[True, True, True, True, False]])  # the last position is padding
  trace = np.array([[[np.nan] * 5], [[0.2, 0.4, np.nan, 0.6, 9.0]]])
  result = accuracy.accuracy_study(top1, prob, targets, mask, 10, trace, "softmax_diff")
  assert result.num_tokens == 4
  assert result.accuracy == [0.5, 1.0]
  np.testing.assert_allclose(result.confidence, [0.5, 0.5625])
  np.testing.assert_allclose(result.overconfidence, [0.0, -0.4375], atol=1e-12)
  np.testing.assert_allclose(result.calibration_error, [0.45, 1.75 / 4])
  assert result.measure == "softmax_diff"
  assert result.measure_confidence[0] is None  # not computed at layer 1
  assert result.measure_confidence[1] == pytest.approx(0.4)  # NaN skipped, padding ignored
  plain = accuracy.accuracy_study(top1, prob, targets, mask, 10)
  assert plain.measure is None and plain.measure_confidence is None
