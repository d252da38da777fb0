"""softmax_topk and softmax_pruned: softmax response over a subset of the vocabulary.

At a token's first exit point the full logits are computed once and each example keeps its
top-K token ids (best first). Later exit points compute only those K logits, from the same
final norm (and d^-0.5 scaling where configured) as the full head, gathering the K rows
from the head laid out as a table of rows [V, d] (`head_table`: a tied head's embedding
itself; an untied head's kernel transposed once per decode call, V * d values shared by
every example). The measure state holds ids and logits only ([B, K]), never the gathered
rows, so nothing of size K * d is carried through the decoder's loops or copied there.
Pruning may shrink the kept set further after every exit point (`kept_count`); shapes are
fixed, so a smaller set changes which tokens compete, not the FLOPs of a check.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import flax
import jax
import jax.numpy as jnp

from calm_jax.decoding.measures.base import (LayerInputs, Measure, MeasureContext, Needs,
                                             top2_probabilities)
from calm_jax.model.config import T5Config
from calm_jax.model.layers import RMSNorm
from calm_jax.model.t5 import exit_logits, head_rows

Array = jnp.ndarray
PRUNINGS = ("fixed", "decaying", "adaptive")


@flax.struct.dataclass
class PrunedVocabulary:
  """A token's pruned vocabulary, carried across the exit points of its layer loop."""

  ids: Array  # [B, K] int32 vocabulary ids kept at the first exit point, best first
  kept: Array  # [B, K] bool, still in the pruned set
  logits: Array  # [B, K] float32 logits at the last exit point (-inf where not kept)
  confidence: Array  # [B] float32 confidence at the last exit point
  ready: Array  # [B] bool, the first exit point has pruned the vocabulary


def empty_vocabulary(embedded: Array, top_k: int) -> PrunedVocabulary:
  """The state before a token's first exit point (embedded decoder input [B, d])."""
  batch = embedded.shape[0]
  return PrunedVocabulary(
      ids=jnp.zeros((batch, top_k), jnp.int32),
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


def head_table(config: T5Config, params) -> Array:
  """The LM head as rows [V, d] in the compute dtype: a tied head's embedding, or an untied
  head's kernel [d, V] transposed (a copy of V * d values; build it once per decode), or
  the rows per-layer decoding params store ('kernel_t', no copy)."""
  table = head_rows(config, params)
  if table is None:
    table = params["lm_head"]["kernel"].T
  return table.astype(config.jnp_dtype)


def subset_logits(config: T5Config, params, hidden: Array, table: Array, ids: Array) -> Array:
  """Logits [B, K] float32 of token ids [B, K] at states hidden [B, d]; table is the head's
  rows [V, d] (`head_table`)."""
  features = head_features(config, params, hidden)  # [B, d]
  rows = jnp.take(table, ids, axis=0, mode="clip")  # [B, K, d]; ids are in range
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


@dataclasses.dataclass(frozen=True)
class PrunedSoftmax(Measure):
  """Top-1 minus top-2 probability, of the full softmax at the token's first exit point
  (which keeps each row's top-K ids), then of the softmax over the kept tokens only.

  This class is softmax_topk (pruning 'fixed'); `SoftmaxPruned` may also shrink the kept
  set after every exit point ('decaying', 'adaptive': `kept_count`).
  """

  name = "softmax_topk"
  top_k: int = 2000  # K (k1): tokens kept at the first exit point
  pruning: str = "fixed"  # one of PRUNINGS (only softmax_pruned takes another)
  min_top_k: int = 10  # k*, the fewest tokens pruning keeps (not with 'fixed')

  @property
  def needs(self) -> Needs:
    return Needs(logits="subset", subset_width=self.top_k)

  def validate(self, model_config: T5Config) -> None:
    top_k, largest = self.top_k, model_config.vocab_size
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 2 <= top_k <= largest:
      raise ValueError(f"ExitConfig.top_k={top_k!r} must be an integer in [2, {largest}] (the "
                       f"vocabulary size) for measure {self.name!r}")

  def init(self, context: MeasureContext, embedded: Array) -> PrunedVocabulary:
    return empty_vocabulary(embedded, self.top_k)

  def confidence(self, context: MeasureContext, inputs: LayerInputs,
                 state: PrunedVocabulary) -> Tuple[Array, PrunedVocabulary]:
    return jax.lax.cond(jnp.any(state.ready), self._over_kept_tokens, self._prune,
                        context, inputs, state)

  def token_logits(self, state: PrunedVocabulary) -> Optional[Array]:
    return state.logits  # [B, K] over state.ids

  def _prune(self, context: MeasureContext, inputs: LayerInputs, state: PrunedVocabulary):
    del state
    logits = exit_logits(context.model_config, context.params, inputs.hidden)  # [B, V]
    top_logits, ids = jax.lax.top_k(logits, self.top_k)  # [B, K] best first
    first, second = top2_probabilities(logits)
    confidence = first - second
    return confidence, PrunedVocabulary(
        ids=ids.astype(jnp.int32), kept=jnp.ones(ids.shape, bool), logits=top_logits,
        confidence=confidence, ready=jnp.ones(ids.shape[:1], bool))

  def _over_kept_tokens(self, context: MeasureContext, inputs: LayerInputs,
                        state: PrunedVocabulary):
    config = context.model_config
    kept = state.kept
    if self.pruning != "fixed":
      count = kept_count(self.pruning, inputs.layer, config.num_decoder_layers,
                         config.vocab_size, self.top_k, self.min_top_k,
                         state.confidence)  # [B]
      kept = keep_top_ranked(kept, state.logits, count)
    table = context.head_table
    if table is None:  # a caller outside the decoder: build it here (a V * d copy per call)
      table = head_table(config, context.params)
    logits = subset_logits(config, context.params, inputs.hidden, table, state.ids)
    logits = jnp.where(kept, logits, -jnp.inf)  # [B, K]
    first, second = top2_probabilities(logits)
    confidence = first - second
    return confidence, state.replace(kept=kept, logits=logits, confidence=confidence)


@dataclasses.dataclass(frozen=True)
class SoftmaxPruned(PrunedSoftmax):
  """softmax_pruned: PrunedSoftmax with the schedule of ExitConfig.pruning."""

  name = "softmax_pruned"

  def validate(self, model_config: T5Config) -> None:
    super().validate(model_config)
    if self.pruning not in PRUNINGS:
      raise ValueError(f"ExitConfig.pruning={self.pruning!r}; allowed: {', '.join(PRUNINGS)}")
    k_min = self.min_top_k
    if isinstance(k_min, bool) or not isinstance(k_min, int) or not 2 <= k_min <= self.top_k:
      raise ValueError(f"ExitConfig.min_top_k (k*)={k_min!r} must be an integer in [2, top_k="
                       f"{self.top_k}]")
