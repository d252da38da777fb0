"""Within-model contrastive confidence: the exit layer's distribution against an earlier
("amateur") layer's, on the tokens the exit layer finds plausible.

For layer i with log-probabilities log p_i and an amateur layer a:
  head set  H = {v : p_i(v) >= alpha * max p_i}
  scores    s = softmax over H of (log p_i - log p_a), times p_i(H); 0 outside H
  confidence = top-1 minus top-2 of s.
contrastive_weighted takes a = floor(i / 2); contrastive_jsd the candidate layer j < i
(layer 0, the embedded decoder input through the exit head, and the earlier exit points)
whose distribution has the largest Jensen-Shannon divergence from p_i (optionally divided
by i - j), as DoLa picks its premature layer.

With `contrastive_token` the emitted token is the contrastive argmax at the exit layer (also
at layer L, so lambda >= 1 is then contrastive decoding, not the full model).

The token's layer loop carries every layer's log-probabilities so far: [B, L + 1, V]
float32 (B * (L + 1) * V * 4 bytes, e.g. 64 x 9 x 32128 x 4 = 71 MiB).
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Optional, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np

from calm_jax.decoding.exit_rule import ExitConfig, exit_point_layers
from calm_jax.decoding.measures.base import (LayerInputs, Measure, MeasureContext, Needs,
                                             top2_probabilities)
from calm_jax.model.config import T5Config
from calm_jax.model.t5 import exit_logits

Array = jnp.ndarray


@flax.struct.dataclass
class LayerHistory:
  """A token's log-probabilities at the layers run so far."""

  log_probs: Array  # [B, L + 1, V] float32; entry j is layer j's (0: the embedded input)
  contrast: Array  # [B, V] float32 log p_i - log p_a on the head set, -inf elsewhere


def start_history(embedded_log_probs: Array, num_layers: int) -> LayerHistory:
  """The history before layer 1: layer 0's log-probabilities [B, V]."""
  batch, vocab = embedded_log_probs.shape
  log_probs = jnp.zeros((batch, num_layers + 1, vocab), jnp.float32)
  return LayerHistory(log_probs=log_probs.at[:, 0].set(embedded_log_probs),
                      contrast=jnp.full((batch, vocab), -jnp.inf, jnp.float32))


def record(history: LayerHistory, layer: Array, log_probs: Array) -> LayerHistory:
  """Stores 1-based `layer`'s log-probabilities [B, V]."""
  stored = jax.lax.dynamic_update_index_in_dim(history.log_probs, log_probs, layer, axis=1)
  return history.replace(log_probs=stored)


def weighted_amateur(history: LayerHistory, layer: Array) -> Array:
  """log p of layer floor(i / 2): [B, V]."""
  return jax.lax.dynamic_index_in_dim(history.log_probs, layer // 2, axis=1, keepdims=False)


def jensen_shannon(log_p: Array, log_q: Array) -> Array:
  """JSD(p, q) in nats for log p [B, V] against each of log q [B, J, V]: [B, J].

  Written as 0.5 (sum p log p + sum q log q) - sum m log m with m = (p + q) / 2, which is
  KL(p || m) / 2 + KL(q || m) / 2 expanded (0 log 0 = 0, so a token with probability 0
  under either adds nothing): one exp (q) and one log (m) per element of [B, J, V], and
  p's terms once per row. (The same sum through log m = logaddexp(log p, log q) - log 2
  took four transcendentals per element: 7.8 against 2.0 ms at batch 8, J = 9, V = 32128
  on a 2-core CPU.)"""
  # 0 log 0 = 0: a log-probability of -inf is clamped to float32's lowest (times 0 it is
  # 0), and log m is taken of m plus the smallest normal float (which rounds away wherever
  # m exceeds about 2e-31); both without a select, which XLA materialized as a [B, J, V]
  # broadcast of 0 per check.
  lowest, tiny = jnp.finfo(jnp.float32).min, jnp.finfo(jnp.float32).tiny
  p = jnp.exp(log_p)  # [B, V]
  p_log_p = jnp.sum(p * jnp.maximum(log_p, lowest), axis=-1)  # [B]
  q = jnp.exp(log_q)  # [B, J, V]
  m = 0.5 * (p[:, None] + q)
  terms = 0.5 * q * jnp.maximum(log_q, lowest) - m * jnp.log(m + tiny)
  return 0.5 * p_log_p[:, None] + jnp.sum(terms, axis=-1)


def jsd_amateur(history: LayerHistory, layer: Array, log_probs: Array, candidates: np.ndarray,
                by_distance: bool, static_layer: Optional[int] = None) -> Array:
  """log p [B, V] of the candidate layer j < i (candidates [L + 1] bool, static) farthest
  from layer i by Jensen-Shannon divergence (divided by i - j with `by_distance`).

  With `static_layer` (i known while tracing: the unrolled layer loop) only layers 0..i-1
  are compared, a slice of the history; otherwise all L + 1 are, and the rest masked."""
  if static_layer is not None:
    earlier = np.arange(static_layer)  # [i]
    compared = history.log_probs[:, :static_layer]  # [B, i, V]
    allowed, distance = jnp.asarray(candidates[:static_layer]), static_layer - earlier
  else:
    earlier = jnp.arange(candidates.size)  # [L + 1]
    compared = history.log_probs
    allowed = jnp.asarray(candidates) & (earlier < layer)
    distance = jnp.maximum(layer - earlier, 1)
  divergence = jensen_shannon(log_probs, compared)  # [B, i] or [B, L + 1]
  if by_distance:
    divergence = divergence / distance
  chosen = jnp.argmax(jnp.where(allowed, divergence, -jnp.inf), axis=-1)  # [B]
  return jnp.take_along_axis(history.log_probs, chosen[:, None, None], axis=1)[:, 0]


def head_contrast(log_probs: Array, amateur: Array, alpha: float):
  """(contrast [B, V]: log p_i - log p_a on the head set, -inf elsewhere; the head set's
  mass under p_i [B]). softmax(contrast) * mass is the score s."""
  head = log_probs >= jnp.log(alpha) + jnp.max(log_probs, axis=-1, keepdims=True)  # [B, V]
  mass = jnp.sum(jnp.where(head, jnp.exp(log_probs), 0.0), axis=-1)
  return jnp.where(head, log_probs - amateur, -jnp.inf), mass


@dataclasses.dataclass(frozen=True)
class ContrastiveWeighted(Measure):
  """contrastive_weighted: top-1 minus top-2 of the contrastive score s against layer
  floor(i / 2). Runs at every layer, because its amateur need not be an exit point."""

  name = "contrastive_weighted"
  alpha: float = 0.1  # head set {v : p_i(v) >= alpha max p_i}, (0, 1]
  emit_contrastive: bool = False  # emit the contrastive argmax (contrastive decoding)

  @property
  def needs(self) -> Needs:
    return Needs(logits="full", every_layer=True, every_exit_point=True)

  def validate(self, model_config: T5Config) -> None:
    del model_config
    alpha = self.alpha
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 < alpha <= 1:
      raise ValueError(f"ExitConfig.contrastive_alpha={alpha!r} must be in (0, 1]")

  def init(self, context: MeasureContext, embedded: Array) -> LayerHistory:
    config = context.model_config
    logits = exit_logits(config, context.params, embedded)  # [B, V], layer 0
    return start_history(jax.nn.log_softmax(logits, axis=-1), config.num_decoder_layers)

  def confidence(self, context: MeasureContext, inputs: LayerInputs,
                 state: LayerHistory) -> Tuple[Array, LayerHistory]:
    log_probs = jax.nn.log_softmax(inputs.logits.astype(jnp.float32), axis=-1)  # [B, V]
    # The amateur is an earlier layer: read from the history before this layer joins it
    # (reading the updated buffer made XLA copy it at every check).
    amateur = self.amateur(context, state, inputs, log_probs)
    history = record(state, inputs.layer, log_probs)
    contrast, mass = head_contrast(log_probs, amateur, self.alpha)
    first, second = top2_probabilities(contrast)
    return (first - second) * mass, history.replace(contrast=contrast)

  def amateur(self, context: MeasureContext, history: LayerHistory, inputs: LayerInputs,
              log_probs: Array) -> Array:
    """log p [B, V] of the amateur layer."""
    del context, log_probs
    return weighted_amateur(history, inputs.layer)

  def token_logits(self, state: LayerHistory) -> Optional[Array]:
    return state.contrast if self.emit_contrastive else None


@dataclasses.dataclass(frozen=True)
class ContrastiveJSD(ContrastiveWeighted):
  """contrastive_jsd: the amateur is the candidate layer (layer 0 and the earlier exit
  points) farthest from layer i by Jensen-Shannon divergence."""

  name = "contrastive_jsd"
  exit_rule: Optional[ExitConfig] = None  # whose exit points are the candidates
  by_distance: bool = False  # divide the divergence by the layer distance i - j

  @property
  def needs(self) -> Needs:
    return Needs(logits="full", every_exit_point=True)

  def amateur(self, context: MeasureContext, history: LayerHistory, inputs: LayerInputs,
              log_probs: Array) -> Array:
    num_layers = context.model_config.num_decoder_layers
    candidates = np.zeros(num_layers + 1, bool)  # [L + 1]: layer 0 and the exit points
    candidates[[0, *exit_point_layers(self.exit_rule, num_layers)]] = True
    return jsd_amateur(history, inputs.layer, log_probs, candidates, self.by_distance,
                       inputs.static_layer)
