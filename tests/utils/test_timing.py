"""Interleaved timing: every configuration once per round, on the clock asked for."""

import pytest

from calm_jax.utils import timing


def test_rounds_interleave_every_configuration(monkeypatch):
  calls, ticks = [], iter(range(100))
  monkeypatch.setitem(timing.CLOCKS, "cpu", lambda: next(ticks))
  fns = {name: (lambda name=name: calls.append(name)) for name in ("a", "b")}
  times = timing.interleaved(fns, rounds=3, clock="cpu")
  assert calls == ["a", "b"] + ["a", "b"] * 3  # one warm-up call each, then a, b per round
  assert times == {"a": [1, 1, 1], "b": [1, 1, 1]}  # each call spans one tick
  assert timing.round_ratios({"a": [2.0, 4.0], "b": [1.0, 1.0]}, "a", "b").tolist() == [2, 4]


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match="clock='gpu'; allowed: wall, cpu"):
    timing.interleaved({"a": lambda: None}, rounds=1, clock="gpu")
  with pytest.raises(ValueError, match="rounds must be >= 1, got 0"):
    timing.interleaved({"a": lambda: None}, rounds=0)
