"""The evaluate mode's clock: per-round ratios against each configuration's reference, and
rounds saved to / read back from a resume store."""

import numpy as np
import pytest

from calm_jax.modes import evaluate_timing
from calm_jax.modes.evaluate_timing import Configuration
from calm_jax.modes.resume import ResumeStore


def _configuration(name, reference):
  return Configuration(name, reference, lambda: None, lambda: None)


def _scripted_rounds(monkeypatch, rounds, calls):
  """evaluate_timing.interleaved replaced: one round per call, round r of `rounds`
  ({name: [seconds per round]}) on each clock's r-th call; `calls` records (warm, names)."""
  count = {}

  def one_round(fns, number, warm):
    assert number == 1
    calls.append((warm, list(fns)))
    index = count[tuple(fns)] = count.get(tuple(fns), -1) + 1
    return {name: [rounds[name][index % len(rounds[name])]] for name in fns}
  monkeypatch.setattr(evaluate_timing, "interleaved", one_round)


def test_speedup_is_the_median_per_round_ratio_with_its_spread(monkeypatch):
  # Round times as if the machine slowed down 2x in round 2: per-round ratios stay 2, 2, 2
  # against the reference, while ratios of the medians would not separate drift from gain.
  rounds = {"ref": [1.0, 2.0, 1.0], "fast": [0.5, 1.0, 0.5], "odd": [1.0, 1.0, 0.25]}
  calls = []
  _scripted_rounds(monkeypatch, rounds, calls)
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


def test_saved_rounds_are_read_back_and_only_the_others_timed(tmp_path, monkeypatch):
  names = ["ref", "fast"]
  store = ResumeStore(str(tmp_path / "store"), {"run": 1})
  # A killed run finished throughput round 0 (values no clock below gives) and round 2.
  for index, seconds in ((0, [8.0, 2.0]), (2, [6.0, 3.0])):
    store.save(f"timing_throughput_{index}", {"names": np.array(names),
                                              "seconds": np.array(seconds)})
  calls = []
  _scripted_rounds(monkeypatch, {"ref": [1.0], "fast": [0.5]}, calls)
  configurations = [_configuration("ref", "ref"), _configuration("fast", "ref")]
  clocks = evaluate_timing.time_configurations(configurations, 3, store=store)
  # Throughput: only round 1 timed (warmed first); latency: 3 rounds, warmed once.
  assert calls == [(True, names)] + [(True, names), (False, names), (False, names)]
  assert clocks["throughput"]["fast"].spread == [2.0, 4.0]  # 8/2, 1/0.5, 6/3
  assert clocks["throughput"]["ref"].seconds == 6.0  # median of 8, 1, 6
  assert clocks["latency"]["fast"].spread == [2.0, 2.0]
  # The timed rounds were saved: a second restart times nothing.
  reopened = ResumeStore(store.directory, {"run": 1})
  np.testing.assert_array_equal(reopened.load("timing_throughput_1")["seconds"], [1.0, 0.5])
  calls.clear()
  again = evaluate_timing.time_configurations(configurations, 3, store=reopened)
  assert calls == [] and again == clocks
  # Rounds of other configurations are refused, naming both lists.
  with pytest.raises(ValueError, match=r"timing_throughput_0 timed \['ref', 'fast'\], but this "
                     r"run times \['ref', 'slow'\]"):
    evaluate_timing.time_configurations([configurations[0], _configuration("slow", "ref")], 3,
                                        store=reopened)
