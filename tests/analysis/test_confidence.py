"""Study 2, confidence in the final token (calm_jax.analysis.confidence), on hand-made
arrays with known answers."""

import numpy as np
import pytest

from calm_jax.analysis import confidence


def test_confidence_means_spread_and_monotone_fractions(layered):
  rows = [[0.2, 0.5, 0.9],  # rises throughout
          [0.6, 0.3, 0.8],  # dips at layer 2, rises after layer 1
          [0.3, 0.3, 0.2],  # falls at the end
          [0.4, 0.4, 0.4]]  # flat: never falls, so monotone
  final_prob, mask = layered(rows)
  result = confidence.confidence_study(final_prob, mask, after_layers=[0, 1])
  np.testing.assert_allclose(result.mean, [0.375, 0.375, 0.575])
  np.testing.assert_allclose(result.std, np.std(rows, axis=0))
  np.testing.assert_allclose(result.std[0], np.sqrt(0.0875 / 4))
  assert result.after_layers == [0, 1]
  np.testing.assert_allclose(result.monotone_fraction, [0.5, 0.75])
  with pytest.raises(ValueError, match="after-layer 2 is not allowed for a 3-layer decoder"):
    confidence.confidence_study(final_prob, mask, after_layers=[2])
