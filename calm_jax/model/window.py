"""Decoder layers over a window of output positions per example, at once.

Each example (row) has its own window: W consecutive output positions starting at its own
`starts[b]`. A layer writes its self-attention K/V for the window positions a row marks
in `writes` [B, W] (the others are left as they are), then runs on all W positions, each
attending to the cache causally (keys up to its own position). With W = 1 this is one
decoding step at per-row positions; with W > 1 it is FREE's deep pass, which runs the
deep layers over an example's pending positions in parallel and leaves their real K/V.

The caches are incremental.DecoderCache's; layer i is read through layer_layout.on_layer,
so both weight layouts work.
"""

from __future__ import annotations

from typing import Any, Tuple

import jax.numpy as jnp

from calm_jax.model.config import T5Config
from calm_jax.model.incremental import DecoderCache, decoder_layer_rows
from calm_jax.model.layer_layout import decoder_layer, on_layer
from calm_jax.model.layers import DecoderLayer

Params = Any
Array = jnp.ndarray


def window_positions(starts: Array, width: int) -> Array:
  """[B] first positions -> [B, W] int32 positions of each row's window."""
  return starts[:, None] + jnp.arange(width, dtype=jnp.int32)[None, :]


def window_self_bias(causal_bias: Array, starts: Array, width: int) -> Array:
  """Rows of a teacher-forcing causal bias [1, H, T, T] (t5.causal_self_bias) for each
  row's window: [B, H, W, T]. Positions past T - 1 read row T - 1 (callers never write
  them)."""
  length = causal_bias.shape[-1]
  queries = jnp.minimum(window_positions(starts, width), length - 1)  # [B, W]
  rows = jnp.take(causal_bias[0], queries, axis=1)  # [H, T, T] -> [H, B, W, T]
  return jnp.transpose(rows, (1, 0, 2, 3))  # [B, H, W, T]


def write_window_kv(config: T5Config, params: Params, cache: DecoderCache, layer,
                    x: Array, starts: Array, writes: Array) -> DecoderCache:
  """Writes layer `layer`'s self-attention K/V of inputs x [B, W, d] at each row's window
  positions where `writes` [B, W] is True; the cache elsewhere is untouched."""
  project = lambda weights, x: decoder_layer(config, weights).apply(
      {"params": weights}, x, method=DecoderLayer.self_kv)
  keys, values = on_layer(params, layer, project, x)  # [B, H, W, dh] each
  length = cache.max_decode_len
  # Positions not written point past the cache and are dropped by the scatter.
  positions = jnp.where(writes, window_positions(starts, x.shape[1]), length)  # [B, W]
  rows = jnp.arange(x.shape[0])[:, None]  # [B, 1]

  def put(stored, new):  # stored [L, B, H, T, dh] or L x [B, H, T, dh]; new [B, H, W, dh]
    new = jnp.transpose(new, (0, 2, 1, 3))  # [B, W, H, dh]
    if isinstance(stored, tuple):  # per-layer buffers, a Python int layer
      one = stored[layer].at[rows, :, positions, :].set(new.astype(stored[layer].dtype),
                                                         mode="drop")
      return stored[:layer] + (one,) + stored[layer + 1:]
    return stored.at[layer, rows, :, positions, :].set(new.astype(stored.dtype), mode="drop")
  return cache.replace(self_k=put(cache.self_k, keys), self_v=put(cache.self_v, values))


def window_layer_step(config: T5Config, params: Params, cache: DecoderCache, layer,
                      x: Array, starts: Array, writes: Array,
                      self_bias: Array) -> Tuple[Array, DecoderCache]:
  """Decoder layer `layer` on each row's window x [B, W, d] (self_bias [B, H, W, T] from
  window_self_bias): its output [B, W, d] and the cache with the window's K/V written
  where `writes` [B, W]."""
  cache = write_window_kv(config, params, cache, layer, x, starts, writes)
  return decoder_layer_rows(config, params, cache, layer, x, self_bias), cache
