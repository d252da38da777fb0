"""The evaluate mode's clock: every configuration timed in the same interleaved rounds.

This CPU (and any shared machine) drifts by tens of percent over minutes, so timing one
configuration after another puts the drift into every ratio. Every configuration here is
decoded once per round, round after round, and a speedup is the median over rounds of
(reference time / configuration time) in the same round, with the lowest and highest
round's ratio as its spread. Two clocks run: throughput (the whole test split in one
batch) and latency (a sample of examples decoded one at a time, batch 1).

Given a store (the evaluate run's resume store), each finished round's seconds are saved
as the round ends, and a restarted run reads the saved rounds back and times only the
rest, so a killed run's measurements are kept, not taken again. Times come from
`utils.timing.CLOCKS['wall']`, looked up at each call: tests replace it with a
deterministic clock to compare whole reports byte for byte.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Protocol

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


class RoundStore(Protocol):
  """Where finished rounds are kept (modes.resume.ResumeStore)."""

  def load(self, key: str) -> Optional[Dict[str, np.ndarray]]: ...

  def save(self, key: str, arrays: Dict[str, np.ndarray]) -> None: ...


def _saved_round(store: Optional[RoundStore], key: str, names: List[str]
                 ) -> Optional[List[float]]:
  """A round's seconds per configuration (in `names` order) when the store holds it."""
  saved = store.load(key) if store is not None else None
  if saved is None:
    return None
  if saved["names"].tolist() != names:
    raise ValueError(f"the resume store's {key} timed {saved['names'].tolist()}, but this "
                     f"run times {names}")
  return [float(s) for s in saved["seconds"]]


def _clock_rounds(fns: Dict[str, Callable[[], Any]], rounds: int, clock: str,
                  store: Optional[RoundStore]) -> Dict[str, List[float]]:
  """Seconds per configuration per round [rounds] on one clock: rounds the store holds
  read back, the others timed (after one untimed call of each: compilation) and saved as
  each ends."""
  names = list(fns)
  per_round = []  # [rounds][configurations]
  warm = True
  for index in range(rounds):
    key = f"timing_{clock}_{index}"
    seconds = _saved_round(store, key, names)
    if seconds is None:
      times = interleaved(fns, 1, warm=warm)
      warm = False
      seconds = [times[name][0] for name in names]
      if store is not None:
        store.save(key, {"names": np.array(names), "seconds": np.array(seconds, np.float64)})
    per_round.append(seconds)
  return {name: [round_seconds[i] for round_seconds in per_round]
          for i, name in enumerate(names)}


def time_configurations(configurations: List[Configuration], rounds: int,
                        progress: Optional[Callable[[str], None]] = None,
                        store: Optional[RoundStore] = None) -> Dict[str, Dict[str, Timing]]:
  """{'throughput': {name: Timing}, 'latency': {name: Timing}} over `rounds` interleaved
  rounds of every configuration (each called once untimed first: compilation); with a
  `store`, rounds it holds are read back and new rounds saved."""
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
    times = _clock_rounds({c.name: getattr(c, attribute) for c in configurations}, rounds,
                          clock, store)
    result[clock] = _timings(configurations, times)
  return result
