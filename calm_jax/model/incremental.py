"""Incremental decoding: one output position at a time, one decoder layer at a time.

The self-attention cache holds every decoder layer's keys and values for every output
position, written in place at (layer, position). Cross-attention keys and values are
computed once per input for all layers. Both are stacked, [L, B, H, T, dh] and
[L, B, H, S, dh], or, for the unrolled layer loop (per-layer weights, model.layer_layout),
tuples of L arrays [B, H, T, dh] and [B, H, S, dh], each its own buffer: a layer read out
of a stacked cache by a static index is copied before every use (the cross cache at
T5 v1.1-small's shape with 256 inputs: 6 MB per token, 4x that at 1024 inputs; the self
cache at the demo shape, batch 200: 2 x 1.2 MB per layer and token), while its own buffer
is read and written in place. Stacked fields take any (possibly traced) layer index, so a
`lax.while_loop` over layers runs one traced body; per-layer buffers need Python int
layers.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import flax
import jax
import jax.numpy as jnp

from calm_jax.model.config import T5Config
from calm_jax.model.layer_layout import decoder_layer, is_per_layer, on_layer
from calm_jax.model.layers import NEG_INF, DecoderLayer
from calm_jax.model.position import relative_position_bias
from calm_jax.model.t5 import cross_kv_all_layers, embed, padding_bias

Params = Any
Array = jnp.ndarray


@flax.struct.dataclass
class DecoderCache:
  """Attention state of the decoder during generation."""

  # Self-attention keys and values of every layer and output position: [L, B, H, T, dh],
  # or a tuple of L arrays [B, H, T, dh] (per-layer buffers, module docstring).
  self_k: Any
  self_v: Any
  # Cross-attention keys and values from the encoder output: [L, B, H, S, dh], or a tuple
  # of L arrays [B, H, S, dh] (per-layer buffers, module docstring).
  cross_k: Any
  cross_v: Any
  cross_bias: Array  # [B, 1, 1, S] float32 additive mask of encoder padding

  @property
  def max_decode_len(self) -> int:
    return cache_layer(self.self_k, 0).shape[2]


def cache_layer(field: Any, layer) -> Array:
  """Layer `layer`'s entry of one cache field: [B, ...] (a Python int for per-layer
  buffers; any index, possibly traced, for a stacked [L, B, ...] field)."""
  if isinstance(field, (tuple, list)):
    if not isinstance(layer, int):
      raise TypeError(f"per-layer cache buffers are read at a Python int layer, not {layer!r}")
    return field[layer]
  return jax.lax.dynamic_index_in_dim(field, layer, keepdims=False)


def _split_layers(stacked: Array) -> Tuple[Array, ...]:  # [L, B, ...] -> L x [B, ...]
  return tuple(stacked[i] for i in range(stacked.shape[0]))


def init_decoder_cache(config: T5Config, params: Params, encoded: Array,
                       attention_mask: Optional[Array], max_decode_len: int,
                       per_layer: bool = False) -> DecoderCache:
  """An empty self-attention cache and the cross-attention K/V of every layer, both as
  per-layer buffers when `per_layer` (module docstring)."""
  batch = encoded.shape[0]
  if attention_mask is None:
    attention_mask = jnp.ones(encoded.shape[:2], jnp.int32)
  cross_k, cross_v = cross_kv_all_layers(config, params, encoded)  # [L, B, H, S, dh] each
  if per_layer:
    cross_k, cross_v = _split_layers(cross_k), _split_layers(cross_v)
  shape = (config.num_decoder_layers, batch, config.num_heads, max_decode_len, config.d_kv)
  zeros = jnp.zeros(shape, config.jnp_dtype)
  self_k = self_v = zeros
  if per_layer:
    self_k = self_v = _split_layers(zeros)  # immutable: the two fields may share the zeros
  return DecoderCache(self_k=self_k, self_v=self_v, cross_k=cross_k, cross_v=cross_v,
                      cross_bias=padding_bias(attention_mask))


def step_self_bias(config: T5Config, params: Params, position: Array,
                   max_decode_len: int) -> Array:
  """Self-attention bias of output `position` over the cache: [1, H, 1, T].

  Relative position bias for keys 0..position; keys after `position` are masked.
  """
  bias = relative_position_bias(params["decoder"]["relative_bias"], 1, max_decode_len,
                                bidirectional=False,
                                max_distance=config.relative_attention_max_distance,
                                query_offset=position)  # [H, 1, T]
  visible = jnp.arange(max_decode_len) <= position  # [T]
  return jnp.where(visible, bias.astype(jnp.float32), NEG_INF)[None]


def write_self_kv(config: T5Config, params: Params, cache: DecoderCache, layer: Array,
                  x: Array, position: Array) -> DecoderCache:
  """Writes layer `layer`'s self-attention K/V of inputs x [B, 1, d] at `position`.

  This is the whole of what a skipped layer contributes to later positions, so state
  propagation calls it with the exit state in place of the layer's true input.
  """
  project = lambda weights, x: decoder_layer(config, weights).apply(
      {"params": weights}, x, method=DecoderLayer.self_kv)
  keys, values = on_layer(params, layer, project, x)  # [B, H, 1, dh]
  return cache.replace(self_k=update_layer(cache.self_k, layer, keys, position),
                       self_v=update_layer(cache.self_v, layer, values, position))


def update_layer(field: Any, layer, new: Array, position: Array) -> Any:
  """One cache field with layer `layer`'s entries new [B, H, 1, dh] written at `position`
  (per-layer buffers: a Python int layer; stacked [L, B, H, T, dh]: any index)."""
  if isinstance(field, (tuple, list)):
    buffer = cache_layer(field, layer)
    written = jax.lax.dynamic_update_slice(buffer, new.astype(buffer.dtype),
                                           (0, 0, position, 0))
    return field[:layer] + (written,) + field[layer + 1:]
  return jax.lax.dynamic_update_slice(field, new[None].astype(field.dtype),
                                      (layer, 0, 0, position, 0))


def decoder_layer_step(config: T5Config, params: Params, cache: DecoderCache, layer: Array,
                       x: Array, position: Array, self_bias: Array) -> Tuple[Array, DecoderCache]:
  """Runs decoder layer `layer` on x [B, 1, d] at `position`; returns its output and the
  cache with this position's K/V written."""
  cache = write_self_kv(config, params, cache, layer, x, position)
  return decoder_layer_rows(config, params, cache, layer, x, self_bias), cache  # [B, 1, d]


def decoder_layer_rows(config: T5Config, params: Params, cache: DecoderCache, layer: Array,
                       x: Array, self_bias: Array, rows: Optional[Array] = None) -> Array:
  """Layer `layer`'s output for inputs x [R, 1, d] of batch rows `rows` [R] (all rows when
  None), reading a cache that already holds this position's K/V: [R, 1, d].

  The early-exit decoder passes a bucket of rows holding every example that has not exited
  (and possibly some that have), so a batch whose examples left early does less work."""
  def pick(field):  # [L, B, ...] (or L x [B, ...]) -> [R, ...]
    one_layer = cache_layer(field, layer)
    return one_layer if rows is None else jnp.take(one_layer, rows, axis=0)
  cross_bias = cache.cross_bias if rows is None else jnp.take(cache.cross_bias, rows, axis=0)

  def run(weights, x, cross_k, cross_v, self_k, self_v):
    return decoder_layer(config, weights).apply({"params": weights}, x, self_bias, cross_k,
                                                cross_v, cross_bias, self_k=self_k,
                                                self_v=self_v)
  return on_layer(params, layer, run, x, pick(cache.cross_k), pick(cache.cross_v),
                  pick(cache.self_k), pick(cache.self_v))


def decoder_step(config: T5Config, params: Params, cache: DecoderCache, token: Array,
                 position: Array) -> Tuple[Array, DecoderCache]:
  """Runs every decoder layer for input tokens [B] at `position`.

  Returns each layer's output [L, B, d] and the updated cache.
  """
  num_layers = config.num_decoder_layers
  self_bias = step_self_bias(config, params, position, cache.max_decode_len)
  x = embed(config, params, token[:, None])  # [B] -> [B, 1, d]
  states = jnp.zeros((num_layers,) + x.shape[:1] + x.shape[2:], x.dtype)  # [L, B, d]

  def body(layer, carry):
    x, states, cache = carry
    x, cache = decoder_layer_step(config, params, cache, layer, x, position, self_bias)
    return x, states.at[layer].set(x[:, 0]), cache

  if is_per_layer(params):  # unrolled: each layer reads its own weights, no switch
    carry = (x, states, cache)
    for layer in range(num_layers):
      carry = body(layer, carry)
    _, states, cache = carry
    return states, cache
  _, states, cache = jax.lax.fori_loop(0, num_layers, body, (x, states, cache))
  return states, cache
