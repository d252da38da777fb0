"""Rate lines of long phases (calm_jax.utils.progress) and the grid decode's progress calls."""

import jax
import numpy as np

from calm_jax.decoding.exit_rule import ExitConfig
from calm_jax.decoding.threshold_grid import decode_threshold_grid
from calm_jax.model.config import T5Config
from calm_jax.model.t5 import init_params
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


def test_grid_decode_reports_every_pair_once_filled():
  """decode_threshold_grid calls progress with a growing count that ends at K * B."""
  config = T5Config(vocab_size=40, d_model=16, d_kv=4, d_ff=24, num_layers=1,
                    num_decoder_layers=4, num_heads=2, feed_forward_proj="gated-gelu",
                    tie_word_embeddings=False)
  params = init_params(config, jax.random.PRNGKey(0))
  ids = np.random.RandomState(0).randint(2, 40, (6, 5)).astype(np.int32)
  calls = []
  grid = decode_threshold_grid(config, params, ids, None, thresholds=[1.0, 0.9, 0.5, 0.1],
                               exit=ExitConfig(measure="state_saturation"), max_decode_len=4,
                               progress=lambda filled, decoded: calls.append((filled, decoded)))
  filled = [c[0] for c in calls]
  assert filled == sorted(filled) and filled[-1] == 4 * 6
  assert calls[-1][1] == grid.decoded_pairs > 0
