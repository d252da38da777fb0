"""Measures on the exit head's full softmax: softmax_diff, softmax_max, monotone_heuristic."""

from __future__ import annotations

import dataclasses
from typing import Any, Tuple

import jax.numpy as jnp

from calm_jax.decoding.measures.base import (LayerInputs, Measure, MeasureContext, Needs,
                                             top2_probabilities)

Array = jnp.ndarray


@dataclasses.dataclass(frozen=True)
class SoftmaxDiff(Measure):
  """Top-1 minus top-2 probability of the full softmax (CALM's softmax response)."""

  name = "softmax_diff"
  needs = Needs(logits="full")

  def confidence(self, context: MeasureContext, inputs: LayerInputs,
                 state: Any) -> Tuple[Array, Any]:
    first, second = top2_probabilities(inputs.logits)
    return first - second, state


@dataclasses.dataclass(frozen=True)
class SoftmaxMax(Measure):
  """The largest probability of the full softmax."""

  name = "softmax_max"
  needs = Needs(logits="full")

  def confidence(self, context: MeasureContext, inputs: LayerInputs,
                 state: Any) -> Tuple[Array, Any]:
    first, _ = top2_probabilities(inputs.logits)
    return first, state


@dataclasses.dataclass(frozen=True)
class MonotoneHeuristic(Measure):
  """The top-1 probability where the last three exit points' top-1 probabilities (the two
  before and this one) rise strictly, else 0: with the rule confidence >= lambda_t, the
  token leaves once its confidence has risen twice in a row and reached the threshold.

  State: [B, 2] the top-1 probabilities of the two exit points before (NaN when there were
  fewer than two; NaN compares false, so the confidence stays 0 until then).
  """

  name = "monotone_heuristic"
  needs = Needs(logits="full", every_exit_point=True)

  def init(self, context: MeasureContext, embedded: Array) -> Array:
    return jnp.full((embedded.shape[0], 2), jnp.nan, jnp.float32)

  def confidence(self, context: MeasureContext, inputs: LayerInputs,
                 state: Array) -> Tuple[Array, Array]:
    first, _ = top2_probabilities(inputs.logits)  # [B]
    rising = (state[:, 0] < state[:, 1]) & (state[:, 1] < first)
    return jnp.where(rising, first, 0.0), jnp.stack([state[:, 1], first], axis=1)
