"""The analysis studies on hand-made arrays with known answers (no model involved)."""

import os
import subprocess
import sys

import numpy as np
import pytest

from calm_jax.analysis import (accuracy, confidence, layerwise, oracle, plots, rank,
                               saturation, stability)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def layered(rows):
  """Per-token layer values [N][L] -> [L, 1, N] with an all-true [1, N] mask."""
  values = np.asarray(rows).T[:, None, :]
  return values, np.ones(values.shape[1:], bool)


# ----------------------------------------------------------------------------- layerwise

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


# ----------------------------------------------------------------------------- study 1

def test_stability_settle_and_first_agreement_layers():
  # Tokens: always right; agrees at 2, leaves, returns at 4; agrees from 3 on.
  top1 = np.array([[5, 5, 5, 5], [1, 5, 2, 5], [1, 2, 3, 3]]).T  # [L=4, N=3]
  assert stability.settle_layers(top1).tolist() == [1, 4, 3]
  assert stability.first_agreement_layers(top1).tolist() == [1, 2, 3]


def test_stability_study_fractions_ignore_masked_tokens():
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


# ----------------------------------------------------------------------------- study 2

def test_confidence_means_spread_and_monotone_fractions():
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


# ----------------------------------------------------------------------------- study 3

def test_rank_percentiles_and_cutoff_fractions():
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


# ----------------------------------------------------------------------------- study 4

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


# ----------------------------------------------------------------------------- study 5

def saturation_example():
  """Four sequences of up to two tokens over three layers: [L=3, B=4, T=2] and the mask."""
  tokens = [[[0.9, 0.95, 1.0], [0.7, 0.85, 1.0]],  # score .85 (most saturated)
            [[0.5, 0.6, 1.0], [0.99, 0.99, 1.0]],  # score .55; its second token is padding
            [[0.2, 0.1, 1.0], [0.3, 0.5, 1.0]],  # score .275 (least saturated)
            [[0.6, 0.9, 1.0], [0.8, 0.7, 1.0]]]  # score .75
  mask = np.array([[True, True], [True, False], [True, True], [True, True]])
  return np.asarray(tokens).transpose(2, 0, 1), mask


def test_saturation_layers_count_the_threshold_itself():
  similarity = np.array([[0.8, 0.5, 0.1], [0.5, 0.9, 0.2], [1.0, 1.0, 1.0]])  # [L=3, N=3]
  assert saturation.first_saturated_layers(similarity, 0.8).tolist() == [1, 2, 3]
  assert saturation.saturated_layer_counts(similarity, 0.8).tolist() == [2, 2, 1]


def test_saturation_groups_by_hand():
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
def test_saturation_rejects_bad_settings(kwargs, message):
  similarity, mask = saturation_example()
  settings = dict(threshold=0.8, num_easy=1, num_difficult=2, after_layers=[0])
  with pytest.raises(ValueError, match=message):
    saturation.saturation_study(similarity, mask, **{**settings, **kwargs})


# ----------------------------------------------------------------------------- study 6

def decodes():
  full = oracle.DecodedOutputs("full", np.array([[10, 11, 1, 0], [12, 1, 0, 0]]),
                               np.array([[4, 4, 4, 0], [4, 4, 0, 0]]), ["ab", "c"])
  copy = oracle.DecodedOutputs("oracle_copy_state", np.array([[10, 13, 1, 0], [12, 1, 0, 0]]),
                               np.array([[1, 2, 3, 0], [2, 2, 0, 0]]), ["ad", "c"])
  true_cache = oracle.DecodedOutputs("oracle_full_compute", full.tokens,
                                     np.array([[1, 1, 4, 0], [3, 1, 0, 0]]), ["ab", "c"])
  return full, copy, true_cache


def test_oracle_rows_by_hand():
  full, copy, true_cache = decodes()
  result = oracle.oracle_study(full, [copy, true_cache], ["ab", "x"], num_layers=4,
                               similarity="exact_match")
  assert [r.name for r in result.rows] == ["full", "oracle_copy_state", "oracle_full_compute"]
  by_name = {r.name: r for r in result.rows}
  assert by_name["full"].mean_exit_layer == 4.0 and by_name["full"].layer_speedup == 1.0
  assert by_name["full"].token_agreement == 1.0 and by_name["full"].reference_quality == 0.5
  row = by_name["oracle_copy_state"]
  assert row.num_tokens == 5 and row.mean_exit_layer == 2.0 and row.layer_speedup == 2.0
  assert row.token_agreement == pytest.approx((2 / 3 + 1) / 2)
  assert row.same_as_full_fraction == 0.5 and row.reference_quality == 0.0
  row = by_name["oracle_full_compute"]
  assert row.mean_exit_layer == 2.0 and row.same_as_full_fraction == 1.0
  assert row.reference_quality == 0.5


def test_oracle_rejects_impossible_exit_layers_and_mismatched_references():
  full, copy, _ = decodes()
  deep = oracle.DecodedOutputs(copy.name, copy.tokens, copy.exit_layers + 3, copy.texts)
  with pytest.raises(ValueError, match="exit layers must lie in 0..4, found 3..6"):
    oracle.oracle_study(full, [deep], ["ab", "x"], num_layers=4, similarity="exact_match")
  with pytest.raises(ValueError, match="1 references for 2 examples"):
    oracle.oracle_study(full, [copy], ["ab"], num_layers=4, similarity="exact_match")


# ----------------------------------------------------------------------------- plots

def two_models(study_result):
  return {name: {s: study_result for s in layerwise.SETTINGS} for name in ("plain", "calm")}


def study_figures():
  top1, mask = layered([[5, 5, 5], [1, 5, 5], [1, 2, 3]])
  prob, _ = layered([[0.2, 0.5, 0.9], [0.6, 0.3, 0.8], [0.3, 0.3, 0.2]])
  similarity, sat_mask = saturation_example()
  settings = list(layerwise.SETTINGS)
  full, copy, true_cache = decodes()
  oracle_result = oracle.oracle_study(full, [copy, true_cache], ["ab", "x"], num_layers=4,
                                      similarity="exact_match")
  return {
      "stability": stability.figure(two_models(stability.stability_study(top1, mask)),
                                    settings),
      "confidence": confidence.figure(two_models(confidence.confidence_study(
          prob, mask, [0, 1])), settings),
      "rank": rank.figure(two_models(rank.rank_study(top1, mask, [1, 2])), settings),
      "accuracy": accuracy.figure(two_models(accuracy.accuracy_study(
          top1, prob, top1[-1], mask, 5, prob, "softmax_max")), settings),
      "saturation": saturation.figure(two_models(saturation.saturation_study(
          similarity, sat_mask, threshold=0.8, num_easy=1, num_difficult=1,
          after_layers=[0])), settings),
      "oracle": oracle.figure({"plain": oracle_result, "calm": oracle_result}),
  }


def test_every_panel_has_a_title_axis_labels_and_a_legend_naming_each_model(tmp_path):
  for study, figure in study_figures().items():
    assert figure.get_suptitle(), study
    for axis in figure.get_axes():
      assert axis.get_title() and axis.get_xlabel() and axis.get_ylabel(), study
      labels = [t.get_text() for t in axis.get_legend().get_texts()]
      if study == "saturation":  # one model per row: the title names it
        assert any(name in axis.get_title() for name in ("plain", "calm"))
        assert any(label.startswith("easy") for label in labels)
      elif study == "oracle":  # models on the x axis, one bar per decode in the legend
        assert [t.get_text() for t in axis.get_xticklabels()] == ["plain", "calm"]
        assert labels == list(oracle.DECODES.values())
      else:
        assert any(label.startswith("plain") for label in labels), (study, labels)
        assert any(label.startswith("calm") for label in labels), (study, labels)
    path = tmp_path / f"{study}.png"
    plots.save_figure(figure, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert sorted(os.listdir(tmp_path)) == sorted(f"{s}.png" for s in study_figures())


def test_panel_titles_say_which_inputs_they_show():
  figure = study_figures()["stability"]
  titles = [axis.get_title() for axis in figure.get_axes()]
  assert titles[0].startswith("Teacher-forced") and "reference" in titles[0]
  assert titles[1].startswith("Free-running") and "own greedy outputs" in titles[1]


def test_study_modules_import_no_jax():
  modules = ", ".join(f"calm_jax.analysis.{m}" for m in (
      "layerwise", "stability", "confidence", "rank", "accuracy", "saturation", "oracle",
      "plots"))
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO_ROOT, env.get("PYTHONPATH")]))
  code = f"import sys, {modules}; assert 'jax' not in sys.modules, 'jax was imported'"
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env,
                        capture_output=True, text=True, timeout=60, check=False)
  assert proc.returncode == 0, proc.stderr
