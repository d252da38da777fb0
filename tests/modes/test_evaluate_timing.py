"""The evaluate mode's clock: per-round ratios against each configuration's reference."""

import pytest

from calm_jax.modes import evaluate_timing
from calm_jax.modes.evaluate_timing import Configuration


def _configuration(name, reference):
  return Configuration(name, reference, lambda: None, lambda: None)


def test_speedup_is_the_median_per_round_ratio_with_its_spread(monkeypatch):
  # Round times as if the machine slowed down 2x in round 2: per-round ratios stay 2, 2, 2
  # against the reference, while ratios of the medians would not separate drift from gain.
  rounds = {"ref": [1.0, 2.0, 1.0], "fast": [0.5, 1.0, 0.5], "odd": [1.0, 1.0, 0.25]}
  monkeypatch.setattr(evaluate_timing, "interleaved", lambda fns, r: {k: rounds[k] for k in fns})
  configurations = [_configuration("ref", "ref"), _configuration("fast", "ref"),
                    _configuration("odd", "ref")]
  clocks = evaluate_timing.time_configurations(configurations, 3)
  for clock in ("throughput", "latency"):
    figures = clocks[clock]
    assert figures["ref"].speedup == 1.0 and figures["ref"].spread == [1.0, 1.0]
    assert figures["fast"].speedup == 2.0 and figures["fast"].seconds == 0.5
    assert figures["odd"].speedup == 2.0  # ratios 1, 2, 4
    assert figures["odd"].spread == [1.0, 4.0]


def test_configurations_are_checked():
  with pytest.raises(ValueError, match="names must be distinct"):
    evaluate_timing.time_configurations([_configuration("a", "a")] * 2, 5)
  with pytest.raises(ValueError, match="'a' refers to 'b', which is not timed"):
    evaluate_timing.time_configurations([_configuration("a", "b")], 5)
