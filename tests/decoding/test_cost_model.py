"""The cost model: each piece of a token's work priced by hand, summed over a decode."""

import numpy as np
import pytest

from calm_jax.decoding import cost_model
from calm_jax.decoding.exit_rule import ExitConfig
from calm_jax.model.config import T5Config

# d 8, 2 heads of 4 (inner 8), d_ff 16 gated, V 50, 4 decoder layers, input length 5.
CONFIG = T5Config(vocab_size=50, d_model=8, d_kv=4, d_ff=16, num_layers=1,
                  num_decoder_layers=4, num_heads=2, feed_forward_proj="gated-gelu")
S = 5
LAYER = 6 * 8 * 8 + 3 * 8 * 16 + 3 * 8  # self q,k,v,o + cross q,o; gated FFN; three norms
HEAD = 8 * 50 + 8  # d x V and the final norm
SOFTMAX_CHECK = 8 * 50 + 50  # the head product and its softmax
KV = 2 * 8 * 8 + 8  # one skipped layer's norm and K, V projections


def layer_at(t):  # one layer at output position t: weights + attention to t+1 and S positions
  return LAYER + 2 * 8 * (t + 1 + S)


def test_prices_of_each_piece():
  prices = cost_model.work_prices(CONFIG, ExitConfig(measure="softmax_diff"), S)
  assert (prices.layer_weights, prices.head, prices.kv_write) == (LAYER, HEAD, KV)
  assert prices.first_check == prices.later_check == SOFTMAX_CHECK
  topk = cost_model.work_prices(CONFIG, ExitConfig(measure="softmax_topk", top_k=10), S)
  assert (topk.first_check, topk.later_check) == (SOFTMAX_CHECK, 9 * 10)
  learned = cost_model.work_prices(CONFIG, ExitConfig(measure="meta_mlp"), S,
                                   {"w": np.zeros((8, 100)), "b": np.zeros(100)})
  assert learned.first_check == learned.later_check == 900


def test_softmax_decode_work_by_hand():
  # Example 0: exits at 2 then 4 (then EOS); example 1: exits at 1, then nothing.
  exits = np.array([[2, 4], [1, 0]])
  config = ExitConfig(measure="softmax_diff", threshold=0.5)
  prices = cost_model.work_prices(CONFIG, config, S)
  work = cost_model.decode_work(exits, prices, config, 4)
  # Checks at every exit point reached (all layers are exit points); the check's logits give
  # the token, so no separate head; skipped layers get propagated K/V.
  expected = (2 * layer_at(0) + 2 * SOFTMAX_CHECK + 2 * KV
              + 4 * layer_at(1) + 4 * SOFTMAX_CHECK
              + 1 * layer_at(0) + 1 * SOFTMAX_CHECK + 3 * KV)
  assert work == pytest.approx(expected)
  # lambda = 1: the same tokens at layer 4, checked only at layer 4.
  never = cost_model.decode_work(np.array([[4, 4], [4, 0]]), prices,
                                 ExitConfig(measure="softmax_diff", threshold=1.0), 4)
  assert never == pytest.approx(4 * (2 * layer_at(0) + layer_at(1)) + 3 * SOFTMAX_CHECK)
  assert cost_model.ideal_speedup(never, work) == pytest.approx(never / expected)


def test_hidden_state_measure_pays_the_head_and_checks_at_every_exit_point():
  config = ExitConfig(measure="state_saturation", min_exit_layer=2, exit_interval=2)
  prices = cost_model.work_prices(CONFIG, config, S)
  check = 3 * 8  # a few d-wide products
  work = cost_model.decode_work(np.array([[2, 4]]), prices, config, 4)
  assert work == pytest.approx(2 * layer_at(0) + check + HEAD + 2 * KV
                               + 4 * layer_at(1) + 2 * check + HEAD)
  # At lambda = 1 it still checks at every exit point (its state needs no logits).
  never = cost_model.decode_work(np.array([[4, 4]]), prices,
                                 ExitConfig(measure="state_saturation", min_exit_layer=2,
                                            exit_interval=2, threshold=1.0), 4)
  assert never == pytest.approx(4 * layer_at(0) + 4 * layer_at(1) + 4 * check + 2 * HEAD)


def test_subset_measure_emits_early_exits_without_the_head():
  config = ExitConfig(measure="softmax_topk", top_k=10, threshold=0.5)
  prices = cost_model.work_prices(CONFIG, config, S)
  work = cost_model.decode_work(np.array([[3, 4]]), prices, config, 4)
  assert work == pytest.approx(3 * layer_at(0) + SOFTMAX_CHECK + 2 * 90 + KV
                               + 4 * layer_at(1) + SOFTMAX_CHECK + 3 * 90 + HEAD)


def test_static_full_compute_and_oracle():
  static = ExitConfig(measure="static", static_exit_layer=1)
  prices = cost_model.work_prices(CONFIG, static, S)
  assert cost_model.decode_work(np.array([[1]]), prices, static, 4) == pytest.approx(
      layer_at(0) + HEAD + 3 * KV)
  full_compute = ExitConfig(measure="static", static_exit_layer=1, propagation="full_compute")
  assert cost_model.decode_work(np.array([[1]]), prices, full_compute, 4) == pytest.approx(
      4 * layer_at(0) + HEAD)
  # The oracle checks at every exit point whatever lambda is (it ignores the threshold).
  oracle = ExitConfig(measure="oracle", threshold=1.0)
  prices = cost_model.work_prices(CONFIG, oracle, S)
  assert cost_model.decode_work(np.array([[2]]), prices, oracle, 4) == pytest.approx(
      4 * layer_at(0) + HEAD + 2 * layer_at(0) + 2 * SOFTMAX_CHECK + 2 * KV)
  assert cost_model.ideal_speedup(1.0, 0.0) is None


def test_synchronized_work_reads_the_deep_layers_once_per_pass():
  layers = CONFIG.num_decoder_layers
  softmax = ExitConfig(measure="softmax_diff", decoding="synchronized", shallow_exit_layer=1,
                       threshold=0.5)
  steps, passes = np.array([5, 3]), np.array([2, 3])  # 8 shallow steps, 5 deep passes
  prices = cost_model.work_prices(CONFIG, softmax, input_len=S)
  expected = 8 * (LAYER + SOFTMAX_CHECK) + 5 * (3 * LAYER + HEAD)
  assert cost_model.synchronized_work(steps, passes, prices, softmax, layers) == expected
  state = ExitConfig(measure="state_saturation", decoding="synchronized", shallow_exit_layer=2,
                     threshold=0.5)
  prices = cost_model.work_prices(CONFIG, state, input_len=S)
  expected = 8 * (2 * LAYER + prices.first_check + HEAD) + 5 * (2 * LAYER + HEAD)
  assert cost_model.synchronized_work(steps, passes, prices, state, layers) == expected
  never = ExitConfig(measure="softmax_diff", decoding="synchronized", threshold=1.0)
  prices = cost_model.work_prices(CONFIG, never, input_len=S)  # no head at layer s
  expected = 8 * LAYER + 5 * (3 * LAYER + HEAD)
  assert cost_model.synchronized_work(steps, passes, prices, never, layers) == expected


def test_synchronized_work_with_attention_compares_with_greedy():
  """FREE at lambda = 1 (a step of layer 1 without the head, a pass of layers 2..4 per
  token) reads what greedy decoding does, attention included."""
  never = ExitConfig(measure="softmax_diff", decoding="synchronized", threshold=1.0)
  exit_layers = np.array([[4, 4, 4], [4, 4, 0]])  # five tokens at positions 0-2, 0-1
  ones = np.array([3, 2])  # a shallow step and a deep pass per token
  prices = cost_model.work_prices(CONFIG, never, input_len=S)
  free = cost_model.synchronized_work(ones, ones, prices, never, 4, exit_layers)
  static = ExitConfig(measure="static", static_exit_layer=4)
  greedy = cost_model.decode_work(exit_layers, cost_model.work_prices(CONFIG, static, S),
                                  static, 4)
  assert free == greedy == sum(4 * layer_at(t) + HEAD for t in (0, 1, 2, 0, 1))


def test_with_fixed_part_is_amdahls_law():
  # A loop that would gain 3x, with 40% of the reference's time fixed: 1 / (0.4 + 0.6 / 3).
  assert cost_model.with_fixed_part(3.0, 0.4) == pytest.approx(1 / 0.6)
  assert cost_model.with_fixed_part(3.0, 0.0) == pytest.approx(3.0)
  assert cost_model.with_fixed_part(0.5, 0.5) == pytest.approx(1 / 1.5)  # slower loop
  assert cost_model.with_fixed_part(None, 0.3) is None
  for share in (-0.1, 1.0, 1.5):
    with pytest.raises(ValueError, match=f"fixed_share must be in \\[0, 1\\), got {share}"):
      cost_model.with_fixed_part(2.0, share)
