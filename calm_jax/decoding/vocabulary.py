"""The exit head on a subset of the vocabulary: what `softmax_topk` and `softmax_pruned` need.

At a token's first exit point the full logits are computed once and each example keeps its
top-K token ids (best first) and their K rows of the LM head ([B, K, d]; K * d * 4 bytes per
example, e.g. 2000 x 768 x 4 = 6 MiB). Later exit points compute only those K logits, from
the same final norm (and d^-0.5 scaling where configured) as the full head. Pruning may
shrink the kept set further after every exit point (`kept_count`); the rows are fixed
shapes, so a smaller set changes which tokens compete, not the FLOPs of a check.
"""

from __future__ import annotations

import flax
import jax.numpy as jnp

from calm_jax.model.config import T5Config
from calm_jax.model.layers import RMSNorm

Array = jnp.ndarray
PRUNINGS = ("fixed", "decaying", "adaptive")


@flax.struct.dataclass
class PrunedVocabulary:
  """A token's pruned vocabulary, carried across the exit points of its layer loop."""

  ids: Array  # [B, K] int32 vocabulary ids kept at the first exit point, best first
  rows: Array  # [B, K, d] their LM head rows
  kept: Array  # [B, K] bool, still in the pruned set
  logits: Array  # [B, K] float32 logits at the last exit point (-inf where not kept)
  confidence: Array  # [B] float32 confidence at the last exit point
  ready: Array  # [B] bool, the first exit point has pruned the vocabulary


def empty_vocabulary(embedded: Array, top_k: int) -> PrunedVocabulary:
  """The state before a token's first exit point (embedded decoder input [B, d])."""
  batch, width = embedded.shape
  return PrunedVocabulary(
      ids=jnp.zeros((batch, top_k), jnp.int32),
      rows=jnp.zeros((batch, top_k, width), embedded.dtype),
      kept=jnp.zeros((batch, top_k), bool),
      logits=jnp.full((batch, top_k), -jnp.inf, jnp.float32),
      confidence=jnp.zeros((batch,), jnp.float32),
      ready=jnp.zeros((batch,), bool))


def head_features(config: T5Config, params, hidden: Array) -> Array:
  """The exit head's input: final decoder norm, then d^-0.5 where configured. [B, d]"""
  norm = RMSNorm(config.layer_norm_epsilon, config.jnp_dtype, config.jnp_param_dtype)
  normed = norm.apply({"params": params["decoder"]["final_norm"]}, hidden)
  if config.scale_decoder_outputs:
    normed = normed * (config.d_model ** -0.5)
  return normed


def head_rows(config: T5Config, params, ids: Array) -> Array:
  """The LM head's rows of token ids [B, K]: [B, K, d]."""
  if config.tie_word_embeddings:
    rows = jnp.take(params["shared"]["embedding"], ids, axis=0)  # [V, d] -> [B, K, d]
  else:
    rows = jnp.moveaxis(jnp.take(params["lm_head"]["kernel"], ids, axis=1), 0, -1)  # [d, B, K] -> [B, K, d]
  return rows.astype(config.jnp_dtype)


def subset_logits(config: T5Config, params, hidden: Array, rows: Array) -> Array:
  """Logits [B, K] float32 of the tokens whose head rows are rows [B, K, d]."""
  features = head_features(config, params, hidden)  # [B, d]
  return jnp.einsum("bd,bkd->bk", features, rows).astype(jnp.float32)


def kept_count(pruning: str, layer: Array, num_layers: int, vocab_size: int, top_k: int,
               min_top_k: int, previous_confidence: Array) -> Array:
  """[B] int32: how many tokens compete at 1-based `layer` after the first exit point.

  fixed: k1 = top_k. decaying: max(k*, floor(k1 / (1 + (k1 - k*) / k* * i / L))), from
  k1 towards k* at layer L. adaptive: max(k*, floor(V * (1 - 0.9 * c_prev))) with c_prev
  the confidence at the previous exit point. Never more than top_k (the rows held).
  """
  batch = previous_confidence.shape[0]
  if pruning == "fixed":
    return jnp.full((batch,), top_k, jnp.int32)
  if pruning == "decaying":
    ratio = (top_k - min_top_k) / min_top_k
    count = jnp.floor(top_k / (1.0 + ratio * layer / num_layers))
    count = jnp.broadcast_to(count, (batch,))
  else:
    count = jnp.floor(vocab_size * (1.0 - 0.9 * previous_confidence))
  return jnp.clip(count, min_top_k, top_k).astype(jnp.int32)


def keep_top_ranked(kept: Array, logits: Array, count: Array) -> Array:
  """The kept set [B, K] bool shrunk to the `count` [B] best of its members by `logits`
  [B, K]: those at or above the count-th largest logit (one sort; a tie at that value
  keeps every tied member)."""
  values = jnp.where(kept, logits, -jnp.inf)  # [B, K]
  ascending = jnp.sort(values, axis=-1)
  kth = jnp.take_along_axis(ascending, (values.shape[-1] - count)[:, None], axis=-1)  # [B, 1]
  return kept & (values >= kth)
