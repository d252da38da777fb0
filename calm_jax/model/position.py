"""T5 relative position buckets and the attention bias they index."""

from __future__ import annotations

import math

import jax.numpy as jnp


def relative_position_bucket(relative_position: jnp.ndarray, *, bidirectional: bool,
                             num_buckets: int, max_distance: int) -> jnp.ndarray:
  """Maps key_position - query_position to a bucket id in [0, num_buckets).

  Half the buckets (all of them when causal) cover exact small distances; the rest cover
  distances up to `max_distance` on a log scale. Bidirectional attention spends half of the
  buckets on keys after the query.
  """
  bucket = jnp.zeros_like(relative_position)
  if bidirectional:
    num_buckets //= 2
    bucket = bucket + (relative_position > 0).astype(relative_position.dtype) * num_buckets
    distance = jnp.abs(relative_position)
  else:
    distance = -jnp.minimum(relative_position, 0)
  max_exact = num_buckets // 2
  # Distances >= max_exact share log-spaced buckets; max(.., 1) keeps log finite where unused.
  log_ratio = (jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) / max_exact)
               / math.log(max_distance / max_exact))
  large = max_exact + (log_ratio * (num_buckets - max_exact)).astype(relative_position.dtype)
  large = jnp.minimum(large, num_buckets - 1)
  return bucket + jnp.where(distance < max_exact, distance, large)


def relative_position_bias(bias_table: jnp.ndarray, query_length: int, key_length: int, *,
                           bidirectional: bool, max_distance: int,
                           query_offset=0) -> jnp.ndarray:
  """Attention bias from a [num_buckets, H] table.

  Returns [H, query_length, key_length]. `query_offset` (may be traced) shifts the query
  positions, so one row of a causal bias can be built for decoding position t.
  """
  num_buckets = bias_table.shape[0]
  query = jnp.arange(query_length)[:, None] + query_offset  # [Tq, 1]
  key = jnp.arange(key_length)[None, :]  # [1, Tk]
  buckets = relative_position_bucket(key - query, bidirectional=bidirectional,
                                     num_buckets=num_buckets, max_distance=max_distance)
  values = jnp.take(jnp.asarray(bias_table), buckets, axis=0)  # [Tq, Tk, H]
  return jnp.transpose(values, (2, 0, 1))  # [H, Tq, Tk]
