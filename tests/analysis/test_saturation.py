"""Study 5, state saturation (calm_jax.analysis.saturation), on hand-made arrays with
known answers."""

import numpy as np
import pytest

from calm_jax.analysis import saturation


def test_saturation_layers_count_the_threshold_itself():
  similarity = np.array([[0.8, 0.5, 0.1], [0.5, 0.9, 0.2], [1.0, 1.0, 1.0]])  # [L=3, N=3]
  assert saturation.first_saturated_layers(similarity, 0.8).tolist() == [1, 2, 3]
  assert saturation.saturated_layer_counts(similarity, 0.8).tolist() == [2, 2, 1]


def test_saturation_groups_by_hand(saturation_example):
  similarity, mask = saturation_example()
  np.testing.assert_allclose(saturation.sequence_scores(similarity, mask),
                             [0.85, 0.55, 0.275, 0.75])
  result = saturation.saturation_study(similarity, mask, threshold=0.8, num_easy=1,
                                       num_difficult=2, after_layers=[0, 1])
  assert result.num_tokens == 7 and result.num_layers == 3
  np.testing.assert_allclose(result.mean_similarity, [4.0 / 7, 4.6 / 7, 1.0])
  easy, difficult = result.easy, result.difficult
  assert easy.sequences == [0] and difficult.sequences == [2, 1]
  np.testing.assert_allclose(easy.mean_similarity, [0.85])
  np.testing.assert_allclose(difficult.mean_similarity, [0.275, 0.55])
  assert easy.mean_first_saturated_layer == pytest.approx(1.5)
  assert easy.mean_saturated_layers == pytest.approx(2.5)
  assert easy.mean_length == 2.0 and difficult.mean_length == 1.5
  assert easy.rising_fraction == [1.0, 1.0]
  assert difficult.mean_first_saturated_layer == 3.0
  assert difficult.mean_saturated_layers == 1.0
  np.testing.assert_allclose(difficult.rising_fraction, [2 / 3, 1.0])
  np.testing.assert_allclose(easy.curves, [[0.8, 0.9, 1.0]])
  np.testing.assert_allclose(difficult.curves, [[0.25, 0.3, 1.0], [0.5, 0.6, 1.0]])


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_easy=3, num_difficult=2), "num_easy \\+ num_difficult = 5 exceeds the 4"),
    (dict(num_easy=0), "num_easy must be an integer >= 1, got 0"),
    (dict(threshold=0.0), r"saturation threshold must lie in \(0, 1\], got 0.0"),
    (dict(after_layers=[2]), "after-layer 2 is not allowed for a 3-layer decoder"),
])
def test_saturation_rejects_bad_settings(kwargs, message, saturation_example):
  similarity, mask = saturation_example()
  settings = dict(threshold=0.8, num_easy=1, num_difficult=2, after_layers=[0])
  with pytest.raises(ValueError, match=message):
    saturation.saturation_study(similarity, mask, **{**settings, **kwargs})
