"""Wall-clock timing that survives a drifting machine: interleaved rounds.

A shared CPU's speed drifts by tens of percent over minutes, so timing configuration A for a
while and then B puts the drift straight into A/B. `interleaved` times every configuration
once per round, for several rounds, so the drift hits all of them alike; ratios are then
taken round by round (`round_ratios`), and their median and spread are what a report states.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Mapping

import jax
import numpy as np


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def interleaved(fns: Mapping[str, Callable[[], Any]], rounds: int,
                warm: bool = True, clock: str = "wall") -> Dict[str, List[float]]:
  """Seconds of each call of `fns` (name -> callable) in each of `rounds` rounds; every
  callable is first called once untimed (compilation) when `warm`.

  `clock` 'wall' is elapsed time (what a user waits); 'cpu' is the CPU time this process
  spent (all its threads), which other processes' load on the machine disturbs far less:
  benchmarks run beside other work compare configurations by it."""
  if rounds < 1:
    raise ValueError(f"rounds must be >= 1, got {rounds!r}")
  if clock not in CLOCKS:
    raise ValueError(f"clock={clock!r}; allowed: {', '.join(CLOCKS)}")
  now = CLOCKS[clock]
  if warm:
    for fn in fns.values():
      jax.block_until_ready(fn())
  times: Dict[str, List[float]] = {name: [] for name in fns}
  for _ in range(rounds):
    for name, fn in fns.items():
      start = now()
      jax.block_until_ready(fn())
      times[name].append(now() - start)
  return times


def medians(times: Mapping[str, List[float]]) -> Dict[str, float]:
  return {name: float(np.median(t)) for name, t in times.items()}


def round_ratios(times: Mapping[str, List[float]], reference: str, name: str) -> np.ndarray:
  """[rounds] time of `reference` / time of `name`, round by round (a speedup per round)."""
  return np.asarray(times[reference]) / np.asarray(times[name])
