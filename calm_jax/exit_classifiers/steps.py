"""The learned exit classifiers one position at a time, as the decoder calls them.

Each function computes, for the current token of every row, what
`teacher_forced.classifier_logits_teacher_forced` computes for that layer and position of a
whole sequence.
"""

from __future__ import annotations

from typing import Any, Tuple

import jax.numpy as jnp

from calm_jax.exit_classifiers.modules import PositionAttention
from calm_jax.exit_classifiers.registry import (apply_classifier, build_classifier,
                                                classifier_options, initial_lstm_carry_shape)

Array = jnp.ndarray
Params = Any


def state_logits(name: str, params: Params, hidden: Array) -> Array:
  """meta_linear / meta_mlp: hidden [..., d] -> logits [..., 2]."""
  return apply_classifier(name, params, hidden)


def three_state_logits(params: Params, states: Array) -> Array:
  """three_state_mlp: the last three exit points' states [..., 3, d] (oldest first) ->
  logits [..., 2]."""
  return apply_classifier("three_state_mlp", params, states)


def initial_lstm_carry(params: Params, batch: int) -> Tuple[Array, Array]:
  """The LSTM's zero carry before a token's first exit point, each [B, n, w]."""
  options = classifier_options("lstm", params)
  return initial_lstm_carry_shape(batch, options["num_layers"], options["width"])


def lstm_step(params: Params, carry: Tuple[Array, Array], hidden: Array):
  """One exit point of the LSTM: (carry, hidden [B, d]) -> (carry, logits [B, 2])."""
  return apply_classifier("lstm", params, carry, hidden)


def attention_entry(params: Params, hidden: Array) -> Tuple[Array, Array]:
  """What a position leaves for later positions at one layer: keys and values of states
  hidden [B, d], each [B, H, dh] float32. The same at every layer (the classifier is
  shared), so state propagation computes it once per exit state."""
  module = build_classifier("attention", params)
  embedded = module.apply({"params": params}, hidden, method=PositionAttention.embed)
  return module.apply({"params": params}, embedded, method=PositionAttention.keys_values)


def attention_step_logits(params: Params, hidden: Array, keys: Array, values: Array,
                          position: Array) -> Array:
  """Logits [R, 2] of position `position` from its states hidden [R, d] and the keys and
  values [R, H, T, dh] of this layer's earlier positions (entries at `position` and after
  are ignored)."""
  module = build_classifier("attention", params)
  embedded = module.apply({"params": params}, hidden[:, None],
                          method=PositionAttention.embed)  # [R, 1, w]
  own_keys, own_values = module.apply({"params": params}, embedded,
                                      method=PositionAttention.keys_values)  # [R, 1, H, dh]
  length = keys.shape[2]
  earlier = jnp.broadcast_to(jnp.arange(length) < position, (hidden.shape[0], 1, length))
  return module.apply({"params": params}, embedded, own_keys, own_values, keys, values,
                      earlier, method=PositionAttention.step)[:, 0]


def init_attention_memory(params: Params, num_layers: int, batch: int,
                          max_decode_len: int) -> Tuple[Array, Array]:
  """The decoder's store of earlier positions for the attention classifier: keys and
  values, each [L, B, H, T, dh] float32 (zeros). Memory: 2 * L * B * T * width * 4 bytes,
  e.g. 8 layers, batch 64, 256 positions, width 64: 64 MiB."""
  options = classifier_options("attention", params)
  heads = options["num_heads"]
  shape = (num_layers, batch, heads, max_decode_len, options["width"] // heads)
  zeros = jnp.zeros(shape, jnp.float32)
  return zeros, zeros
