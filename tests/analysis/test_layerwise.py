"""The layer-wise token statistics (calm_jax.analysis.layerwise) on hand-made arrays
with known answers."""

import numpy as np
import pytest

from calm_jax.analysis import layerwise


def test_layer_statistics_give_probabilities_and_ranks():
  logits = np.log([[[0.5, 0.25, 0.25], [0.1, 0.2, 0.7]]])  # [1, 2, 3]
  stats = layerwise.layer_token_statistics(logits, np.array([[2, 0]]))
  np.testing.assert_array_equal(stats.top1, [[0, 2]])
  np.testing.assert_allclose(stats.top1_prob, [[0.5, 0.7]])
  np.testing.assert_allclose(stats.final_prob, [[0.25, 0.1]])
  # 0.25 is beaten only by 0.5 (the tie with the other 0.25 does not count); 0.1 by both.
  np.testing.assert_array_equal(stats.final_rank, [[2, 3]])


def test_a_token_tied_with_the_maximum_has_rank_one():
  stats = layerwise.layer_token_statistics(np.array([[[1.0, 1.0, 0.0]]]), np.array([[1]]))
  assert stats.top1.tolist() == [[0]] and stats.final_rank.tolist() == [[1]]
  np.testing.assert_allclose(stats.final_prob, stats.top1_prob)


def test_cosine_to_final_layer():
  states = np.array([[[[1.0, 1.0], [0.0, -3.0], [0.0, 0.0]]],
                     [[[1.0, 0.0], [0.0, 2.0], [5.0, 0.0]]]])  # [L=2, B=1, T=3, d=2]
  np.testing.assert_allclose(layerwise.cosine_to_final(states),
                             [[[2 ** -0.5, -1.0, 0.0]], [[1.0, 1.0, 1.0]]])


def test_tokens_of_drops_masked_positions_and_refuses_an_empty_mask():
  values = np.arange(12).reshape(2, 2, 3)
  mask = np.array([[True, False, True], [False, False, True]])
  np.testing.assert_array_equal(layerwise.tokens_of(values, mask), [[0, 2, 5], [6, 8, 11]])
  with pytest.raises(ValueError, match="selects no token"):
    layerwise.tokens_of(values, np.zeros((2, 3), bool))


def test_after_layers_must_leave_two_layers_to_compare():
  assert layerwise.check_after_layers([0, 2], 4) == [0, 2]
  with pytest.raises(ValueError, match="after-layer 3 is not allowed for a 4-layer decoder; "
                                       r"allowed: integers 0..2"):
    layerwise.check_after_layers([0, 3], 4)
  with pytest.raises(ValueError, match="after-layer -1"):
    layerwise.check_after_layers([-1], 4)


def test_rises_after_strict_and_not():
  values = np.array([[0.1, 0.5], [0.2, 0.5], [0.3, 0.6]])  # [L=3, N=2]
  assert layerwise.rises_after(values, 0, strict=True).tolist() == [True, False]
  assert layerwise.rises_after(values, 0, strict=False).tolist() == [True, True]
  assert layerwise.rises_after(values, 1, strict=True).tolist() == [True, True]


def test_layerwise_tokens_check_shapes():
  good = dict(setting="teacher_forced", top1=np.zeros((2, 1, 3)), top1_prob=np.zeros((2, 1, 3)),
              final_prob=np.zeros((2, 1, 3)), final_rank=np.ones((2, 1, 3)),
              similarity=np.zeros((2, 1, 3)), targets=np.zeros((1, 3)),
              mask=np.ones((1, 3), bool))
  joined = layerwise.concatenate([layerwise.LayerwiseTokens(**good)] * 2)
  assert joined.top1.shape == (2, 2, 3) and joined.mask.shape == (2, 3)
  with pytest.raises(ValueError, match=r"similarity has shape \(2, 1, 4\)"):
    layerwise.LayerwiseTokens(**{**good, "similarity": np.zeros((2, 1, 4))})
  with pytest.raises(ValueError, match="setting='greedy'"):
    layerwise.LayerwiseTokens(**{**good, "setting": "greedy"})
