"""Rate lines for long phases: `[label] done/total unit, rate/s, ETA`, printed by process 0
at most every `interval` seconds and once at the end."""

from __future__ import annotations

import time
from typing import Callable

import jax


def duration(seconds: float) -> str:
  """12s, 3m04s."""
  minutes, seconds = divmod(int(round(seconds)), 60)
  return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


class RateLine:
  """Call with the count done so far; prints a line when `interval` seconds have passed
  since the last one, and once when the count reaches `total` (later calls print nothing)."""

  def __init__(self, label: str, total: int, unit: str, interval: float = 10.0,
               clock: Callable[[], float] = time.perf_counter,
               write: Callable[[str], None] = lambda line: print(line, flush=True)):
    self.label, self.total, self.unit, self.interval = label, total, unit, interval
    self.clock, self.write = clock, write
    self.started = self.last = clock()
    self.finished = False

  def __call__(self, done: int, note: str = "") -> None:
    now = self.clock()
    if self.finished or (done < self.total and now - self.last < self.interval):
      return
    self.last, self.finished = now, done >= self.total
    if jax.process_index() != 0:
      return
    rate = done / max(now - self.started, 1e-9)
    eta = f", ETA {duration((self.total - done) / rate)}" if 0 < done < self.total else ""
    note = f" ({note})" if note else ""
    self.write(f"[{self.label}] {done}/{self.total} {self.unit}{note}, {rate:.1f}/s{eta}")
