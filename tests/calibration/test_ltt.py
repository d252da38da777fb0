"""Learn-then-Test calibration: p-values against plain-`math` references, their validity
under the null, fixed-sequence and Bonferroni semantics, the naive baseline, the result
table, rule names and input checks."""

import itertools
import json
import math

import numpy as np
import pytest

from calm_jax.calibration import ltt
from calm_jax.calibration.ltt import (CalibrationResult, calibrate, calibrate_many,
                                      fixed_sequence_rejections, learn_then_test,
                                      naive_threshold, p_value, parse_rule, rule_names)

METHODS = ("hoeffding", "bentkus", "hoeffding_bentkus", "binomial")


def _binary_losses(n, counts):
  """[n, k] 0/1 losses whose column j holds exactly counts[j] ones."""
  return (np.arange(n)[:, None] < np.asarray(counts)[None, :]).astype(np.float64)


# --- plain-math references --------------------------------------------------------------

def _ref_binom_pmf(i, n, delta):
  """P(Binomial(n, delta) = i) from math.comb (in log space so that big n cannot overflow)."""
  return math.exp(math.log(math.comb(n, i)) + i * math.log(delta) + (n - i) * math.log1p(-delta))


def _ref_binom_cdf(count, n, delta):
  """P(Binomial(n, delta) <= count) by summing the pmf."""
  return math.fsum(_ref_binom_pmf(i, n, delta) for i in range(count + 1))


def _ref_kl(a, b):
  """a log(a/b) + (1-a) log((1-a)/(1-b)) with 0 log 0 = 0."""
  out = 0.0
  if a > 0:
    out += a * math.log(a / b)
  if a < 1:
    out += (1 - a) * math.log((1 - a) / (1 - b))
  return out


def _ref_hoeffding(mean, n, delta):
  return math.exp(-2 * n * max(delta - mean, 0.0) ** 2)


def _ref_bentkus(ceil_count, n, delta):
  return min(1.0, math.e * _ref_binom_cdf(ceil_count, n, delta))


def _ref_hoeffding_bentkus(mean, ceil_count, n, delta):
  return min(math.exp(-n * _ref_kl(min(mean, delta), delta)), _ref_bentkus(ceil_count, n, delta))


# (mean, n, delta, ceil(n * mean) in exact arithmetic, n * mean is a whole number)
P_VALUE_CASES = [
    (0.0, 10, 0.1, 0, True),
    (0.0, 2000, 0.1, 0, True),
    (0.1, 10, 0.1, 1, True),  # mean == delta
    (0.3, 10, 0.1, 3, True),  # mean > delta
    (0.1 * 3, 10, 0.5, 3, True),  # 0.30000000000000004: must count 3 losses, not 4
    (1.0, 50, 0.2, 50, True),
    (0.0, 1, 0.5, 0, True),
    (1.0, 1, 0.5, 1, True),
    (0.05, 2000, 0.1, 100, True),
    (0.09, 2000, 0.1, 180, True),
    (0.25, 40, 0.4, 10, True),
    (0.7, 30, 0.6, 21, True),
    (0.123, 100, 0.2, 13, False),
    (0.0512, 1000, 0.05, 52, False),  # just above delta
]


@pytest.mark.parametrize("mean, n, delta, ceil_count, whole", P_VALUE_CASES)
def test_p_values_match_math_references(mean, n, delta, ceil_count, whole):
  expected = {
      "hoeffding": _ref_hoeffding(mean, n, delta),
      "bentkus": _ref_bentkus(ceil_count, n, delta),
      "hoeffding_bentkus": _ref_hoeffding_bentkus(mean, ceil_count, n, delta),
  }
  if whole:
    expected["binomial"] = _ref_binom_cdf(ceil_count, n, delta)
  for method, want in expected.items():
    got = p_value(mean, n, delta, method)
    assert math.isclose(got, want, rel_tol=1e-10, abs_tol=1e-300), (method, got, want)


def test_ceil_count_uses_three_losses_for_point_three_of_ten():
  mean = 0.1 * 3
  assert mean * 10 > 3  # the float really is above 3/10
  three = math.e * _ref_binom_cdf(3, 10, 0.5)
  four = math.e * _ref_binom_cdf(4, 10, 0.5)
  assert three < 1 < four  # so the two counts give visibly different p-values
  assert p_value(mean, 10, 0.5, "bentkus") == pytest.approx(three, rel=1e-12)
  assert p_value(mean, 10, 0.5, "binomial") == pytest.approx(three / math.e, rel=1e-12)
  # A genuinely non-integer count still rounds up.
  assert p_value(0.31, 10, 0.5, "bentkus") == pytest.approx(1.0)


@pytest.mark.parametrize("method", METHODS)
def test_p_value_vectorised_equals_scalar_calls(method):
  n, delta = 40, 0.3
  means = np.arange(n + 1) / n
  got = p_value(means, n, delta, method)
  assert isinstance(got, np.ndarray) and got.shape == means.shape
  for m, g in zip(means, got):
    scalar = p_value(float(m), n, delta, method)
    assert type(scalar) is float  # pylint: disable=unidiomatic-typecheck
    assert g == pytest.approx(scalar, rel=1e-14, abs=0)
  zero_d = p_value(np.float64(0.1), n, delta, method)
  assert type(zero_d) is float  # pylint: disable=unidiomatic-typecheck
  assert np.all((got >= 0) & (got <= 1))
  assert np.all(np.diff(got) >= 0)  # more loss never gives a smaller p-value


@pytest.mark.parametrize("n, delta", [(1, 0.5), (20, 0.1), (300, 0.25), (2000, 0.05)])
def test_hoeffding_bentkus_is_min_of_its_parts(n, delta):
  means = np.linspace(0.0, 1.0, 101)
  hb = p_value(means, n, delta, "hoeffding_bentkus")
  hoeffding = p_value(means, n, delta, "hoeffding")
  bentkus = p_value(means, n, delta, "bentkus")
  assert np.all(hb <= hoeffding * (1 + 1e-12))
  assert np.all(hb <= bentkus * (1 + 1e-12))
  assert np.any(hb < bentkus) and np.any(hb < hoeffding)  # both parts matter somewhere
  assert np.all(hoeffding[means >= delta] == 1.0)
  assert np.all(hoeffding[means < delta] < 1.0)


# --- validity under the null ------------------------------------------------------------

@pytest.mark.parametrize("n, delta, epsilon", [(50, 0.1, 0.1), (200, 0.2, 0.05), (1000, 0.05, 0.1)])
@pytest.mark.parametrize("method", METHODS)
def test_p_values_are_valid_at_the_null_boundary(method, n, delta, epsilon):
  """True mean exactly delta (Bernoulli losses): P(p <= epsilon) <= epsilon."""
  # Exactly, summing the binomial pmf over every count the p-value rejects.
  counts = np.arange(n + 1)
  rejects = p_value(counts / n, n, delta, method) <= epsilon
  pmf = [_ref_binom_pmf(i, n, delta) for i in range(n + 1)]
  size = math.fsum(pmf[c] for c in counts[rejects])
  assert size <= epsilon
  # And by simulation, drawing the counts directly.
  draws = 20000
  rng = np.random.default_rng(1000 * n + int(100 * epsilon))
  sampled = rng.binomial(n, delta, size=draws)
  fraction = np.mean(p_value(sampled / n, n, delta, method) <= epsilon)
  se = math.sqrt(epsilon * (1 - epsilon) / draws)
  assert fraction <= epsilon + 3 * se
  assert abs(fraction - size) <= 4 * math.sqrt(max(size, 1e-4) / draws)
  if method == "binomial":  # exact: its size is the largest null CDF value <= epsilon
    attainable = max(cdf for cdf in itertools.accumulate(pmf) if cdf <= epsilon)
    assert size == pytest.approx(attainable, rel=1e-9)
    assert size >= 0.3 * epsilon
  else:  # the bounds are conservative: the exact test rejects at least as often
    exact = p_value(counts / n, n, delta, "binomial") <= epsilon
    assert np.all(exact[rejects])


# --- fixed sequence and Bonferroni --------------------------------------------------------

THRESHOLDS = [0.9, 0.7, 0.5, 0.3]
N, DELTA, EPSILON = 100, 0.2, 0.1
# With hoeffding, n = 100, delta = 0.2: mean 0 -> p = exp(-8) (passes at 0.1 and 0.1 / 4),
# mean 0.08 -> p = exp(-2.88) ~ 0.056 (passes at 0.1, fails at 0.025), mean 0.5 -> p = 1.
PASS, BORDER, FAIL = 0, 8, 50


def _ltt(counts, correction="fixed_sequence", method="hoeffding"):
  return learn_then_test(_binary_losses(N, counts), THRESHOLDS, DELTA, EPSILON, method,
                         correction)


def test_pattern_p_values_are_as_designed():
  p = p_value(np.array([PASS, BORDER, FAIL]) / N, N, DELTA, "hoeffding")
  assert p[0] < EPSILON / len(THRESHOLDS) < p[1] < EPSILON < p[2] == 1.0


@pytest.mark.parametrize("counts, rejected, chosen", [
    ([PASS, PASS, FAIL, PASS], [1, 1, 0, 0], 1),  # the pass after the failure is not rejected
    ([PASS, PASS, PASS, PASS], [1, 1, 1, 1], 3),
    ([FAIL, PASS, PASS, PASS], [0, 0, 0, 0], None),
    ([FAIL, FAIL, FAIL, FAIL], [0, 0, 0, 0], None),
    ([PASS, BORDER, FAIL, PASS], [1, 1, 0, 0], 1),
    ([BORDER, BORDER, BORDER, BORDER], [1, 1, 1, 1], 3),
])
def test_fixed_sequence(counts, rejected, chosen):
  result = _ltt(counts)
  assert [row.rejected for row in result.table] == [bool(r) for r in rejected]
  assert result.chosen_index == chosen
  if chosen is None:
    assert result.threshold == 1.0 and result.chosen is None
  else:
    assert result.threshold == THRESHOLDS[chosen]
    assert result.chosen == result.table[chosen]


@pytest.mark.parametrize("counts, rejected, chosen", [
    ([PASS, PASS, FAIL, PASS], [1, 1, 0, 1], 3),  # keeps going past the failure
    ([PASS, PASS, PASS, PASS], [1, 1, 1, 1], 3),
    ([FAIL, FAIL, FAIL, FAIL], [0, 0, 0, 0], None),
    ([PASS, BORDER, FAIL, PASS], [1, 0, 0, 1], 3),  # BORDER fails at epsilon / k
    ([PASS, PASS, BORDER, FAIL], [1, 1, 0, 0], 1),
    ([BORDER, BORDER, BORDER, BORDER], [0, 0, 0, 0], None),
])
def test_bonferroni(counts, rejected, chosen):
  result = _ltt(counts, correction="bonferroni")
  assert result.correction == "bonferroni"
  assert [row.rejected for row in result.table] == [bool(r) for r in rejected]
  assert result.chosen_index == chosen
  assert result.threshold == (1.0 if chosen is None else THRESHOLDS[chosen])


@pytest.mark.parametrize("p, rejected", [
    ([0.01, 0.05, 0.2, 0.01], [True, True, False, False]),  # p == epsilon is rejected
    ([0.2, 0.01, 0.01], [False, False, False]),
    ([0.0, 0.0], [True, True]),
    ([0.050001], [False]),
])
def test_fixed_sequence_rejections(p, rejected):
  got = fixed_sequence_rejections(np.array(p), 0.05)
  assert got.dtype == bool and got.tolist() == rejected


# --- the table ----------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["hoeffding", "bentkus", "hoeffding_bentkus"])
def test_table_reports_each_rows_own_figures(method):
  rng = np.random.default_rng(7)
  n, delta, epsilon = 500, 0.1, 0.1
  true_means = np.array([0.0, 0.01, 0.03, 0.2, 0.04, 0.3])
  losses = rng.uniform(0.0, 2.0 * true_means, size=(n, true_means.size))
  thresholds = [0.95, 0.8, 0.6, 0.4, 0.2, 0.1]
  result = learn_then_test(losses, thresholds, delta, epsilon, method)
  assert result.chosen_index == 2  # a middle row, so a row mix-up would show
  chosen = result.chosen
  assert chosen.threshold == result.threshold == thresholds[2]
  assert chosen.mean_loss == pytest.approx(losses[:, 2].mean(), rel=1e-12)
  assert chosen.p_value == pytest.approx(p_value(losses[:, 2].mean(), n, delta, method),
                                         rel=1e-12)
  for j, row in enumerate(result.table):
    assert row.threshold == thresholds[j]
    assert row.mean_loss == pytest.approx(losses[:, j].mean(), rel=1e-12)
    assert row.p_value == pytest.approx(p_value(row.mean_loss, n, delta, method), rel=1e-12)
  assert (result.rule, result.method, result.correction) == ("ltt", method, "fixed_sequence")
  assert (result.delta, result.epsilon, result.num_examples) == (delta, epsilon, n)


# --- the naive baseline -------------------------------------------------------------------

def test_naive_picks_smallest_threshold_within_delta_even_after_an_excess():
  losses = _binary_losses(20, [1, 6, 2, 4])  # means 0.05, 0.3, 0.1 (== delta), 0.2
  result = naive_threshold(losses, THRESHOLDS, 0.1)
  assert [row.rejected for row in result.table] == [True, False, True, False]
  assert result.chosen_index == 2 and result.threshold == THRESHOLDS[2]
  assert [row.mean_loss for row in result.table] == pytest.approx([0.05, 0.3, 0.1, 0.2])
  assert all(math.isnan(row.p_value) for row in result.table)
  assert (result.rule, result.method, result.correction) == ("naive", "", "")
  # With 20 examples even the exact test cannot certify 0.05 (p = P(Bin(20, 0.1) <= 1) ~ 0.39).
  assert learn_then_test(losses, THRESHOLDS, 0.1, 0.1, "binomial").threshold == 1.0


def test_naive_falls_back_to_never_exit():
  result = naive_threshold(_binary_losses(20, [3, 4, 5, 6]), THRESHOLDS, 0.1)
  assert result.threshold == 1.0 and result.chosen_index is None and result.chosen is None


# --- the guarantee on simulated losses ------------------------------------------------------

def _violation_rates(true_means, delta, epsilon, rules, n=200, trials=300, seed=0):
  """Fraction of trials in which each rule picks a threshold whose true mean exceeds delta
  (the fallback 1.0 never violates), and how often each picks some threshold at all."""
  true_means = np.asarray(true_means)
  thresholds = np.linspace(0.95, 0.05, true_means.size)
  rng = np.random.default_rng(seed)
  violations = dict.fromkeys(rules, 0)
  picked = dict.fromkeys(rules, 0)
  for _ in range(trials):
    losses = (rng.random((n, true_means.size)) < true_means).astype(np.float64)
    for rule, result in zip(rules, calibrate_many(losses, thresholds, delta, epsilon, rules)):
      if result.chosen_index is not None:
        picked[rule] += 1
        violations[rule] += true_means[result.chosen_index] > delta
  return ({r: v / trials for r, v in violations.items()},
          {r: v / trials for r, v in picked.items()})


def test_ltt_keeps_the_guarantee_where_naive_breaks_it():
  delta, epsilon = 0.1, 0.1
  # True loss rises as the threshold falls; ten thresholds sit just above delta.
  true_means = [0.0, 0.02, 0.05, 0.08] + [0.11] * 10 + [0.3]
  rules = ["naive", "ltt_hoeffding_bentkus", "ltt_binomial", "ltt_hoeffding_bentkus_bonferroni"]
  violations, picked = _violation_rates(true_means, delta, epsilon, rules)
  assert violations["naive"] > 0.5  # far above epsilon
  for rule in rules[1:]:
    assert violations[rule] <= epsilon, rule
    assert picked[rule] == 1.0, rule  # the 0.0 column is always certified: not vacuous


def test_exact_ltt_just_above_delta_stays_within_epsilon():
  # Every candidate's true mean is a hair above delta, so every certification is a violation.
  delta, epsilon = 0.1, 0.1
  trials = 300
  violations, _ = _violation_rates([0.1001] * 3, delta, epsilon, ["ltt_binomial", "naive"],
                                   trials=trials, seed=1)
  # The exact test is sized right at epsilon here, so allow three Monte Carlo standard errors.
  assert violations["ltt_binomial"] <= epsilon + 3 * math.sqrt(epsilon * (1 - epsilon) / trials)
  assert violations["naive"] > 0.5


# --- rule names ---------------------------------------------------------------------------

def test_rule_names_and_parse_rule_round_trip():
  names = rule_names()
  assert names[0] == "naive" and len(names) == len(set(names)) == 1 + 2 * len(METHODS)
  parsed = {parse_rule(name) for name in names[1:]}
  assert parsed == {(m, c) for m in METHODS for c in ("fixed_sequence", "bonferroni")}
  for name in names[1:]:
    method, correction = parse_rule(name)
    suffix = "_bonferroni" if correction == "bonferroni" else ""
    assert f"ltt_{method}{suffix}" == name


def _same_result(a: CalibrationResult, b: CalibrationResult):
  assert json.dumps(a.to_dict()) == json.dumps(b.to_dict())  # NaN-safe equality


def test_calibrate_and_calibrate_many_dispatch_each_rule():
  losses = _binary_losses(N, [PASS, BORDER, FAIL, PASS])
  results = calibrate_many(losses, THRESHOLDS, DELTA, EPSILON, rule_names())
  assert len(results) == len(rule_names())
  for name, result in zip(rule_names(), results):
    _same_result(result, calibrate(losses, THRESHOLDS, DELTA, EPSILON, name))
    if name == "naive":
      _same_result(result, naive_threshold(losses, THRESHOLDS, DELTA))
    else:
      method, correction = parse_rule(name)
      assert (result.rule, result.method, result.correction) == ("ltt", method, correction)
      assert result == learn_then_test(losses, THRESHOLDS, DELTA, EPSILON, method, correction)
  by_name = dict(zip(rule_names(), results))
  assert by_name["ltt_hoeffding"].chosen_index == 1
  assert by_name["ltt_hoeffding_bonferroni"].chosen_index == 3
  assert by_name["naive"].chosen_index == 3


# --- serialisation ------------------------------------------------------------------------

@pytest.mark.parametrize("rule", ["ltt_hoeffding_bentkus", "ltt_binomial_bonferroni", "naive"])
def test_to_dict_is_json_ready(rule):
  losses = _binary_losses(N, [PASS, PASS, FAIL, PASS])
  result = calibrate(losses, THRESHOLDS, DELTA, EPSILON, rule)
  out = json.loads(json.dumps(result.to_dict(), allow_nan=False))  # strict JSON
  assert out["threshold"] == result.threshold and out["chosen_index"] == result.chosen_index
  assert out["rule"] == result.rule and out["num_examples"] == N
  assert [row["threshold"] for row in out["table"]] == THRESHOLDS
  assert [row["rejected"] for row in out["table"]] == [r.rejected for r in result.table]
  assert [row["mean_loss"] for row in out["table"]] == [r.mean_loss for r in result.table]
  if rule != "naive":
    assert [row["p_value"] for row in out["table"]] == [r.p_value for r in result.table]
    assert CalibrationResult(**{**out, "table": [ltt.CalibrationRow(**row)
                                                 for row in out["table"]]}) == result
  else:
    assert out["epsilon"] is None and all(row["p_value"] is None for row in out["table"])


def test_calibrate_many_rejects_a_string_and_a_bad_epsilon_for_naive():
  losses = _binary_losses(N, [PASS, PASS, FAIL, PASS])
  with pytest.raises(ValueError, match="list of rule names"):
    ltt.calibrate_many(losses, THRESHOLDS, DELTA, EPSILON, "naive")
  with pytest.raises(ValueError, match="epsilon"):
    calibrate(losses, THRESHOLDS, DELTA, 5.0, "naive")


# --- bad input ----------------------------------------------------------------------------

GOOD = dict(losses=_binary_losses(10, [0, 1, 2]), thresholds=[0.9, 0.5, 0.1], delta=0.2,
            epsilon=0.1)
HALF = np.full((10, 3), 0.5)


def _with(losses_at=None, value=None, **changes):
  kwargs = dict(GOOD, **changes)
  if losses_at is not None:
    losses = kwargs["losses"].copy()
    losses[losses_at] = value
    kwargs["losses"] = losses
  return kwargs


def _num(text):
  """Pattern for a number in a message, whether shown as 1.5 or (NumPy 2) np.float64(1.5)."""
  return rf"(np\.float64\()?{text}\)?"


BAD_SHARED = [  # (kwargs, message pattern); for both learn_then_test and naive_threshold
    (_with((0, 1), 1.5), r"losses\[0, 1\] = " + _num(r"1\.5")),
    (_with((2, 0), -0.25), r"losses\[2, 0\] = " + _num(r"-0\.25")),
    (_with((3, 2), np.nan), r"losses\[3, 2\] = " + _num("nan")),
    (_with((1, 1), np.inf), r"losses\[1, 1\] = " + _num("inf")),
    (_with(losses=np.zeros((0, 3))), r"n = 0"),
    (_with(losses=np.zeros(3)), r"2-D.*shape \(3,\)"),
    (_with(losses=np.zeros((10, 2))), r"2 columns but there are 3 thresholds"),
    (_with(delta=0.0), r"delta must lie strictly between 0 and 1; got 0\.0"),
    (_with(delta=1), r"delta must lie strictly between 0 and 1; got 1\.0"),
    (_with(delta=-0.1), r"delta .*got -0\.1"),
    (_with(delta=1.5), r"delta .*got 1\.5"),
    (_with(delta=float("nan")), r"delta .*got nan"),
    (_with(delta="0.1"), r"delta must be a number.*got '0\.1'"),
    (_with(thresholds=[0.9, 0.9, 0.1]),
     r"strictly decreasing.*\[0\] = " + _num(r"0\.9") + " is followed by " + _num(r"0\.9")),
    (_with(thresholds=[0.1, 0.5, 0.9]),
     r"strictly decreasing.*\[0\] = " + _num(r"0\.1") + " is followed by " + _num(r"0\.5")),
    (_with(thresholds=[1.2, 0.5, 0.1]), r"\[0, 1\]; thresholds\[0\] = " + _num(r"1\.2")),
    (_with(thresholds=[0.9, 0.5, -0.1]), r"\[0, 1\]; thresholds\[2\] = " + _num(r"-0\.1")),
    (_with(thresholds=[0.9, np.nan, 0.1]), r"thresholds\[1\] = " + _num("nan")),
    (_with(thresholds=[]), r"thresholds must be a non-empty"),
]
BAD_LTT = BAD_SHARED + [
    (_with(epsilon=0.0), r"epsilon must lie strictly between 0 and 1; got 0\.0"),
    (_with(epsilon=1.0), r"epsilon .*got 1\.0"),
    (_with(epsilon=-0.5), r"epsilon .*got -0\.5"),
    (_with(epsilon=2), r"epsilon .*got 2\.0"),
    (_with(method="foo"), r"method='foo' is not a p-value method"),
    (_with(correction="holm"), r"correction='holm' is not allowed"),
    (_with(losses=HALF, method="binomial"), r"method='binomial' is exact only for 0/1 losses"),
]


@pytest.mark.parametrize("kwargs, pattern", BAD_LTT)
def test_learn_then_test_rejects_bad_input(kwargs, pattern):
  with pytest.raises(ValueError, match=pattern):
    learn_then_test(**kwargs)


@pytest.mark.parametrize("kwargs, pattern", BAD_SHARED)
def test_naive_threshold_rejects_bad_input(kwargs, pattern):
  kwargs = {k: v for k, v in kwargs.items() if k != "epsilon"}
  with pytest.raises(ValueError, match=pattern):
    naive_threshold(**kwargs)


@pytest.mark.parametrize("call, pattern", [
    (lambda: p_value(0.1, 0, 0.2), r"positive integer; got 0"),
    (lambda: p_value(0.1, 10.0, 0.2), r"positive integer; got 10\.0"),
    (lambda: p_value(1.5, 10, 0.2), r"mean_loss must be finite and in \[0, 1\]; got 1\.5"),
    (lambda: p_value([0.1, -0.1], 10, 0.2), r"mean_loss .*-0\.1"),
    (lambda: p_value(0.1, 10, 1.0), r"delta .*got 1\.0"),
    (lambda: p_value(0.1, 10, 0.2, "bar"), r"method='bar'"),
    (lambda: p_value(0.35, 10, 0.2, "binomial"), "mean_loss=" + _num(r"0\.35") + " with n=10"),
    (lambda: parse_rule("naive"), r"rule='naive' is not a calibration rule"),
    (lambda: parse_rule("ltt_hoeffding_holm"), r"rule='ltt_hoeffding_holm'"),
    (lambda: calibrate(**GOOD, rule="ltt_foo"), r"rule='ltt_foo' is not a calibration rule"),
    (lambda: calibrate(**GOOD, rule="LTT_hoeffding"), r"rule='LTT_hoeffding'"),
    (lambda: calibrate(**dict(GOOD, losses=HALF), rule="ltt_binomial"), r"0/1 losses"),
])
def test_other_bad_input(call, pattern):
  with pytest.raises(ValueError, match=pattern):
    call()
