"""Study 3, the final token's rank (calm_jax.analysis.rank), on hand-made arrays with
known answers."""

import numpy as np
import pytest

from calm_jax.analysis import rank


def test_rank_percentiles_and_cutoff_fractions(layered):
  final_rank, mask = layered([[1, 1], [2, 1], [3, 1], [4, 1], [5, 1]])
  result = rank.rank_study(final_rank, mask, cutoffs=[1, 3])
  expected = {"p5": [1.2, 1.0], "p25": [2.0, 1.0], "p50": [3.0, 1.0], "p75": [4.0, 1.0],
              "p95": [4.8, 1.0]}
  assert list(result.percentiles) == list(expected)
  for key, values in expected.items():
    np.testing.assert_allclose(result.percentiles[key], values, err_msg=key)
  assert result.mean == [3.0, 1.0] and result.max == [5, 1]
  assert result.within_cutoff == [[0.2, 1.0], [0.6, 1.0]]


@pytest.mark.parametrize("cutoffs, message", [([0], "rank cutoff 0 is not allowed"),
                                              ([5, 5], "strictly increasing")])
def test_rank_cutoffs_are_checked(cutoffs, message):
  with pytest.raises(ValueError, match=message):
    rank.check_cutoffs(cutoffs)
