"""Decoder layers over per-row windows of positions (calm_jax.model.window) against the full
model run one position at a time (incremental.decoder_step)."""

import jax
import jax.numpy as jnp
import numpy as np

from calm_jax.model.config import T5Config
from calm_jax.model.incremental import decoder_step, init_decoder_cache
from calm_jax.model.t5 import causal_self_bias, encode
from calm_jax.model.window import window_layer_step, window_self_bias

CONFIG = T5Config(vocab_size=40, d_model=16, d_kv=4, d_ff=24, num_layers=1,
                  num_decoder_layers=4, num_heads=2, feed_forward_proj="gated-gelu",
                  tie_word_embeddings=False, relative_attention_num_buckets=8,
                  relative_attention_max_distance=16)
T, SHALLOW, WIDTH = 8, 1, 4
STARTS = np.array([2, 0, 4])  # each row's first pending position
PENDING = np.array([3, 1, 2])  # positions each row runs deep (start .. start + count - 1)


def _one_by_one(params, cache, tokens):
  """Every layer's state [T, L, B, d] and the cache after the full model on tokens [B, T]."""
  step = jax.jit(lambda cache, token, position: decoder_step(CONFIG, params, cache, token,
                                                             position))
  states = []
  for position in range(T):
    layer_states, cache = step(cache, tokens[:, position], jnp.int32(position))
    states.append(layer_states)
  return jnp.stack(states), cache


def test_deep_layers_over_pending_positions_equal_one_by_one(quick_random_params):
  params = quick_random_params(CONFIG)
  rng = np.random.RandomState(0)
  ids = jnp.asarray(rng.randint(2, 40, (3, 5)))
  tokens = jnp.asarray(rng.randint(2, 40, (3, T)))
  empty = jax.jit(lambda ids: init_decoder_cache(CONFIG, params, encode(CONFIG, params, ids),
                                                 None, T))(ids)
  full_states, full_cache = _one_by_one(params, empty, tokens)
  # The shallow layer ran at every position (the full cache holds its K/V); the deep layers
  # only before each row's start. Wipe their K/V at and after it, then run the deep layers
  # once over each row's pending window.
  after_start = np.arange(T)[None, :] >= STARTS[:, None]  # [B, T]
  deep = (np.arange(CONFIG.num_decoder_layers) >= SHALLOW)[:, None, None]  # [L, 1, 1]
  wipe = jnp.asarray(deep & after_start[None])[:, :, None, :, None]  # [L, B, 1, T, 1]
  cache = full_cache.replace(self_k=jnp.where(wipe, 0.0, full_cache.self_k),
                             self_v=jnp.where(wipe, 0.0, full_cache.self_v))
  window = STARTS[:, None] + np.arange(WIDTH)[None, :]  # [B, W]
  writes = jnp.asarray(np.arange(WIDTH)[None, :] < PENDING[:, None])  # [B, W]
  shallow = full_states[:, SHALLOW - 1]  # [T, B, d]
  x = jnp.stack([shallow[np.minimum(window[row], T - 1), row] for row in range(3)])  # [B, W, d]
  bias = window_self_bias(causal_self_bias(CONFIG, params, T), jnp.asarray(STARTS), WIDTH)

  @jax.jit
  def deep_pass(cache, x):
    for layer in range(SHALLOW, CONFIG.num_decoder_layers):
      x, cache = window_layer_step(CONFIG, params, cache, layer, x, jnp.asarray(STARTS),
                                   writes, bias)
    return x, cache

  out, cache = deep_pass(cache, x)
  for row in range(3):
    for offset in range(PENDING[row]):
      position = STARTS[row] + offset
      np.testing.assert_allclose(out[row, offset], full_states[position, -1, row],
                                 atol=1e-5, err_msg=f"row {row} position {position}")
  # The pending positions hold the deep layers' real K/V again; nothing else was written.
  written = (np.arange(T)[None, :] < (STARTS + PENDING)[:, None]) | ~after_start  # [B, T]
  by_position = lambda stored: np.asarray(stored).transpose(1, 3, 0, 2, 4)  # [B, T, L, H, dh]
  for stored, reference in [(cache.self_k, full_cache.self_k), (cache.self_v, full_cache.self_v)]:
    np.testing.assert_allclose(by_position(stored)[written], by_position(reference)[written],
                               atol=1e-5)
    assert np.all(by_position(stored)[~written][:, SHALLOW:] == 0)
