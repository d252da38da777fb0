"""Greedy decoding with the full decoder (every layer for every token).

The reference the early-exit decoder is compared against: a `lax.while_loop` over output
positions that stops when every sequence has emitted EOS or the length is reached.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp

from calm_jax.decoding.inputs import check_max_decode_len, prepare_inputs
from calm_jax.model.config import T5Config
from calm_jax.model.layer_layout import check_layout, decoding_params
from calm_jax.model.incremental import DecoderCache, decoder_step, init_decoder_cache
from calm_jax.model.t5 import encode, exit_logits

Array = jnp.ndarray


@flax.struct.dataclass
class GreedyState:
  """Loop state of greedy decoding."""

  position: Array  # [] int32, the output position being generated
  last_token: Array  # [B] int32, the decoder input at `position`
  tokens: Array  # [B, T] int32, generated ids; pad after EOS
  done: Array  # [B] bool, sequences that have emitted EOS
  cache: DecoderCache


@functools.partial(jax.jit, static_argnames=("config", "max_decode_len"))
def _greedy_decode(config: T5Config, params: Any, input_ids: Array, attention_mask: Array,
                   max_decode_len: int) -> Array:
  batch = input_ids.shape[0]
  encoded = encode(config, params, input_ids, attention_mask)
  state = GreedyState(
      position=jnp.array(0, jnp.int32),
      last_token=jnp.full((batch,), config.decoder_start_token_id, jnp.int32),
      tokens=jnp.full((batch, max_decode_len), config.pad_token_id, jnp.int32),
      done=jnp.zeros((batch,), bool),
      cache=init_decoder_cache(config, params, encoded, attention_mask, max_decode_len))

  def not_finished(state: GreedyState) -> Array:
    return (state.position < max_decode_len) & ~jnp.all(state.done)

  def generate_one(state: GreedyState) -> GreedyState:
    states, cache = decoder_step(config, params, state.cache, state.last_token, state.position)
    next_token = jnp.argmax(exit_logits(config, params, states[-1]), axis=-1).astype(jnp.int32)
    next_token = jnp.where(state.done, config.pad_token_id, next_token)  # [B]
    return state.replace(
        position=state.position + 1, last_token=next_token,
        tokens=state.tokens.at[:, state.position].set(next_token),
        done=state.done | (next_token == config.eos_token_id), cache=cache)

  return jax.lax.while_loop(not_finished, generate_one, state).tokens


def greedy_decode(config: T5Config, params: Any, input_ids: Array,
                  attention_mask: Optional[Array] = None, *, max_decode_len: int,
                  layer_layout: str = "auto") -> Array:
  """Greedy output ids [B, max_decode_len] (EOS included, pad after it); `layer_layout` as
  in `generate` (per-layer weights unroll the layer loop)."""
  check_max_decode_len(max_decode_len)
  check_layout(layer_layout)
  input_ids, attention_mask = prepare_inputs(config, input_ids, attention_mask, None)
  params = decoding_params(params, layer_layout)
  return _greedy_decode(config, params, input_ids, attention_mask, max_decode_len)
