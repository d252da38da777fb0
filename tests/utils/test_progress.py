"""Rate lines of long phases (calm_jax.utils.progress). The grid decode's progress calls:
tests/decoding/test_threshold_grid.py."""

from calm_jax.utils.progress import RateLine, duration


class FakeClock:
  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


def test_duration():
  assert [duration(s) for s in (0, 9.6, 60, 184)] == ["0s", "10s", "1m00s", "3m04s"]


def test_rate_line_prints_every_interval_and_at_the_end():
  clock, lines = FakeClock(), []
  line = RateLine("calibrate", 100, "pairs", interval=10.0, clock=clock, write=lines.append)
  clock.now += 5
  line(10)  # 5 s since the start: too soon
  assert lines == []
  clock.now += 5
  line(20, "4 decoded")  # 10 s: 2 pairs/s, 80 left = 40 s
  assert lines == ["[calibrate] 20/100 pairs (4 decoded), 2.0/s, ETA 40s"]
  clock.now += 1
  line(30)
  assert len(lines) == 1
  clock.now += 39
  line(100)  # the end always prints, without an ETA
  assert lines[-1] == "[calibrate] 100/100 pairs, 2.0/s"
  clock.now += 60
  line(100)  # ... but once
  assert len(lines) == 2
