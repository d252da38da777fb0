"""Study 1, top-1 stability (calm_jax.analysis.stability), on hand-made arrays with known
answers."""

import numpy as np
import pytest

from calm_jax.analysis import stability


def test_stability_settle_and_first_agreement_layers():
  # Tokens: always right; agrees at 2, leaves, returns at 4; agrees from 3 on.
  top1 = np.array([[5, 5, 5, 5], [1, 5, 2, 5], [1, 2, 3, 3]]).T  # [L=4, N=3]
  assert stability.settle_layers(top1).tolist() == [1, 4, 3]
  assert stability.first_agreement_layers(top1).tolist() == [1, 2, 3]


def test_stability_study_fractions_ignore_masked_tokens(layered):
  rows = [[5, 5, 5, 5], [1, 5, 2, 5], [1, 2, 3, 3], [7, 8, 9, 0]]
  top1, mask = layered(rows)
  mask[0, 3] = False  # the last token does not count
  result = stability.stability_study(top1, mask)
  assert result.num_tokens == 3 and result.num_layers == 4
  np.testing.assert_allclose(result.stable_fraction, [1 / 3, 1 / 3, 2 / 3, 1.0])
  np.testing.assert_allclose(result.agreeing_fraction, [1 / 3, 2 / 3, 1.0, 1.0])
  assert result.mean_settle_layer == pytest.approx(8 / 3)
  assert result.mean_first_agreement_layer == pytest.approx(2.0)
  assert result.changed_after_agreeing_fraction == pytest.approx(1 / 3)
