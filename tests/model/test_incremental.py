"""Incremental decoding with the KV cache (calm_jax.model.incremental) against the
teacher-forced forward; writing one layer's keys and values. Greedy decoding on the cache:
tests/decoding/test_greedy.py."""

import jax
import jax.numpy as jnp
import numpy as np

import calm_jax
from calm_jax.model.incremental import decoder_step, init_decoder_cache, write_self_kv
from calm_jax.model.t5 import encode, shift_right


def test_incremental_states_equal_teacher_forced(imported_t5, padded_inputs):
  _, config, params = imported_t5
  ids, mask = padded_inputs(config.vocab_size)
  targets = np.random.RandomState(1).randint(2, config.vocab_size, (4, 9))
  decoder_inputs = shift_right(config, jnp.asarray(targets))
  teacher = calm_jax.forward(config, params, ids, decoder_inputs, mask).hidden_states
  cache = init_decoder_cache(config, params, encode(config, params, ids, mask), mask, 9)
  step = jax.jit(lambda cache, token, t: decoder_step(config, params, cache, token, t))
  for position in range(9):
    states, cache = step(cache, decoder_inputs[:, position], jnp.int32(position))
    assert states.shape == (config.num_decoder_layers, 4, config.d_model)
    np.testing.assert_allclose(states, teacher[:, :, position], atol=1e-4, rtol=0)


def test_write_self_kv_fills_one_layer_and_position(imported_t5, padded_inputs):
  _, config, params = imported_t5
  ids, mask = padded_inputs(config.vocab_size)
  cache = init_decoder_cache(config, params, encode(config, params, ids, mask), mask, 6)
  x = jnp.ones((4, 1, config.d_model))
  written = write_self_kv(config, params, cache, jnp.int32(2), x, jnp.int32(3))
  changed = np.argwhere(np.any(np.asarray(written.self_k) != 0, axis=(1, 2, 4)))
  np.testing.assert_array_equal(changed, [[2, 3]])  # (layer, position)
  # Equals the layer's own norm + K projection applied directly.
  layer = jax.tree.map(lambda p: p[2], params["decoder"]["layers"])
  normed = x / np.sqrt(np.mean(np.square(x), -1, keepdims=True) + config.layer_norm_epsilon)
  normed = normed * np.asarray(layer["self_attn_norm"]["scale"])
  keys = np.asarray(normed[:, 0] @ np.asarray(layer["self_attn"]["k"]["kernel"]))
  keys = keys.reshape(4, config.num_heads, config.d_kv)
  np.testing.assert_allclose(written.self_k[2, :, :, 3], keys, atol=1e-5, rtol=0)
