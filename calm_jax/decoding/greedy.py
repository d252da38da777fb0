"""Greedy decoding with the full decoder (every layer for every token).

The reference the early-exit decoder is compared against: a `lax.while_loop` over output
positions that stops when every sequence has emitted EOS or the length is reached.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp

from calm_jax.decoding.inputs import check_max_decode_len, prepare_inputs
from calm_jax.decoding.sharded import DecodeMesh, decode_on_mesh, place_params
from calm_jax.model.config import T5Config
from calm_jax.model.layer_layout import check_layout, decoding_params, is_per_layer
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


@dataclasses.dataclass(frozen=True)
class GreedyPlan:
  """The static choices of one greedy decode (hashable: a compiled program's key)."""

  config: T5Config
  max_decode_len: int  # output positions


def greedy_impl(plan: GreedyPlan, params: Any, input_ids: Array, attention_mask: Array,
                rng: Any = None, skip_rows: Optional[Array] = None) -> Array:
  """The traced greedy decode: output ids [B, T]; rows of `skip_rows` [B] start finished
  (all pad). `rng` is unused (the decode_on_mesh interface)."""
  del rng
  config, max_decode_len = plan.config, plan.max_decode_len
  batch = input_ids.shape[0]
  encoded = encode(config, params, input_ids, attention_mask)
  done = jnp.zeros((batch,), bool) if skip_rows is None else jnp.asarray(skip_rows, bool)
  state = GreedyState(
      position=jnp.array(0, jnp.int32),
      last_token=jnp.full((batch,), config.decoder_start_token_id, jnp.int32),
      tokens=jnp.full((batch, max_decode_len), config.pad_token_id, jnp.int32),
      done=done,
      cache=init_decoder_cache(config, params, encoded, attention_mask, max_decode_len,
                               per_layer=is_per_layer(params)))

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


_greedy_jit = jax.jit(greedy_impl, static_argnames=("plan",))


def greedy_decode(config: T5Config, params: Any, input_ids: Array,
                  attention_mask: Optional[Array] = None, *, max_decode_len: int,
                  layer_layout: str = "auto", mesh: Optional[DecodeMesh] = None) -> Array:
  """Greedy output ids [B, max_decode_len] (EOS included, pad after it); `layer_layout` as
  in `generate` (per-layer weights unroll the layer loop). `mesh` (sharded.DecodeMesh): the
  rows split over its 'data' axis, each shard its own loop, the parameters over 'model';
  the ids then come back as a host array."""
  check_max_decode_len(max_decode_len)
  check_layout(layer_layout)
  input_ids, attention_mask = prepare_inputs(config, input_ids, attention_mask, None)
  plan = GreedyPlan(config, max_decode_len)
  if mesh is None or mesh.mesh.size == 1:
    return _greedy_jit(plan, decoding_params(params, layer_layout), input_ids, attention_mask)
  params = place_params(params, mesh, layer_layout)
  return decode_on_mesh(greedy_impl, plan, params, input_ids, attention_mask,
                        jax.random.PRNGKey(0), None, mesh)
