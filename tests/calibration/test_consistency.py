"""Calibration losses from decoded outputs: textual and risk consistency against direct
calls of the metric functions, hand-computed cells, dispatch and input checks."""


import numpy as np
import pytest

from calm_jax.calibration import consistency
from calm_jax.calibration.consistency import (consistency_losses, outputs_by_threshold,
                                              risk_consistency_losses,
                                              textual_consistency_losses)
from calm_jax.data import metrics


# n = 3 full-model outputs and k = 4 thresholds of early outputs ([k][n]); some early
# outputs equal the full output, some repeat across thresholds, none is degenerate.
FULL = [
    "the cat sat on the mat",
    "Paris is the capital of France.",
    "the quick brown fox jumps over the lazy dog",
]
EARLY = [
    ["a cat sat on a mat", "Paris is a city", "the quick brown dog"],
    ["the cat sat", "Paris is the capital of France.", "a quick brown fox jumps over a dog"],
    ["the cat sat on the mat", "Paris is a city", "the quick brown dog"],
    ["dogs were running", "Paris is the capital of France.",
     "the quick brown fox jumps over the lazy dog"],
]
NAMES = ("rouge_l", "token_f1", "bleu", "chrf", "exact_match")


def _expected_textual(early_outputs, full_outputs, fn):
  n, k = len(full_outputs), len(early_outputs)
  out = np.empty((n, k))
  for i in range(n):
    for j in range(k):
      out[i, j] = 1.0 - fn(early_outputs[j][i], full_outputs[i])
  return out


# --- textual consistency ----------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_textual_matches_direct_metric(name):
  fn = metrics.get_text_similarity(name)
  losses = textual_consistency_losses(EARLY, FULL, name)
  expected = _expected_textual(EARLY, FULL, fn)
  assert losses.shape == (3, 4)
  assert losses.dtype == np.float64
  np.testing.assert_array_equal(losses, expected)
  # The grid is informative: some cells are 0 (identical outputs), some are not.
  assert (losses == 0).any() and (losses > 0).any()
  assert ((losses >= 0) & (losses <= 1)).all()


@pytest.mark.parametrize("name", NAMES)
def test_textual_identical_outputs_are_exactly_zero(name):
  losses = textual_consistency_losses([FULL, list(FULL)], FULL, name)
  np.testing.assert_array_equal(losses, np.zeros((3, 2)))
  # The cells with identical outputs in the mixed grid are exactly 0 as well.
  losses = textual_consistency_losses(EARLY, FULL, name)
  for i, full in enumerate(FULL):
    for j, column in enumerate(EARLY):
      if column[i] == full:
        assert losses[i, j] == 0.0


def test_textual_hand_computed_token_f1():
  # "cat sat" vs "cat sat on mat": P = 1, R = 1/2, F1 = 2/3 -> loss 1/3.
  # "cat on mat" vs "cat sat on mat": P = 1, R = 3/4, F1 = 6/7 -> loss 1/7.
  # "dog" vs "cat sat on mat": no overlap -> loss 1.
  losses = textual_consistency_losses([["the cat sat"], ["a cat on a mat"], ["dog"]],
                                      ["the cat sat on the mat"], "token_f1")
  np.testing.assert_allclose(losses, [[1 / 3, 1 / 7, 1.0]], rtol=0, atol=1e-12)


def test_textual_token_agreement():
  full = [[1, 2, 3, 4], [5, 6], []]
  early = [
      [[1, 2, 3, 4], [5, 6], []],
      [[1, 2, 9, 4], [5], [7]],
      [[1, 2], [6, 5], []],
      [(1, 2, 3, 4, 5), np.array([5, 6]), [7, 8]],
  ]
  losses = textual_consistency_losses(early, full, "token_agreement")
  expected = _expected_textual(early, full, metrics.token_agreement)
  np.testing.assert_array_equal(losses, expected)
  np.testing.assert_allclose(losses, [
      [0.0, 0.25, 0.5, 0.2],
      [0.0, 0.5, 1.0, 0.0],
      [0.0, 1.0, 0.0, 1.0],
  ], rtol=0, atol=1e-12)


def test_textual_custom_callable():
  calls = []

  def overlap(prediction, reference):
    # Asymmetric on purpose: the share of the prediction's characters found in the
    # reference, so swapping the arguments changes the result.
    calls.append((prediction, reference))
    return sum(ch in reference for ch in prediction) / max(len(prediction), 1)

  losses = textual_consistency_losses(EARLY, FULL, overlap)
  calls_made = list(calls)
  expected = _expected_textual(EARLY, FULL, overlap)
  np.testing.assert_array_equal(losses, expected)
  swapped = _expected_textual(EARLY, FULL, lambda p, r: overlap(r, p))
  assert not np.array_equal(losses, swapped)
  # Called as (early, full), and only for outputs that differ from the full one.
  for prediction, reference in calls_made:
    assert reference in FULL
    assert prediction != reference
    assert any(prediction == column[FULL.index(reference)] for column in EARLY)


def test_textual_identical_skips_the_similarity():
  # An early output identical to the full one has loss 0 exactly, whatever the function.
  losses = textual_consistency_losses([["same", "other"]], ["same", "full"],
                                      lambda p, r: 0.25)
  np.testing.assert_array_equal(losses, [[0.0], [0.75]])
  # Also for texts a metric scores 0 against themselves (ROUGE of two empty strings).
  assert metrics.rouge_l("", "") == 0.0
  np.testing.assert_array_equal(textual_consistency_losses([[""]], [""], "rouge_l"), [[0.0]])


@pytest.mark.parametrize("name", NAMES)
def test_textual_repeated_outputs_give_identical_losses(name):
  column = ["a cat on a mat", "Paris is a city", "the quick brown dog"]
  losses = textual_consistency_losses([column, list(column), list(column)], FULL, name)
  np.testing.assert_array_equal(losses[:, 0], losses[:, 1])
  np.testing.assert_array_equal(losses[:, 0], losses[:, 2])
  np.testing.assert_array_equal(losses[:, 0],
                                textual_consistency_losses([column], FULL, name)[:, 0])


@pytest.mark.parametrize("name", NAMES)
def test_textual_values_in_unit_interval(name):
  texts = ["", "a", "the cat", "cat the", "x y z", "The Cat!", "hello world again",
           "the quick brown fox jumps over the lazy dog"]
  early = [[texts[(i + j) % len(texts)] for i in range(len(texts))] for j in range(5)]
  losses = textual_consistency_losses(early, texts, name)
  assert losses.shape == (len(texts), 5)
  assert ((losses >= 0) & (losses <= 1)).all()


def test_textual_default_is_rouge_l():
  np.testing.assert_array_equal(textual_consistency_losses(EARLY, FULL),
                                textual_consistency_losses(EARLY, FULL, "rouge_l"))


# --- risk consistency -------------------------------------------------------------------


def _expected_risk(early_outputs, full_outputs, references, fn):
  n, k = len(full_outputs), len(early_outputs)
  out = np.empty((n, k))
  for i in range(n):
    for j in range(k):
      out[i, j] = max(0.0, fn(full_outputs[i], references[i])
                      - fn(early_outputs[j][i], references[i]))
  return out


REFS = [
    "a cat sat on the mat",
    ["Paris is the capital of France", "The French capital is Paris."],
    "the quick brown fox jumped over the lazy dog",
]


@pytest.mark.parametrize("name", NAMES)
def test_risk_matches_direct_metric(name):
  fn = metrics.get_text_similarity(name)
  losses = risk_consistency_losses(EARLY, FULL, REFS, name)
  assert losses.shape == (3, 4)
  np.testing.assert_array_equal(losses, _expected_risk(EARLY, FULL, REFS, fn))
  assert ((losses >= 0) & (losses <= 1)).all()


def test_risk_early_better_than_full_is_zero():
  # The early output matches the reference exactly, the full one only partly.
  full = ["the cat"]
  early = [["the cat sat on the mat"]]
  refs = ["the cat sat on the mat"]
  for name in NAMES:
    fn = metrics.get_text_similarity(name)
    assert fn(early[0][0], refs[0]) > fn(full[0], refs[0])
    assert risk_consistency_losses(early, full, refs, name)[0, 0] == 0.0
  # Textual consistency still charges the disagreement.
  assert textual_consistency_losses(early, full, "token_f1")[0, 0] > 0


def test_risk_early_worse_than_full_exact():
  # token F1 against "cat sat on mat": full output 1.0, early "cat sat" 2/3 -> loss 1/3;
  # early "cat on mat" 6/7 -> loss 1/7; early "dog" 0 -> loss 1.
  full = ["the cat sat on the mat"]
  early = [["the cat sat"], ["a cat on a mat"], ["dog"], ["The cat sat on a mat!"]]
  losses = risk_consistency_losses(early, full, ["cat sat on the mat"], "token_f1")
  np.testing.assert_allclose(losses, [[1 / 3, 1 / 7, 1.0, 0.0]], rtol=0, atol=1e-12)
  assert losses[0, 3] == 0.0
  # rouge_l, exact value against the direct difference.
  refs = ["a cat sat on the mat"]
  losses = risk_consistency_losses(early, full, refs, "rouge_l")
  for j in range(len(early)):
    expected = metrics.rouge_l(full[0], refs[0]) - metrics.rouge_l(early[j][0], refs[0])
    assert losses[0, j] == max(0.0, expected)
  assert losses[0, 0] > 0


def test_risk_loss_is_relative_to_full_quality():
  # The full output is itself imperfect (F1 2/3 vs "cat sat"); an early output of the same
  # quality loses nothing, a worse one loses only the difference.
  full = ["cat"]
  refs = ["cat sat"]
  early = [["sat"], ["cat"], ["dog"], ["cat sat"]]
  losses = risk_consistency_losses(early, full, refs, "token_f1")
  np.testing.assert_allclose(losses, [[0.0, 0.0, 2 / 3, 0.0]], rtol=0, atol=1e-12)


def test_risk_references_string_or_list():
  full = ["cat sat", "big dog"]
  early = [["cat", "dog"], ["the cat sat", "a big dog"]]
  as_strings = risk_consistency_losses(early, full, ["cat sat", "big dog"], "token_f1")
  as_lists = risk_consistency_losses(early, full, [["cat sat"], ["big dog"]], "token_f1")
  np.testing.assert_array_equal(as_strings, as_lists)
  # "cat" vs "cat sat": P = 1, R = 1/2, F1 = 2/3 against a full output scoring 1.
  np.testing.assert_allclose(as_strings, [[1 / 3, 0.0], [1 / 3, 0.0]], rtol=0, atol=1e-12)
  # Several references: the metric maximises over them, so "cat" now scores 1 as well.
  refs = [["cat sat", "cat"], ["big dog", "dog"]]
  multi = risk_consistency_losses(early, full, refs, "token_f1")
  np.testing.assert_array_equal(multi, _expected_risk(early, full, refs, metrics.token_f1))
  np.testing.assert_array_equal(multi, np.zeros((2, 2)))
  mixed = risk_consistency_losses(early, full, ["cat sat", ["big dog", "dog"]], "token_f1")
  np.testing.assert_allclose(mixed, [[1 / 3, 0.0], [0.0, 0.0]], rtol=0, atol=1e-12)


def test_risk_custom_metric_sees_references_per_example():
  seen = []

  def metric(prediction, references):
    seen.append(references)
    refs = [references] if isinstance(references, str) else references
    return max(float(prediction == r) for r in refs)

  refs = ["x", ["y", "z"]]
  losses = risk_consistency_losses([["x", "y"], ["w", "w"]], ["x", "z"], refs, metric)
  np.testing.assert_array_equal(losses, [[0.0, 1.0], [0.0, 1.0]])
  assert all(r in refs for r in seen)


def test_risk_identical_outputs_are_zero():
  for name in NAMES:
    losses = risk_consistency_losses([FULL, list(FULL)], FULL, REFS, name)
    np.testing.assert_array_equal(losses, np.zeros((3, 2)))


# --- dispatch ---------------------------------------------------------------------------


def test_consistency_losses_dispatch():
  np.testing.assert_array_equal(consistency_losses("textual", EARLY, FULL, similarity="chrf"),
                                textual_consistency_losses(EARLY, FULL, "chrf"))
  np.testing.assert_array_equal(
      consistency_losses("textual", EARLY, FULL, references=REFS, similarity="token_f1"),
      textual_consistency_losses(EARLY, FULL, "token_f1"))
  np.testing.assert_array_equal(consistency_losses("textual", EARLY, FULL),
                                textual_consistency_losses(EARLY, FULL, "rouge_l"))
  np.testing.assert_array_equal(
      consistency_losses("risk", EARLY, FULL, references=REFS, similarity="token_f1"),
      risk_consistency_losses(EARLY, FULL, REFS, "token_f1"))
  np.testing.assert_array_equal(consistency_losses("risk", EARLY, FULL, REFS),
                                risk_consistency_losses(EARLY, FULL, REFS, "rouge_l"))
  # The two objectives genuinely differ on this grid.
  assert not np.array_equal(consistency_losses("textual", EARLY, FULL),
                            consistency_losses("risk", EARLY, FULL, REFS))


def test_consistency_losses_risk_needs_references():
  with pytest.raises(ValueError, match="risk.*references"):
    consistency_losses("risk", EARLY, FULL)


def test_consistency_losses_unknown_objective():
  with pytest.raises(ValueError) as info:
    consistency_losses("textural", EARLY, FULL, REFS)
  message = str(info.value)
  assert "'textural'" in message
  assert "textual" in message and "risk" in message
  assert consistency.OBJECTIVES == ("textual", "risk")


# --- input checks -----------------------------------------------------------------------


def test_wrong_column_length():
  early = [FULL, FULL[:2]]
  with pytest.raises(ValueError, match=r"early_outputs\[1\] has 2 outputs but there are 3"):
    textual_consistency_losses(early, FULL, "rouge_l")
  with pytest.raises(ValueError, match=r"early_outputs\[1\] has 2 outputs but there are 3"):
    risk_consistency_losses(early, FULL, REFS, "rouge_l")
  with pytest.raises(ValueError, match=r"early_outputs\[0\] has 4 outputs but there are 3"):
    textual_consistency_losses([FULL + ["extra"]], FULL, "rouge_l")


def test_empty_early_outputs():
  with pytest.raises(ValueError, match="early_outputs is empty"):
    textual_consistency_losses([], FULL, "rouge_l")
  with pytest.raises(ValueError, match="early_outputs is empty"):
    risk_consistency_losses([], FULL, REFS, "rouge_l")


def test_references_wrong_length():
  with pytest.raises(ValueError, match="references has 2 entries but there are 3"):
    risk_consistency_losses(EARLY, FULL, REFS[:2], "rouge_l")
  with pytest.raises(ValueError, match="references has 4 entries but there are 3"):
    consistency_losses("risk", EARLY, FULL, REFS + ["extra"])


@pytest.mark.parametrize("bad", [1.5, -0.1, float("nan")])
def test_similarity_out_of_range(bad):
  with pytest.raises(ValueError, match="must lie in \\[0, 1\\]"):
    textual_consistency_losses([["a"]], ["b"], lambda p, r: bad)
  with pytest.raises(ValueError, match="must lie in \\[0, 1\\]"):
    risk_consistency_losses([["a"]], ["b"], ["c"], lambda p, r: bad)


def test_out_of_range_message_names_value():
  with pytest.raises(ValueError, match="returned 1.5"):
    textual_consistency_losses([["a"]], ["b"], lambda p, r: 1.5)


def test_unknown_similarity_name():
  with pytest.raises(ValueError, match="'nope'"):
    textual_consistency_losses(EARLY, FULL, "nope")
  with pytest.raises(ValueError, match="'nope'"):
    risk_consistency_losses(EARLY, FULL, REFS, "nope")


def test_outputs_by_threshold():
  rows = [["a0", "a1"], ["b0", "b1"], ["c0", "c1"]]  # [n=3][k=2]
  assert outputs_by_threshold(rows) == [["a0", "b0", "c0"], ["a1", "b1", "c1"]]
  np.testing.assert_array_equal(
      textual_consistency_losses(outputs_by_threshold([[e[i] for e in EARLY]
                                                       for i in range(3)]), FULL, "bleu"),
      textual_consistency_losses(EARLY, FULL, "bleu"))


def test_risk_losses_accept_token_ids():
  losses = consistency.risk_consistency_losses([[[1, 2]], [[1, 3]]], [[1, 2]], [[1, 2]],
                                               "token_agreement")
  np.testing.assert_array_equal(losses, [[0.0, 0.5]])


@pytest.mark.parametrize("references", ["abc", None, 5, b"abc"])
def test_risk_losses_reject_references_that_are_not_a_list(references):
  with pytest.raises(ValueError, match="references must be a list with one entry per example"):
    consistency.risk_consistency_losses([["a", "b", "q"]], ["x", "b", "z"], references,
                                        "exact_match")
