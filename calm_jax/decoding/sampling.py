"""Choosing the emitted token from exit logits: greedy, or sampling with temperature,
top-k and top-p (nucleus) filtering and an explicit RNG key."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

Array = jnp.ndarray


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """Token choice. temperature 0 is greedy (argmax); top_k 0 and top_p 1 disable filters."""

  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0

  def validate(self, vocab_size: int) -> None:
    if not isinstance(self.temperature, (int, float)) or self.temperature < 0:
      raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature!r}")
    if not isinstance(self.top_k, int) or not 0 <= self.top_k <= vocab_size:
      raise ValueError(f"top_k must be an integer in [0, {vocab_size}] (0 = off), got {self.top_k!r}")
    if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
      raise ValueError(f"top_p must be in (0, 1] (1 = off), got {self.top_p!r}")

  @property
  def greedy(self) -> bool:
    return self.temperature == 0


def _keep_top_k(logits: Array, k: int) -> Array:
  kth_largest = jax.lax.top_k(logits, k)[0][:, -1:]  # [B, 1]
  return jnp.where(logits < kth_largest, -jnp.inf, logits)


def _keep_top_p(logits: Array, p: float) -> Array:
  """Keeps the smallest set of most probable tokens whose probability reaches p."""
  ordered = jnp.sort(logits, axis=-1)[:, ::-1]  # [B, V] descending
  probabilities = jax.nn.softmax(ordered, axis=-1)
  mass_before = jnp.cumsum(probabilities, axis=-1) - probabilities
  kept = mass_before < p  # the first token is always kept
  smallest_kept = jnp.min(jnp.where(kept, ordered, jnp.inf), axis=-1, keepdims=True)
  return jnp.where(logits < smallest_kept, -jnp.inf, logits)


def select_tokens(logits: Array, rng: Array, sampling: SamplingConfig) -> Array:
  """logits [B, V] -> token ids [B] int32."""
  if sampling.greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits.astype(jnp.float32) / sampling.temperature
  if sampling.top_k:
    logits = _keep_top_k(logits, sampling.top_k)
  if sampling.top_p < 1:
    logits = _keep_top_p(logits, sampling.top_p)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def row_keys(rng: Array, batch: int) -> Array:
  """[B, 2] one key per row of a batch, derived from `rng` and the row's index."""
  return jax.vmap(lambda row: jax.random.fold_in(rng, row))(jnp.arange(batch))


def select_row_tokens(logits: Array, keys: Array, sampling: SamplingConfig) -> Array:
  """logits [R, V], keys [R, 2] (one per row, `row_keys`) -> token ids [R] int32.

  Each row's token depends only on its own logits and key, so choosing tokens for any
  subset of a batch's rows gives those rows the same tokens as choosing for all of them.
  """
  if sampling.greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  one = lambda row_logits, key: select_tokens(row_logits[None], key, sampling)[0]
  return jax.vmap(one)(logits, keys)
