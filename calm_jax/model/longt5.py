"""LongT5's encoder self-attention (Guo et al. 2022): local and transient-global.

Local ('local'): the input, padded to whole blocks of `local_radius + 1` tokens, is cut into
blocks; each block's queries attend to the keys of the block and of its two neighbours
(a window of three blocks), and only to real tokens at most `local_radius` positions away.
Scores are [B, H, blocks, block, 3 * block]: memory and time grow linearly with the input.
The position bias is T5's bidirectional relative bias (the encoder's `relative_bias`
table), by key position minus query position.

Transient-global ('transient-global') adds G = S // global_block_size global tokens in every
layer (S: the input length before padding to blocks). Global token g is the sum of the
layer's normed inputs over the real tokens of global block g, through the layer's own
`global_norm`, then the layer's key and value projections. A real token's global block is
position // global_block_size, except that the tokens after the last complete block of
real tokens join that block (and no token has a block when there is no complete one);
padding joins no block.
Every real token attends to its local window and to the global tokens of blocks that hold
real tokens, in one softmax, with the bias `global_relative_bias`[bucket(g - its block)]
(the encoder's second table, shared by the layers like the first).

These are transformers' LongT5 definitions; where transformers computes the block ids by a
float cumulative sum (exact for power-of-two block sizes, the published checkpoints' 16),
the ids here are integer divisions.
"""

from __future__ import annotations

from typing import Tuple

import flax
import jax
import jax.numpy as jnp

from calm_jax.model.config import T5Config
from calm_jax.model.layers import NEG_INF, EncoderLayer, MultiHeadAttention, layer_norm
from calm_jax.model.position import relative_position_bias, relative_position_bucket

Array = jnp.ndarray


@flax.struct.dataclass
class BlockContext:
  """What every LongT5 encoder layer of one input batch shares (S = padded length)."""

  local_bias: Array  # [H, block, 3 * block] float32, relative position bias in the window
  local_mask: Array  # [B, blocks, block, 3 * block] bool, real query and key within radius
  token_valid: Array  # [B, S] bool, real (unpadded) tokens
  global_block: Array  # [B, S] int32, the token's global block; -1 for padding
  global_valid: Array  # [B, G] bool, global blocks holding at least one real token
  global_table: Array  # [num_buckets, H] the transient-global relative bias table


def block_length(config: T5Config) -> int:
  return config.local_radius + 1


def padded_length(config: T5Config, length: int) -> int:
  """Input length rounded up to whole local blocks."""
  block = block_length(config)
  return -(-length // block) * block


def keys_per_query(config: T5Config, length: int) -> int:
  """Scores one encoder query computes on an input of `length` tokens: every token (T5),
  the three-block window (local), plus the global tokens (transient-global)."""
  if not config.is_long:
    return length
  globals_count = length // config.global_block_size if config.has_global_tokens else 0
  return 3 * block_length(config) + globals_count


def _split_blocks(x: Array, block: int, axis: int) -> Array:
  """Splits `axis` (a multiple of `block`) into [blocks, block]."""
  shape = x.shape[:axis] + (x.shape[axis] // block, block) + x.shape[axis + 1:]
  return x.reshape(shape)


def _three_blocks(x: Array, axis: int) -> Array:
  """[..., blocks, block, ...] (blocks at `axis`) -> [..., blocks, 3 * block, ...]: each
  block's previous, own and next block, zero-padded at both ends."""
  pad = [(0, 0)] * x.ndim
  pad[axis] = (1, 1)
  padded = jnp.pad(x, pad)
  blocks = x.shape[axis]
  windows = [jax.lax.slice_in_dim(padded, start, start + blocks, axis=axis) for start in range(3)]
  return jnp.concatenate(windows, axis=axis + 1)


def global_blocks(token_valid: Array, global_block_size: int) -> Tuple[Array, Array]:
  """Each token's global block [B, S] (-1: padding, or no complete block of real tokens)
  and which of the G = S // global_block_size global blocks hold real tokens, [B, G]."""
  length = token_valid.shape[1]
  position = jnp.arange(length)
  block_ends = (position % global_block_size == global_block_size - 1) & token_valid  # [B, S]
  last_complete = block_ends.sum(-1, keepdims=True) - 1  # [B, 1]; -1 when there is none
  block = jnp.minimum(position // global_block_size, last_complete)
  block = jnp.where(token_valid, block, -1).astype(jnp.int32)
  count = length // global_block_size
  valid = jnp.arange(count)[None, :] <= block.max(-1, keepdims=True)  # [B, G]
  return block, valid


def block_context(config: T5Config, encoder_params, attention_mask: Array,
                  length: int) -> BlockContext:
  """The masks and biases of inputs `attention_mask` [B, S_pad] (1 keep, 0 pad; S_pad a
  multiple of the block length) whose unpadded length was `length`."""
  block = block_length(config)
  token_valid = attention_mask > 0  # [B, S_pad]
  local_bias = relative_position_bias(
      encoder_params["relative_bias"], block, 3 * block, bidirectional=True,
      max_distance=config.relative_attention_max_distance, query_offset=block)
  query_valid = _split_blocks(token_valid, block, axis=1)  # [B, blocks, block]
  key_valid = _three_blocks(query_valid, axis=1)  # [B, blocks, 3 * block]
  offset = jnp.arange(3 * block)[None, :] - (jnp.arange(block)[:, None] + block)
  near = jnp.abs(offset) <= config.local_radius  # [block, 3 * block]
  local_mask = query_valid[..., :, None] & key_valid[..., None, :] & near
  global_block, global_valid = global_blocks(token_valid[:, :length],
                                             config.global_block_size)
  pad = token_valid.shape[1] - length
  global_block = jnp.pad(global_block, ((0, 0), (0, pad)), constant_values=-1)
  table = encoder_params.get("global_relative_bias",
                             jnp.zeros((config.relative_attention_num_buckets, config.num_heads)))
  return BlockContext(local_bias=local_bias.astype(jnp.float32), local_mask=local_mask,
                      token_valid=token_valid, global_block=global_block,
                      global_valid=global_valid, global_table=table)


def _global_bias(config: T5Config, context: BlockContext) -> Array:
  """Bias and mask of the tokens' scores on the global tokens: [B, H, S, G] float32."""
  count = context.global_valid.shape[1]
  offset = jnp.arange(count)[None, None, :] - context.global_block[:, :, None]  # [B, S, G]
  buckets = relative_position_bucket(offset, bidirectional=True,
                                     num_buckets=config.relative_attention_num_buckets,
                                     max_distance=config.relative_attention_max_distance)
  table = context.global_table.T.astype(jnp.float32)  # [H, num_buckets]
  bias = jnp.take(table, buckets, axis=1)  # [H, B, S, G]
  allowed = context.token_valid[:, :, None] & context.global_valid[:, None, :]  # [B, S, G]
  return jnp.swapaxes(jnp.where(allowed, bias, NEG_INF), 0, 1)  # [B, H, S, G]


def global_inputs(normed: Array, context: BlockContext) -> Array:
  """Sum of the normed inputs [B, S, d] over each global block's tokens -> [B, G, d]
  (float32); padding tokens go to an extra block that is dropped."""
  count = context.global_valid.shape[1]
  segment = jnp.where(context.global_block >= 0, context.global_block, count)  # [B, S]
  summed = jax.vmap(lambda x, ids: jax.ops.segment_sum(x, ids, count + 1))(
      normed.astype(jnp.float32), segment)  # [B, G + 1, d]
  return summed[:, :count]


def _local_scores(query: Array, keys: Array, context: BlockContext, block: int) -> Array:
  """Queries [B, H, S, dh] on the keys of their window: [B, H, blocks, block, 3 * block]."""
  query = _split_blocks(query, block, axis=2)  # [B, H, blocks, block, dh]
  window = _three_blocks(_split_blocks(keys, block, axis=2), axis=2)  # [B, H, blocks, 3 block, dh]
  scores = jnp.einsum("bhnqd,bhnkd->bhnqk", query, window).astype(jnp.float32)
  mask = context.local_mask[:, None]  # [B, 1, blocks, block, 3 * block]
  return jnp.where(mask, scores + context.local_bias[None, :, None], NEG_INF)


class LongT5EncoderLayer(EncoderLayer):
  """T5's encoder layer with LongT5's local or transient-global self-attention; `context`
  is the batch's BlockContext. Adds `global_norm` (transient-global only)."""

  def attend(self, attention: MultiHeadAttention, normed: Array, context: BlockContext,
             deterministic: bool) -> Array:
    cfg = self.config
    block = block_length(cfg)
    batch, length, _ = normed.shape
    query = attention.queries(normed)  # [B, H, S, dh]
    keys, values = attention.keys_values(normed)  # each [B, H, S, dh]
    local = _local_scores(query, keys, context, block)  # [B, H, blocks, block, 3 * block]
    if not cfg.has_global_tokens:
      weights = jax.nn.softmax(local, axis=-1).astype(cfg.jnp_dtype)
      weights = attention.attention_dropout(weights, deterministic)
      context_values = jnp.einsum("bhnqk,bhnkd->bhnqd", weights, self._window(values, block))
      return attention.output(context_values.reshape(batch, cfg.num_heads, length, -1))
    summed = global_inputs(normed, context).astype(cfg.jnp_dtype)
    global_keys, global_values = attention.keys_values(
        layer_norm(cfg, "global_norm")(summed))  # each [B, H, G, dh]
    side = (jnp.einsum("bhsd,bhgd->bhsg", query, global_keys).astype(jnp.float32)
            + _global_bias(cfg, context))  # [B, H, S, G]
    side = _split_blocks(side, block, axis=2)  # [B, H, blocks, block, G]
    # One softmax over the window and the globals, without concatenating them: both parts
    # are exponentiated against their common maximum and the context is divided by the
    # common sum (dropout of the normalised weights = dropout of the exponentials / sum).
    top = jnp.maximum(local.max(-1, keepdims=True),  # G may be 0 (inputs under a block)
                      side.max(-1, keepdims=True, initial=NEG_INF))
    local, side = jnp.exp(local - top), jnp.exp(side - top)
    total = local.sum(-1, keepdims=True) + side.sum(-1, keepdims=True)  # [B, H, blocks, block, 1]
    local = attention.attention_dropout(local.astype(cfg.jnp_dtype), deterministic)
    side = attention.attention_dropout(side.astype(cfg.jnp_dtype), deterministic)
    from_globals = jnp.einsum("bhnqg,bhgd->bhnqd", side, global_values)
    from_window = jnp.einsum("bhnqk,bhnkd->bhnqd", local, self._window(values, block))
    context_values = (from_window + from_globals) / total.astype(cfg.jnp_dtype)
    return attention.output(context_values.reshape(batch, cfg.num_heads, length, -1))

  @staticmethod
  def _window(values: Array, block: int) -> Array:
    """Values [B, H, S, dh] -> each block's window of values [B, H, blocks, 3 * block, dh]."""
    return _three_blocks(_split_blocks(values, block, axis=2), axis=2)


def init_layer_inputs(config: T5Config) -> Tuple[Array, BlockContext]:
  """A one-example input and its context for initialising LongT5EncoderLayer's parameters
  (long enough for one global token)."""
  length = padded_length(config, config.global_block_size)
  x = jnp.zeros((1, length, config.d_model), config.jnp_dtype)
  tables = {"relative_bias": jnp.zeros((config.relative_attention_num_buckets,
                                        config.num_heads))}
  return x, block_context(config, tables, jnp.ones((1, length), jnp.int32), length)
