"""The validity study: one split recomputed by hand and by a NumPy reference, the never-exit
fallback, LTT's promise against the naive rule on simulated losses, the report's layout and
JSON form, seeding, the Markdown table, the atomic PNG, and input checks."""

import json
import os

import numpy as np
import pytest

from calm_jax.calibration import ltt
from calm_jax.calibration.validity import (RuleSummary, ValidityReport, format_table,
                                           plot_validity, validity_study)

LTT = "ltt_hoeffding_bentkus"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# --- a hand-made case: n = 10 examples, k = 3 thresholds, L = 8 decoder layers ----------
#
# With seed 0 the first permutation of 10 is [4 6 2 7 3 5 | 9 0 8 1], so a 60% split puts
# rows 2-7 in the calibration part and rows 0, 1, 8, 9 in the test part. Columns are the
# thresholds 0.9, 0.6, 0.3. Calibration means: 0, 0.5/6, 2.25/6 = 0.375; test means: 0.0625,
# 0.3125, 0.5. Hence the naive rule picks 0.6 at delta 0.2 (test loss 0.3125 > 0.2: a
# violation) and 0.3 at delta 0.5 (test loss exactly 0.5: not a violation, the comparison
# is strict). LTT (hoeffding_bentkus, epsilon 0.3, n = 6) certifies 0.9 only at delta 0.2
# (p = 0.8^6-ish 0.26; 0.6 has p ~ 0.73) and 0.9, 0.6 at delta 0.5 (0.3 has p ~ 0.83).
HAND_SEED = 0
HAND_FRACTION = 0.6
HAND_LAYERS = 8
HAND_THRESHOLDS = [0.9, 0.6, 0.3]
HAND_DELTAS = [0.2, 0.5]
HAND_EPSILON = 0.3
HAND_RULES = ["naive", LTT]
HAND_CALIBRATION_ROWS = [4, 6, 2, 7, 3, 5]
HAND_TEST_ROWS = [9, 0, 8, 1]
HAND_LOSSES = np.array([
    [0.0, 0.25, 0.5],  # 0 test
    [0.0, 0.0, 0.0],  # 1 test
    [0.0, 0.0, 0.5],  # 2 calibration
    [0.0, 0.0, 0.0],  # 3 calibration
    [0.0, 0.5, 1.0],  # 4 calibration
    [0.0, 0.0, 0.0],  # 5 calibration
    [0.0, 0.0, 0.5],  # 6 calibration
    [0.0, 0.0, 0.25],  # 7 calibration
    [0.0, 0.5, 0.5],  # 8 test
    [0.25, 0.5, 1.0],  # 9 test
])
# Token counts vary so that the token-weighted exit layer (sum of layers / sum of tokens)
# differs from the mean of the per-example averages: on the test rows, column 0.6 gives
# 60 / 18 = 3.33 (per-example mean 5), column 0.3 gives 66 / 20 = 3.3 (4.75), column 0.9
# gives 108 / 18 = 6 (6.75). Calibration rows carry odd values (row 4: 20 tokens at layer 1)
# that would change every figure if they leaked into the test part.
HAND_TOKENS = np.array([
    [3, 1, 2], [6, 5, 4], [1, 1, 1], [2, 2, 2], [20, 20, 20],
    [1, 1, 1], [1, 1, 1], [3, 3, 3], [1, 2, 4], [8, 10, 10],
], dtype=np.float64)
HAND_LAYER_SUMS = np.array([
    [24, 8, 16], [36, 20, 28], [8, 8, 8], [16, 16, 16], [20, 20, 20],
    [8, 8, 8], [8, 8, 8], [24, 24, 24], [8, 12, 12], [40, 20, 10],
], dtype=np.float64)
# (delta, rule) -> (threshold, test loss, token-weighted exit layer, violated)
HAND_EXPECTED = {
    (0.2, "naive"): (0.6, 0.3125, 60 / 18, True),
    (0.2, LTT): (0.9, 0.0625, 108 / 18, False),
    (0.5, "naive"): (0.3, 0.5, 66 / 20, False),
    (0.5, LTT): (0.6, 0.3125, 60 / 18, False),
}


def _hand_study(**overrides):
  kwargs = dict(deltas=HAND_DELTAS, epsilon=HAND_EPSILON, rules=HAND_RULES, num_splits=1,
                calibration_fraction=HAND_FRACTION, seed=HAND_SEED)
  kwargs.update(overrides)
  return validity_study(HAND_LOSSES, HAND_THRESHOLDS, HAND_LAYER_SUMS, HAND_TOKENS,
                        HAND_LAYERS, **kwargs)


# --- a NumPy reference of the study ------------------------------------------------------

def _reference_split(losses, thresholds, layer_sums, tokens, num_layers, order,
                     calibration_size, delta, epsilon, rule):
  """One split: (threshold, test loss, token-weighted exit layer, violated)."""
  calib, test = order[:calibration_size], order[calibration_size:]
  result = ltt.calibrate(losses[calib], thresholds, delta, epsilon, rule)
  j = result.chosen_index
  if j is None:
    return 1.0, 0.0, float(num_layers), False
  test_loss = float(np.mean(losses[test, j]))
  total = np.sum(tokens[test, j])
  exit_layer = float(np.sum(layer_sums[test, j]) / total) if total else float(num_layers)
  return float(thresholds[j]), test_loss, exit_layer, test_loss > delta


def _reference_study(losses, thresholds, layer_sums, tokens, num_layers, deltas, epsilon,
                     rules, num_splits, fraction, seed):
  """{(delta, rule): list of per-split tuples}, every rule on the same permutations."""
  losses, layer_sums, tokens = (np.asarray(a, np.float64) for a in (losses, layer_sums, tokens))
  n = losses.shape[0]
  rng = np.random.default_rng(seed)
  orders = [rng.permutation(n) for _ in range(num_splits)]
  size = int(round(fraction * n))
  return {(delta, rule): [_reference_split(losses, np.asarray(thresholds), layer_sums, tokens,
                                           num_layers, order, size, delta, epsilon, rule)
                          for order in orders]
          for delta in deltas for rule in rules}


# --- 1. one split against the reference and against hand-computed values ------------------

def test_hand_case_split_is_as_designed():
  order = np.random.default_rng(HAND_SEED).permutation(10)
  assert order[:6].tolist() == HAND_CALIBRATION_ROWS
  assert order[6:].tolist() == HAND_TEST_ROWS
  # The two averages of the exit layer really differ on every column of the test part.
  for j in range(3):
    weighted = HAND_LAYER_SUMS[HAND_TEST_ROWS, j].sum() / HAND_TOKENS[HAND_TEST_ROWS, j].sum()
    per_example = np.mean(HAND_LAYER_SUMS[HAND_TEST_ROWS, j] / HAND_TOKENS[HAND_TEST_ROWS, j])
    assert abs(weighted - per_example) > 0.4


def test_one_split_matches_the_reference_and_the_hand_values():
  report = _hand_study()
  reference = _reference_study(HAND_LOSSES, HAND_THRESHOLDS, HAND_LAYER_SUMS, HAND_TOKENS,
                               HAND_LAYERS, HAND_DELTAS, HAND_EPSILON, HAND_RULES, 1,
                               HAND_FRACTION, HAND_SEED)
  assert len(report.summaries) == len(HAND_EXPECTED)
  for (delta, rule), expected in HAND_EXPECTED.items():
    s = report.summary(rule, delta)
    assert reference[(delta, rule)] == [expected]  # the reference agrees with the hand
    threshold, test_loss, exit_layer, violated = expected
    assert s.thresholds == [threshold] and s.mean_threshold == threshold
    assert s.test_losses == [test_loss] and s.mean_test_loss == test_loss
    assert s.mean_exit_layer == exit_layer
    assert s.layer_speedup == HAND_LAYERS / exit_layer
    assert s.violation_rate == (1.0 if violated else 0.0)
    assert s.never_exit_fraction == 0.0
  # Spelled out: the naive rule at 0.2 is a violation with 8 / (10 / 3) = 2.4x fewer layers.
  naive = report.summary("naive", 0.2)
  assert naive.violation_rate == 1.0 and naive.layer_speedup == pytest.approx(2.4, rel=1e-15)


def test_many_splits_match_the_reference():
  deltas, rules = [0.1, 0.2, 0.35, 0.5], ["naive", LTT, "ltt_hoeffding", "ltt_bentkus_bonferroni"]
  report = _hand_study(deltas=deltas, rules=rules, num_splits=9, seed=11)
  reference = _reference_study(HAND_LOSSES, HAND_THRESHOLDS, HAND_LAYER_SUMS, HAND_TOKENS,
                               HAND_LAYERS, deltas, HAND_EPSILON, rules, 9, HAND_FRACTION, 11)
  distinct = set()
  for (delta, rule), splits in reference.items():
    s = report.summary(rule, delta)
    thresholds, test_losses, layers, violated = (list(column) for column in zip(*splits))
    assert s.thresholds == thresholds
    assert s.test_losses == test_losses
    assert s.mean_threshold == pytest.approx(np.mean(thresholds), rel=1e-15)
    assert s.mean_test_loss == pytest.approx(np.mean(test_losses), rel=1e-15)
    assert s.mean_exit_layer == pytest.approx(np.mean(layers), rel=1e-15)
    assert s.layer_speedup == pytest.approx(HAND_LAYERS / np.mean(layers), rel=1e-15)
    assert s.violation_rate == np.mean(violated)
    column_mean = {**dict(zip(HAND_THRESHOLDS, HAND_LOSSES.mean(axis=0))), 1.0: 0.0}
    assert s.population_violation_rate == np.mean([column_mean[t] > delta for t in thresholds])
    assert s.never_exit_fraction == np.mean(np.asarray(thresholds) == 1.0)
    distinct.update(thresholds)
  assert distinct == {0.9, 0.6, 0.3, 1.0}  # the case exercises every column and the fallback


def test_no_test_tokens_at_the_chosen_threshold_counts_as_the_full_model():
  losses = np.zeros((4, 2))
  tokens = np.zeros((4, 2))
  report = validity_study(losses, [0.8, 0.4], np.zeros((4, 2)), tokens, 6, deltas=[0.3],
                          epsilon=0.2, rules=["naive"], num_splits=3, calibration_fraction=0.5)
  s = report.summary("naive", 0.3)
  assert s.thresholds == [0.4] * 3  # an exit was chosen, it is not the fallback
  assert s.never_exit_fraction == 0.0
  assert s.mean_exit_layer == 6.0 and s.layer_speedup == 1.0


# --- 2. the never-exit fallback -----------------------------------------------------------

def test_fallback_when_nothing_is_certified():
  losses = np.ones((10, 3))
  report = validity_study(losses, HAND_THRESHOLDS, HAND_LAYER_SUMS, HAND_TOKENS, HAND_LAYERS,
                          deltas=[0.1, 0.5], epsilon=0.2,
                          rules=["naive", LTT, "ltt_binomial_bonferroni"], num_splits=4, seed=3)
  assert len(report.summaries) == 6
  for s in report.summaries:
    assert s.thresholds == [1.0] * 4 and s.mean_threshold == 1.0
    assert s.test_losses == [0.0] * 4 and s.mean_test_loss == 0.0
    assert s.mean_exit_layer == float(HAND_LAYERS)
    assert s.layer_speedup == 1.0
    assert s.never_exit_fraction == 1.0
    assert s.violation_rate == 0.0


# --- 3. the statistical promise ------------------------------------------------------------

N_SIM = 2000


def _losses_with_means(means, seed):
  """[N_SIM, k] 0/1 losses; column j holds exactly round(means[j] * N_SIM) ones at random
  rows, independently of the other columns, so its mean over the whole set is known."""
  rng = np.random.default_rng(seed)
  counts = np.round(np.asarray(means) * N_SIM).astype(int)
  return np.stack([(rng.permutation(N_SIM) < c).astype(np.float64) for c in counts], axis=1)


def _true_violations(summary, thresholds, means):
  """Fraction of splits whose chosen threshold has a mean over the whole set above delta."""
  mean_at = dict(zip(np.asarray(thresholds).tolist(), means))
  mean_at[1.0] = 0.0  # never exit
  return float(np.mean([mean_at[t] > summary.delta for t in summary.thresholds]))


def test_ltt_keeps_its_promise_where_the_naive_rule_breaks_it():
  # Construction (delta = 0.1, epsilon = 0.1, 2000 examples, 100 splits of 1600 / 400):
  # four safe thresholds with means 0, 0.02, 0.04, 0.06, then twenty smaller thresholds each
  # with mean 0.103 (206 losses), just above delta, losses independent across columns. The
  # split draws the calibration part without replacement from these 2000 examples, so a
  # column with 206 losses has a calibration mean <= 0.1 (<= 160 losses) with probability
  # ~0.2; among twenty such columns one almost always passes, and the naive rule takes the
  # smallest such threshold. Its test part then holds >= 206 - 160 = 46 of 400 losses
  # (0.115 > delta): every such split is a violation. LTT walks down from the largest
  # threshold and needs a margin below delta (at n = 1600 about 0.02), which no 0.103 column
  # ever shows, so it stops at the 0.06 column, whose test loss stays far below delta.
  # Both rules run on the very same splits.
  delta, epsilon = 0.1, 0.1
  means = [0.0, 0.02, 0.04, 0.06] + [0.103] * 20
  k = len(means)
  thresholds = np.linspace(0.95, 0.05, k)
  losses = _losses_with_means(means, seed=2024)
  tokens = np.ones_like(losses) * 5
  layer_sums = tokens * (k - np.arange(k))  # smaller thresholds exit earlier: layer k - j
  kwargs = dict(deltas=[delta], epsilon=epsilon, num_splits=100, seed=0)
  report = validity_study(losses, thresholds, layer_sums, tokens, k, rules=["naive", LTT],
                          **kwargs)
  naive, ltt = report.summary("naive", delta), report.summary(LTT, delta)
  assert ltt.violation_rate <= epsilon + 0.05
  assert naive.violation_rate >= 0.8
  assert _true_violations(ltt, thresholds, means) <= epsilon
  assert _true_violations(naive, thresholds, means) >= 0.8
  # The module's whole-set rate is exactly this quantity (column means are exact here).
  assert ltt.population_violation_rate == _true_violations(ltt, thresholds, means)
  assert naive.population_violation_rate == _true_violations(naive, thresholds, means)
  assert ltt.mean_test_loss <= delta < naive.mean_test_loss
  assert naive.mean_exit_layer < ltt.mean_exit_layer  # the naive rule buys its speed unsafely
  # The same splits: each rule alone (same seed) reproduces its summary exactly.
  for rule, summary in (("naive", naive), (LTT, ltt)):
    alone = validity_study(losses, thresholds, layer_sums, tokens, k, rules=[rule], **kwargs)
    assert alone.summaries == [summary]


@pytest.mark.parametrize("rule", [LTT, "ltt_bentkus", "ltt_hoeffding_bonferroni"])
def test_ltt_promise_on_a_fine_grid_crossing_delta(rule):
  # Thirty-one thresholds whose means over the set rise by 0.01 from 0 to 0.3, so every delta
  # below sits inside the grid. LTT promises that the chosen threshold's expected loss (here
  # its mean over the whole set) exceeds delta in at most a fraction epsilon of splits. The
  # module's violation rate compares the 400-example test mean with delta instead; that one
  # also counts test noise at thresholds whose expected loss lies just below delta, so on a
  # grid this fine it is not held to epsilon here.
  epsilon = 0.1
  means = np.linspace(0.0, 0.3, 31)
  thresholds = np.linspace(0.95, 0.2, 31)
  losses = _losses_with_means(means, seed=7)
  ones = np.ones_like(losses)
  deltas = [0.05, 0.1, 0.2]
  report = validity_study(losses, thresholds, ones * 3, ones, 4, deltas=deltas,
                          epsilon=epsilon, rules=[rule], num_splits=100, seed=1)
  previous = 2.0
  for delta in deltas:
    s = report.summary(rule, delta)
    assert _true_violations(s, thresholds, means) <= epsilon
    assert s.population_violation_rate == _true_violations(s, thresholds, means)
    assert s.mean_test_loss <= delta
    assert s.never_exit_fraction == 0.0  # n = 1600 always certifies the zero-loss column
    assert s.mean_threshold < previous  # more tolerance, smaller thresholds
    previous = s.mean_threshold


# --- 4. report layout and JSON -------------------------------------------------------------

def test_summaries_are_ordered_deltas_outer_rules_inner_and_found_by_summary():
  deltas, rules = [0.5, 0.2, 0.35], ["ltt_bentkus_bonferroni", "naive", LTT]
  report = _hand_study(deltas=deltas, rules=rules, num_splits=3)
  assert isinstance(report, ValidityReport)
  assert [(s.delta, s.rule) for s in report.summaries] == [
      (d, r) for d in deltas for r in rules]
  assert all(isinstance(s, RuleSummary) for s in report.summaries)
  for i, (d, r) in enumerate((d, r) for d in deltas for r in rules):
    assert report.summary(r, d) is report.summaries[i]
  with pytest.raises(KeyError, match="naive"):
    report.summary("naive", 0.3)
  with pytest.raises(KeyError):
    report.summary("ltt_binomial", 0.2)
  assert (report.epsilon, report.num_splits, report.calibration_fraction, report.num_examples,
          report.num_layers) == (HAND_EPSILON, 3, HAND_FRACTION, 10, HAND_LAYERS)


def test_to_dict_is_strict_json():
  report = _hand_study(num_splits=5, rules=["naive", LTT, "ltt_hoeffding"])
  data = report.to_dict()
  text = json.dumps(data, allow_nan=False)
  assert json.loads(text) == data
  assert set(data) == {"epsilon", "num_splits", "calibration_fraction", "num_examples",
                       "num_layers", "summaries"}
  assert len(data["summaries"]) == 6
  first = data["summaries"][0]
  assert set(first) == {"rule", "delta", "violation_rate", "population_violation_rate",
                        "mean_threshold", "mean_test_loss",
                        "mean_exit_layer", "layer_speedup", "never_exit_fraction",
                        "thresholds", "test_losses"}
  assert len(first["thresholds"]) == len(first["test_losses"]) == 5


# --- 5. seeding ----------------------------------------------------------------------------

def test_same_seed_same_report_other_seed_other_splits():
  # The naive rule on the constructed case of the promise test chooses a different
  # threshold from split to split, so two seeds give different lists.
  means = [0.0, 0.02, 0.04, 0.06] + [0.103] * 20
  thresholds = np.linspace(0.95, 0.05, len(means))
  losses = _losses_with_means(means, seed=2024)
  ones = np.ones_like(losses)

  def run(seed):
    return validity_study(losses, thresholds, ones * 2, ones, 4, deltas=[0.1], epsilon=0.1,
                          rules=["naive", LTT], num_splits=20, seed=seed)

  first, again, other = run(5), run(5), run(6)
  assert first == again and first.to_dict() == again.to_dict()
  naive_first = first.summary("naive", 0.1).thresholds
  assert len(set(naive_first)) > 3  # the choice really varies across splits
  assert other.summary("naive", 0.1).thresholds != naive_first


# --- 6. the Markdown table -------------------------------------------------------------------

def test_format_table_exact_for_one_split():
  lines = format_table(_hand_study()).split("\n")
  assert lines == [
      "Validity over 1 random 60%/40% splits of 10 examples (epsilon = 0.3; speedup counts "
      "decoder layers, L = 8)",
      "",
      "| delta | rule | violation rate (test) | violation rate (all n) | mean threshold "
      "| mean test loss | mean exit layer | layer speedup |",
      "|---|---|---|---|---|---|---|---|",
      # The naive rule's 0.6 violates on the test part (0.3125) but not over all ten
      # examples (column mean 0.175 <= 0.2).
      "| 0.2 | naive | 1.000 | 0.000 | 0.600 | 0.3125 | 3.33 | 2.40x |",
      f"| 0.2 | {LTT} | 0.000 | 0.000 | 0.900 | 0.0625 | 6.00 | 1.33x |",
      "| 0.5 | naive | 0.000 | 0.000 | 0.300 | 0.5000 | 3.30 | 2.42x |",
      f"| 0.5 | {LTT} | 0.000 | 0.000 | 0.600 | 0.3125 | 3.33 | 2.40x |",
  ]


def test_format_table_has_one_row_per_summary():
  report = _hand_study(deltas=[0.1, 0.2, 0.35], rules=["naive", LTT], num_splits=7, seed=4)
  lines = format_table(report).split("\n")
  assert lines[0].startswith("Validity over 7 random 60%/40% splits of 10 examples")
  assert lines[2].startswith("| delta | rule | violation rate (test) | violation rate (all n) |")
  rows = lines[4:]
  assert len(rows) == len(report.summaries)
  rates = set()
  for row, s in zip(rows, report.summaries):
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert len(cells) == 8
    assert cells[:4] == [f"{s.delta:g}", s.rule, f"{s.violation_rate:.3f}",
                         f"{s.population_violation_rate:.3f}"]
    assert cells[7] == f"{s.layer_speedup:.2f}x"
    rates.add(cells[2])
  assert any(rate not in ("0.000", "1.000") for rate in rates)  # a rate like 0.429 shows up


# --- 7. the plot ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def plot_report():
  return _hand_study(deltas=[0.1, 0.2, 0.5], num_splits=5)


def test_plot_writes_a_png_atomically_and_overwrites(tmp_path, plot_report):
  path = tmp_path / "validity.png"
  path.write_bytes(b"old contents")
  plot_validity(plot_report, str(path))
  data = path.read_bytes()
  assert data.startswith(PNG_MAGIC) and len(data) > 1000
  assert os.listdir(tmp_path) == ["validity.png"]  # no .tmp- leftovers


def test_plot_to_a_relative_path(tmp_path, monkeypatch, plot_report):
  monkeypatch.chdir(tmp_path)
  plot_validity(plot_report, "relative.png")
  assert (tmp_path / "relative.png").read_bytes().startswith(PNG_MAGIC)
  assert os.listdir(tmp_path) == ["relative.png"]


def test_plot_failure_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch, plot_report):
  from matplotlib import figure  # pylint: disable=import-outside-toplevel

  def fail(*args, **kwargs):
    raise RuntimeError("disk full")

  monkeypatch.setattr(figure.Figure, "savefig", fail)
  path = tmp_path / "validity.png"
  path.write_bytes(b"old contents")
  with pytest.raises(RuntimeError, match="disk full"):
    plot_validity(plot_report, str(path))
  assert path.read_bytes() == b"old contents"
  assert os.listdir(tmp_path) == ["validity.png"]


# --- 8. input checks -------------------------------------------------------------------------

def _bad(**changes):
  """Keyword arguments of a valid hand-case call, with `changes` applied."""
  kwargs = dict(losses=HAND_LOSSES, thresholds=HAND_THRESHOLDS, layer_sums=HAND_LAYER_SUMS,
                token_counts=HAND_TOKENS, num_layers=HAND_LAYERS, deltas=HAND_DELTAS,
                epsilon=HAND_EPSILON, rules=HAND_RULES, num_splits=2,
                calibration_fraction=HAND_FRACTION, seed=0)
  kwargs.update(changes)
  return kwargs


def _with(array, index, value):
  out = np.array(array, dtype=np.float64)
  out[index] = value
  return out


BAD_INPUT = [
    (dict(layer_sums=HAND_LAYER_SUMS[:, :2]), r"layer_sums has shape \(10, 2\) but losses has "
                                              r"\(10, 3\)"),
    (dict(token_counts=HAND_TOKENS[:9]), r"token_counts has shape \(9, 3\)"),
    (dict(layer_sums=_with(HAND_LAYER_SUMS, (3, 1), -1.0)), "layer_sums must be finite and >= 0"),
    (dict(layer_sums=_with(HAND_LAYER_SUMS, (0, 0), np.nan)), "layer_sums must be finite"),
    (dict(token_counts=_with(HAND_TOKENS, (2, 2), np.inf)), "token_counts must be finite"),
    (dict(token_counts=_with(HAND_TOKENS, (2, 2), -2.0)), "token_counts must be finite and >= 0"),
    (dict(num_layers=0), "num_layers must be a positive integer, got 0"),
    (dict(num_layers=True), "num_layers must be a positive integer, got True"),
    (dict(num_layers=8.0), "num_layers must be a positive integer"),
    (dict(num_splits=0), "num_splits must be a positive integer, got 0"),
    (dict(num_splits=False), "num_splits must be a positive integer"),
    (dict(calibration_fraction=0.0), "calibration_fraction must lie strictly between 0 and 1"),
    (dict(calibration_fraction=1.0), "calibration_fraction must lie strictly between 0 and 1"),
    (dict(calibration_fraction=float("nan")), "calibration_fraction must lie strictly between"),
    (dict(losses=HAND_LOSSES[:2], layer_sums=HAND_LAYER_SUMS[:2], token_counts=HAND_TOKENS[:2],
          calibration_fraction=0.9), "2 examples cannot be split 90% / 10% with both parts "
                                     "non-empty"),
    (dict(calibration_fraction=0.01), "10 examples cannot be split"),
    (dict(rules=["naive", "ltt_magic"]), "rule='ltt_magic' is not a calibration rule"),
    (dict(rules="naive"), "rules must be a non-empty list"),
    (dict(rules=[]), "rules must be a non-empty list"),
    (dict(deltas=[]), "deltas must be a non-empty list"),
    (dict(deltas=[0.2, 1.0]), "delta must lie strictly between 0 and 1"),
    (dict(epsilon=1.5), "epsilon must lie strictly between 0 and 1"),
    (dict(losses=_with(HAND_LOSSES, (4, 2), 1.5)), r"losses must be finite and in \[0, 1\]"),
    (dict(losses=_with(HAND_LOSSES, (4, 2), -0.1)), r"losses must be finite and in \[0, 1\]"),
    (dict(losses=_with(HAND_LOSSES, (4, 2), np.nan)), r"losses must be finite and in \[0, 1\]"),
    (dict(thresholds=[0.9, 0.9, 0.3]), "thresholds must be strictly decreasing"),
    (dict(thresholds=[0.3, 0.6, 0.9]), "thresholds must be strictly decreasing"),
    (dict(thresholds=[0.9, 0.6]), "losses has 3 columns but there are 2 thresholds"),
]


@pytest.mark.parametrize("changes, pattern", BAD_INPUT)
def test_bad_input_raises_value_error(changes, pattern):
  kwargs = _bad(**changes)
  losses, thresholds = kwargs.pop("losses"), kwargs.pop("thresholds")
  layer_sums, tokens = kwargs.pop("layer_sums"), kwargs.pop("token_counts")
  num_layers = kwargs.pop("num_layers")
  with pytest.raises(ValueError, match=pattern):
    validity_study(losses, thresholds, layer_sums, tokens, num_layers, **kwargs)


def test_the_valid_baseline_of_the_bad_input_cases_runs():
  kwargs = _bad()
  args = [kwargs.pop(name) for name in ("losses", "thresholds", "layer_sums", "token_counts",
                                        "num_layers")]
  assert len(validity_study(*args, **kwargs).summaries) == 4


def test_numpy_integer_splits_give_strict_json_and_impossible_layer_sums_are_rejected():
  report = _hand_study(num_splits=np.int64(2))
  json.dumps(report.to_dict(), allow_nan=False)
  zeros = np.zeros((10, 2))
  with pytest.raises(ValueError, match=r"layer_sums\[0, 0\] = 0 is impossible for 1 tokens"):
    validity_study(zeros, [0.9, 0.5], zeros, np.ones((10, 2)), 4, deltas=[0.1], epsilon=0.2,
                   rules=["naive"], num_splits=2)
  with pytest.raises(ValueError, match=r"layer_sums\[0, 0\] = 9 is impossible for 2 tokens"):
    validity_study(zeros, [0.9, 0.5], np.full((10, 2), 9.0), np.full((10, 2), 2.0), 4,
                   deltas=[0.1], epsilon=0.2, rules=["naive"], num_splits=2)


def test_plot_keeps_normal_file_permissions(tmp_path):
  target = tmp_path / "validity.png"
  plot_validity(_hand_study(), str(target))
  umask = os.umask(0)
  os.umask(umask)
  assert (target.stat().st_mode & 0o777) == (0o666 & ~umask)
