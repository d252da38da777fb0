"""Exits for analysis that ignore the threshold: static (always layer k) and oracle (the
first layer whose top-1 equals the final layer's)."""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Tuple

import jax.numpy as jnp

from calm_jax.decoding.measures.base import LayerInputs, Measure, MeasureContext, Needs
from calm_jax.model.config import T5Config

Array = jnp.ndarray


@dataclasses.dataclass(frozen=True)
class StaticExit(Measure):
  """1 at `layer`, 0 elsewhere: every token leaves at that layer."""

  name = "static"
  needs = Needs(thresholded=False)
  layer: int = 0  # 1..L (ExitConfig.static_exit_layer)

  def validate(self, model_config: T5Config) -> None:
    num_layers = model_config.num_decoder_layers
    if isinstance(self.layer, bool) or not isinstance(self.layer, numbers.Integral) or not (
        1 <= self.layer <= num_layers):
      raise ValueError(f"ExitConfig.static_exit_layer={self.layer!r} must be in "
                       f"[1, {num_layers}] for the 'static' measure")

  def confidence(self, context: MeasureContext, inputs: LayerInputs,
                 state: Any) -> Tuple[Array, Any]:
    hit = inputs.layer == self.layer
    return jnp.broadcast_to(hit, inputs.hidden.shape[:1]).astype(jnp.float32), state


@dataclasses.dataclass(frozen=True)
class OracleExit(Measure):
  """1 where this layer's top-1 equals the final layer's (CALM's local oracle)."""

  name = "oracle"
  needs = Needs(logits="full", final_top1=True, thresholded=False)

  def confidence(self, context: MeasureContext, inputs: LayerInputs,
                 state: Any) -> Tuple[Array, Any]:
    top1 = jnp.argmax(inputs.logits, axis=-1).astype(jnp.int32)
    return (top1 == inputs.final_top1).astype(jnp.float32), state
