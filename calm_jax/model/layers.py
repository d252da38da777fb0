"""Flax modules of one T5 layer: RMSNorm, multi-head attention, feed-forward, and the
encoder and decoder layers built from them.

Layers never see the relative position table: the stack computes the bias once and passes
it to every layer, as T5 shares layer 0's bias across the stack. Attention logits are not
scaled by d_kv**-0.5 (T5 folds that into the query initialisation).
"""

from __future__ import annotations

from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype

from calm_jax.model.config import T5Config

Array = jnp.ndarray
NEG_INF = -1e9  # additive mask value; finite so a fully masked row stays NaN-free


def _normal(stddev: float):
  return nn.initializers.normal(stddev=stddev)


class RMSNorm(nn.Module):
  """T5's layer norm: scale only, no mean subtraction, no bias; computed in float32."""

  epsilon: float
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    variance = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    normed = x32 * jax.lax.rsqrt(variance + self.epsilon)
    return (normed * scale.astype(jnp.float32)).astype(self.dtype)


class Projection(nn.Module):
  """T5's bias-free linear map [..., in] -> [..., features].

  The kernel is 'kernel' [in, features], Flax Dense's layout and the parameter tree's
  (same name, shape, initialisation and product as nn.Dense without bias), or with `out_in`
  'kernel_t' [features, in]: the per-layer decoding buffers (model.layer_layout), whose
  product contracts the last axis of both operands, which XLA's CPU backend streams faster
  at a few rows than the [in, out] product (that one re-packs the weights)."""

  features: int
  stddev: float
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  out_in: bool = False

  @nn.compact
  def __call__(self, x: Array) -> Array:
    init = _normal(self.stddev)
    if self.out_in:
      kernel = self.param("kernel_t", init, (self.features, x.shape[-1]), self.param_dtype)
    else:
      kernel = self.param("kernel", init, (x.shape[-1], self.features), self.param_dtype)
    x, kernel = promote_dtype(x, kernel, dtype=self.dtype)
    contract = ((x.ndim - 1,), (1 if self.out_in else 0,))
    return jax.lax.dot_general(x, kernel, (contract, ((), ())))  # [..., features]


def split_heads(x: Array, num_heads: int) -> Array:
  batch, length, width = x.shape  # no -1 in the shape: length may be 0 (LongT5's globals)
  return x.reshape(batch, length, num_heads, width // num_heads).transpose(0, 2, 1, 3)  # [B, H, T, dh]


def merge_heads(x: Array) -> Array:
  batch, heads, length, head_dim = x.shape
  return x.transpose(0, 2, 1, 3).reshape(batch, length, heads * head_dim)  # [B, T, H*dh]


class MultiHeadAttention(nn.Module):
  """Projections of one attention block; keys and values may come from a cache."""

  config: T5Config
  out_in: bool = False  # kernels stored [out, in] (Projection)

  def setup(self):
    cfg = self.config
    dense = lambda name, features, std: Projection(
        features, std, cfg.jnp_dtype, cfg.jnp_param_dtype, self.out_in, name=name)
    self.query = dense("q", cfg.inner_dim, (cfg.d_model * cfg.d_kv) ** -0.5)
    self.key = dense("k", cfg.inner_dim, cfg.d_model ** -0.5)
    self.value = dense("v", cfg.inner_dim, cfg.d_model ** -0.5)
    self.out = dense("o", cfg.d_model, cfg.inner_dim ** -0.5)
    self.dropout = nn.Dropout(cfg.dropout_rate)

  def keys_values(self, x: Array) -> Tuple[Array, Array]:
    """[B, T, d] -> keys and values, each [B, H, T, dh]."""
    heads = self.config.num_heads
    return split_heads(self.key(x), heads), split_heads(self.value(x), heads)

  def queries(self, x: Array) -> Array:
    """[B, T, d] -> queries [B, H, T, dh]."""
    return split_heads(self.query(x), self.config.num_heads)

  def output(self, context: Array) -> Array:
    """Attended values [B, H, T, dh] -> the block's output [B, T, d]."""
    return self.out(merge_heads(context))

  def attention_dropout(self, weights: Array, deterministic: bool) -> Array:
    return self.dropout(weights, deterministic=deterministic)

  def __call__(self, x: Array, keys: Array, values: Array, bias: Array,
               deterministic: bool = True) -> Array:
    """Attends queries from x [B, Tq, d] to keys/values [B, H, Tk, dh].

    `bias` broadcasts to [B, H, Tq, Tk] and holds position bias plus masks.
    """
    query = self.queries(x)  # [B, H, Tq, dh]
    scores = jnp.einsum("bhqd,bhkd->bhqk", query, keys).astype(jnp.float32) + bias
    weights = jax.nn.softmax(scores, axis=-1).astype(self.config.jnp_dtype)
    weights = self.attention_dropout(weights, deterministic)
    context = jnp.einsum("bhqk,bhkd->bhqd", weights, values)  # [B, H, Tq, dh]
    return self.output(context)  # [B, Tq, d]


class FeedForward(nn.Module):
  """ReLU (v1.0) or gated-GELU (v1.1) feed-forward block."""

  config: T5Config
  out_in: bool = False  # kernels stored [out, in] (Projection)

  def _activation(self, x: Array) -> Array:
    kind = self.config.activation
    if kind == "gelu":
      # T5 v1.1's gated-gelu uses the tanh approximation; a plain 'gelu' is exact.
      return jax.nn.gelu(x, approximate=self.config.is_gated)
    if kind == "relu":
      return jax.nn.relu(x)
    return jax.nn.silu(x)

  @nn.compact
  def __call__(self, x: Array, deterministic: bool = True) -> Array:
    cfg = self.config
    dense = lambda name, features, std: Projection(
        features, std, cfg.jnp_dtype, cfg.jnp_param_dtype, self.out_in, name=name)
    if cfg.is_gated:
      hidden = (self._activation(dense("wi_0", cfg.d_ff, cfg.d_model ** -0.5)(x))
                * dense("wi_1", cfg.d_ff, cfg.d_model ** -0.5)(x))
    else:
      hidden = self._activation(dense("wi", cfg.d_ff, cfg.d_model ** -0.5)(x))
    hidden = nn.Dropout(cfg.dropout_rate)(hidden, deterministic=deterministic)
    return dense("wo", cfg.d_model, cfg.d_ff ** -0.5)(hidden)  # [B, T, d]


def layer_norm(cfg: T5Config, name: str) -> RMSNorm:
  """The T5 layer norm (RMSNorm) of a layer's sub-block, named `name`."""
  return RMSNorm(cfg.layer_norm_epsilon, cfg.jnp_dtype, cfg.jnp_param_dtype, name=name)


class EncoderLayer(nn.Module):
  """Bidirectional self-attention then feed-forward, each pre-normed and residual.

  `attend` is the self-attention step; LongT5's layer (model/longt5.py) replaces it with
  block-local attention, its `context` then holding the blocks' masks instead of a bias.
  """

  config: T5Config

  def attend(self, attention: MultiHeadAttention, normed: Array, bias: Array,
             deterministic: bool) -> Array:
    """Full attention of the normed inputs [B, S, d] to themselves; bias [B, H, S, S]."""
    keys, values = attention.keys_values(normed)
    return attention(normed, keys, values, bias, deterministic)

  @nn.compact
  def __call__(self, x: Array, context, deterministic: bool = True) -> Array:
    cfg = self.config
    drop = nn.Dropout(cfg.dropout_rate)
    attention = MultiHeadAttention(cfg, name="self_attn")
    normed = layer_norm(cfg, "self_attn_norm")(x)
    x = x + drop(self.attend(attention, normed, context, deterministic), deterministic)
    ffn_out = FeedForward(cfg, name="ffn")(layer_norm(cfg, "ffn_norm")(x), deterministic)
    return x + drop(ffn_out, deterministic)  # [B, S, d]


class DecoderLayer(nn.Module):
  """Causal self-attention, cross-attention, feed-forward.

  `self_kv` exposes the layer's pre-attention norm and K/V projection on its own, because
  the early-exit decoder fills skipped layers' caches from an exit state with it.
  """

  config: T5Config
  out_in: bool = False  # kernels stored [out, in]: per-layer decoding buffers (Projection)

  def setup(self):
    cfg = self.config
    self.self_attn_norm = layer_norm(cfg, "self_attn_norm")
    self.self_attn = MultiHeadAttention(cfg, self.out_in, name="self_attn")
    self.cross_attn_norm = layer_norm(cfg, "cross_attn_norm")
    self.cross_attn = MultiHeadAttention(cfg, self.out_in, name="cross_attn")
    self.ffn_norm = layer_norm(cfg, "ffn_norm")
    self.ffn = FeedForward(cfg, self.out_in, name="ffn")
    self.dropout = nn.Dropout(cfg.dropout_rate)

  def self_kv(self, x: Array) -> Tuple[Array, Array]:
    """Self-attention keys and values of inputs x [B, T, d]: each [B, H, T, dh]."""
    return self.self_attn.keys_values(self.self_attn_norm(x))

  def cross_kv(self, encoded: Array) -> Tuple[Array, Array]:
    """Cross-attention keys and values of the encoder output [B, S, d]: each [B, H, S, dh]."""
    return self.cross_attn.keys_values(encoded)

  def init_all(self, x: Array, bias: Array) -> Array:
    """Touches every parameter (the cross K/V projections included) for `init`."""
    cross_k, cross_v = self.cross_kv(x)
    return self(x, bias, cross_k, cross_v, bias)

  def __call__(self, x: Array, self_bias: Array, cross_k: Array, cross_v: Array,
               cross_bias: Array, self_k: Optional[Array] = None,
               self_v: Optional[Array] = None, deterministic: bool = True) -> Array:
    """x [B, T, d] -> [B, T, d].

    Without `self_k`/`self_v` the keys come from x itself (teacher forcing); incremental
    decoding passes the layer's cache, which already holds this position's keys.
    """
    normed = self.self_attn_norm(x)
    if self_k is None:
      self_k, self_v = self.self_attn.keys_values(normed)
    attended = self.self_attn(normed, self_k, self_v, self_bias, deterministic)
    x = x + self.dropout(attended, deterministic)
    attended = self.cross_attn(self.cross_attn_norm(x), cross_k, cross_v, cross_bias,
                               deterministic)
    x = x + self.dropout(attended, deterministic)
    return x + self.dropout(self.ffn(self.ffn_norm(x), deterministic), deterministic)
