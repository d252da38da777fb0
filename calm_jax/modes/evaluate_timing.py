"""The evaluate mode's clock: every configuration timed in the same interleaved rounds.

This CPU (and any shared machine) drifts by tens of percent over minutes, so timing one
configuration after another puts the drift into every ratio. Every configuration here is
decoded once per round, round after round, and a speedup is the median over rounds of
(reference time / configuration time) in the same round, with the lowest and highest
round's ratio as its spread. Two clocks run: throughput (the whole test split in one
batch) and latency (a sample of examples decoded one at a time, batch 1).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from calm_jax.utils.timing import interleaved, round_ratios


@dataclasses.dataclass(frozen=True)
class Configuration:
  """One decoding configuration to time, and the row its speedup is measured against."""

  name: str
  reference: str  # name of the configuration its speedups divide (itself for a reference)
  run_batch: Callable[[], Any]  # decodes the test split as one batch
  run_sample: Callable[[], Any]  # decodes the latency sample one example at a time


@dataclasses.dataclass(frozen=True)
class Timing:
  """One clock's figures for one configuration."""

  seconds: float  # median seconds of one call over the rounds
  speedup: float  # median over rounds of reference seconds / these seconds
  spread: List[float]  # [lowest, highest] per-round speedup

  def as_dict(self) -> Dict[str, Any]:
    return dataclasses.asdict(self)


def _timings(configurations: List[Configuration], times: Dict[str, List[float]]
             ) -> Dict[str, Timing]:
  out = {}
  for config in configurations:
    ratios = round_ratios(times, config.reference, config.name)  # [rounds]
    out[config.name] = Timing(float(np.median(times[config.name])), float(np.median(ratios)),
                              [float(ratios.min()), float(ratios.max())])
  return out


def time_configurations(configurations: List[Configuration], rounds: int,
                        progress: Optional[Callable[[str], None]] = None
                        ) -> Dict[str, Dict[str, Timing]]:
  """{'throughput': {name: Timing}, 'latency': {name: Timing}} over `rounds` interleaved
  rounds of every configuration (each called once untimed first: compilation)."""
  names = [config.name for config in configurations]
  if len(set(names)) != len(names):
    raise ValueError(f"configuration names must be distinct, got {names}")
  known = set(names)
  for config in configurations:
    if config.reference not in known:
      raise ValueError(f"configuration {config.name!r} refers to {config.reference!r}, "
                       "which is not timed")
  result = {}
  for clock, attribute in (("throughput", "run_batch"), ("latency", "run_sample")):
    if progress is not None:
      progress(f"{clock}: {len(configurations)} configurations x {rounds} interleaved rounds")
    times = interleaved({c.name: getattr(c, attribute) for c in configurations}, rounds)
    result[clock] = _timings(configurations, times)
  return result
