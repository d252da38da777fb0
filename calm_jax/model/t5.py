"""The T5 encoder-decoder as functions over a parameter tree with stacked layers.

Parameter tree (leading axis L on every leaf under `layers`):

    shared/embedding            [V, d]
    encoder/relative_bias       [num_buckets, H]
    encoder/global_relative_bias [num_buckets, H] LongT5 transient-global only
    encoder/layers/...          [L_enc, ...]   EncoderLayer parameters, stacked (LongT5
                                               transient-global: plus global_norm/scale)
    encoder/final_norm/scale    [d]
    decoder/relative_bias       [num_buckets, H]
    decoder/layers/...          [L, ...]       DecoderLayer parameters, stacked
    decoder/final_norm/scale    [d]
    lm_head/kernel              [d, V]         only when the head is untied ('kernel_t'
                                               [V, d] in per-layer decoding params)

Stacking lets one traced layer body run any layer by a dynamic index (the early-exit
decoder's layer loop) and lets the teacher-forced forward scan over layers.

A LongT5 config (`encoder_attention_type` 'local' or 'transient-global') swaps the
encoder's self-attention for model/longt5.py's; everything else is shared.
"""

from __future__ import annotations

from typing import Any, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from calm_jax.model import longt5
from calm_jax.model.config import T5Config
from calm_jax.model.layer_layout import decoder_layer, is_per_layer
from calm_jax.model.layers import NEG_INF, DecoderLayer, EncoderLayer, RMSNorm
from calm_jax.model.position import relative_position_bias

Params = Any
Array = jnp.ndarray


@flax.struct.dataclass
class ForwardOutput:
  """Teacher-forced outputs."""

  logits: Array  # [B, T, V] float32, the last decoder layer through the exit head
  hidden_states: Array  # [L, B, T, d] output of every decoder layer, before the final norm
  encoded: Array  # [B, S, d] encoder output (after its final norm)


def _final_norm(cfg: T5Config) -> RMSNorm:
  return RMSNorm(cfg.layer_norm_epsilon, cfg.jnp_dtype, cfg.jnp_param_dtype)


def _stacked_init(layer: nn.Module, rng: Array, count: int, *args, method=None) -> Params:
  """Initialises `count` independent copies of a layer, stacked on a leading axis."""
  init_one = lambda key: layer.init(key, *args, method=method)["params"]
  return jax.vmap(init_one)(jax.random.split(rng, count))


def init_params(config: T5Config, rng: Array) -> Params:
  """Random parameters with T5's initialisation scales."""
  cfg = config
  keys = jax.random.split(rng, 6)
  pdt = cfg.jnp_param_dtype
  b, s = 1, 2
  x = jnp.zeros((b, s, cfg.d_model), cfg.jnp_dtype)
  bias = jnp.zeros((1, cfg.num_heads, s, s), jnp.float32)
  bias_init = lambda key: (jax.random.normal(key, (cfg.relative_attention_num_buckets,
                                                   cfg.num_heads)) * cfg.d_model ** -0.5)
  norm_params = _final_norm(cfg).init(keys[0], x)["params"]
  if cfg.is_long:
    encoder_layers = _stacked_init(longt5.LongT5EncoderLayer(cfg), keys[2], cfg.num_layers,
                                   *longt5.init_layer_inputs(cfg))
  else:
    encoder_layers = _stacked_init(EncoderLayer(cfg), keys[2], cfg.num_layers, x, bias)
  params = {
      "shared": {"embedding": jax.random.normal(keys[0], (cfg.vocab_size, cfg.d_model)).astype(pdt)},
      "encoder": {
          "relative_bias": bias_init(keys[1]).astype(pdt),
          "layers": encoder_layers,
          "final_norm": norm_params,
      },
      "decoder": {
          "relative_bias": bias_init(keys[3]).astype(pdt),
          "layers": _stacked_init(DecoderLayer(cfg), keys[4], cfg.num_decoder_layers, x, bias,
                                  method=DecoderLayer.init_all),
          "final_norm": norm_params,
      },
  }
  if cfg.has_global_tokens:
    params["encoder"]["global_relative_bias"] = bias_init(jax.random.fold_in(keys[1], 1)).astype(pdt)
  if not cfg.tie_word_embeddings:
    params["lm_head"] = {"kernel": jax.random.normal(keys[5], (cfg.d_model, cfg.vocab_size)).astype(pdt)}
  return params


def embed(config: T5Config, params: Params, ids: Array) -> Array:
  """Token ids [B, T] -> embeddings [B, T, d]."""
  return jnp.take(params["shared"]["embedding"], ids, axis=0).astype(config.jnp_dtype)


def padding_bias(attention_mask: Array) -> Array:
  """[B, S] of 1 (keep) / 0 (pad) -> additive bias [B, 1, 1, S]."""
  return jnp.where(attention_mask[:, None, None, :] > 0, 0.0, NEG_INF).astype(jnp.float32)


def _dropout(cfg: T5Config, x: Array, deterministic: bool, rng: Optional[Array]) -> Array:
  if deterministic or cfg.dropout_rate == 0.0:
    return x
  return nn.Dropout(cfg.dropout_rate).apply({}, x, deterministic=False, rngs={"dropout": rng})


def _layer_rngs(rng: Optional[Array], count: int) -> Array:
  return jax.random.split(rng if rng is not None else jax.random.PRNGKey(0), count)


def _encoder_attention(config: T5Config, params: Params, attention_mask: Array):
  """(layer module, what its attention reads, padded input length) of the encoder.

  T5: the full bias [B, H, S, S] (position + padding). LongT5: longt5.BlockContext over
  the inputs padded to whole local blocks.
  """
  cfg = config
  length = attention_mask.shape[1]
  if cfg.is_long:
    padded = longt5.padded_length(cfg, length)
    mask = jnp.pad(attention_mask, ((0, 0), (0, padded - length)))  # [B, S_pad]
    context = longt5.block_context(cfg, params["encoder"], mask, length)
    return longt5.LongT5EncoderLayer(cfg), context, padded
  bias = relative_position_bias(params["encoder"]["relative_bias"], length, length,
                                bidirectional=True,
                                max_distance=cfg.relative_attention_max_distance)
  bias = bias[None].astype(jnp.float32) + padding_bias(attention_mask)  # [B, H, S, S]
  return EncoderLayer(cfg), bias, length


def encode(config: T5Config, params: Params, input_ids: Array,
           attention_mask: Optional[Array] = None, *, deterministic: bool = True,
           rng: Optional[Array] = None) -> Array:
  """Encoder output [B, S, d] for input ids [B, S] (mask: 1 keep, 0 pad)."""
  cfg = config
  if attention_mask is None:
    attention_mask = jnp.ones_like(input_ids)
  rngs = _layer_rngs(rng, cfg.num_layers + 2)
  length = input_ids.shape[1]
  layer, attention_context, padded = _encoder_attention(cfg, params, attention_mask)
  x = _dropout(cfg, embed(cfg, params, input_ids), deterministic, rngs[-2])
  x = jnp.pad(x, ((0, 0), (0, padded - length), (0, 0)))  # [B, S_pad, d]

  def body(x, layer_inputs):
    layer_params, key = layer_inputs
    x = layer.apply({"params": layer_params}, x, attention_context, deterministic,
                    rngs={"dropout": key})
    return x, None

  x, _ = jax.lax.scan(body, x, (params["encoder"]["layers"], rngs[:cfg.num_layers]))
  x = _final_norm(cfg).apply({"params": params["encoder"]["final_norm"]}, x[:, :length])
  return _dropout(cfg, x, deterministic, rngs[-1])


def causal_self_bias(config: T5Config, params: Params, length: int) -> Array:
  """Decoder self-attention bias for teacher forcing: [1, H, T, T], position + causal mask."""
  bias = relative_position_bias(params["decoder"]["relative_bias"], length, length,
                                bidirectional=False,
                                max_distance=config.relative_attention_max_distance)
  causal = jnp.tril(jnp.ones((length, length), bool))
  return jnp.where(causal, bias.astype(jnp.float32), NEG_INF)[None]


def cross_kv_all_layers(config: T5Config, params: Params, encoded: Array):
  """Cross-attention keys and values of every decoder layer, each [L, B, H, S, dh]."""
  project = lambda p: decoder_layer(config, p).apply({"params": p}, encoded,
                                                     method=DecoderLayer.cross_kv)
  layers = params["decoder"]["layers"]
  if is_per_layer(params):
    keys, values = zip(*(project(one) for one in layers))
    return jnp.stack(keys), jnp.stack(values)
  return jax.vmap(project)(layers)


def decode_teacher_forced(config: T5Config, params: Params, decoder_input_ids: Array,
                          encoded: Array, attention_mask: Optional[Array] = None, *,
                          deterministic: bool = True, rng: Optional[Array] = None) -> Array:
  """Every decoder layer's output [L, B, T, d] for known decoder inputs [B, T]."""
  cfg = config
  if attention_mask is None:
    attention_mask = jnp.ones(encoded.shape[:2], jnp.int32)
  rngs = _layer_rngs(rng, cfg.num_decoder_layers + 1)
  self_bias = causal_self_bias(cfg, params, decoder_input_ids.shape[1])
  cross_bias = padding_bias(attention_mask)
  cross_k, cross_v = cross_kv_all_layers(cfg, params, encoded)
  x = _dropout(cfg, embed(cfg, params, decoder_input_ids), deterministic, rngs[-1])
  layer = DecoderLayer(cfg)

  def body(x, layer_inputs):
    layer_params, layer_k, layer_v, key = layer_inputs
    x = layer.apply({"params": layer_params}, x, self_bias, layer_k, layer_v, cross_bias,
                    deterministic=deterministic, rngs={"dropout": key})
    return x, x

  layer_inputs = (params["decoder"]["layers"], cross_k, cross_v, rngs[:-1])
  _, hidden_states = jax.lax.scan(body, x, layer_inputs)
  return hidden_states  # [L, B, T, d]


def head_rows(config: T5Config, params: Params) -> Optional[Array]:
  """The LM head where it is stored as rows [V, d]: a tied head's embedding, or an untied
  head in per-layer decoding params ('kernel_t', model.layer_layout.stored_head); None for
  an untied head kept [d, V] ('kernel')."""
  if config.tie_word_embeddings:
    return params["shared"]["embedding"]
  return params["lm_head"].get("kernel_t")


def exit_logits(config: T5Config, params: Params, hidden: Array, *,
                deterministic: bool = True, rng: Optional[Array] = None) -> Array:
  """The shared exit head on any layer's state [..., d] -> float32 logits [..., V].

  Final decoder RMSNorm, dropout when training, T5 v1.0's d_model**-0.5 scaling where
  configured, then the LM head (the shared embedding, transposed, when tied).
  """
  cfg = config
  normed = _final_norm(cfg).apply({"params": params["decoder"]["final_norm"]}, hidden)
  normed = _dropout(cfg, normed, deterministic, rng)
  if cfg.scale_decoder_outputs:
    normed = normed * (cfg.d_model ** -0.5)
  rows = head_rows(cfg, params)  # [V, d]
  if rows is not None:
    # Rows multiplied as they lie, contracting the last axis of both operands: a transpose
    # handed to the product would be re-laid inside its fusion at every call XLA cannot
    # hoist out of a loop (the exit checks inside conditionals: V x d per check;
    # utils/hlo_moves.py lists it). Whether it streams faster than the [d, V] product at a
    # few rows depends on the CPU (faster on one host, slower on another: WORKSPACE.md).
    logits = jnp.einsum("...d,vd->...v", normed, rows.astype(cfg.jnp_dtype))
  else:
    kernel = params["lm_head"]["kernel"]  # [d, V]
    logits = jnp.einsum("...d,dv->...v", normed, kernel.astype(cfg.jnp_dtype))
  return logits.astype(jnp.float32)


def forward(config: T5Config, params: Params, input_ids: Array, decoder_input_ids: Array,
            attention_mask: Optional[Array] = None, *, deterministic: bool = True,
            rng: Optional[Array] = None) -> ForwardOutput:
  """Teacher-forced forward: last-layer logits and every decoder layer's state."""
  enc_rng, dec_rng = jax.random.split(rng) if rng is not None else (None, None)
  encoded = encode(config, params, input_ids, attention_mask, deterministic=deterministic,
                   rng=enc_rng)
  hidden_states = decode_teacher_forced(config, params, decoder_input_ids, encoded,
                                        attention_mask, deterministic=deterministic,
                                        rng=dec_rng)
  head_rng = jax.random.fold_in(dec_rng, 1) if dec_rng is not None else None
  logits = exit_logits(config, params, hidden_states[-1], deterministic=deterministic,
                       rng=head_rng)
  return ForwardOutput(logits=logits,
                       hidden_states=hidden_states, encoded=encoded)


def shift_right(config: T5Config, targets: Array) -> Array:
  """Decoder inputs for teacher forcing: start id followed by targets[:, :-1]."""
  start = jnp.full((targets.shape[0], 1), config.decoder_start_token_id, targets.dtype)
  return jnp.concatenate([start, targets[:, :-1]], axis=1)
