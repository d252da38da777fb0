"""Hidden-state saturation: does the state stop changing between exit points."""

from __future__ import annotations

import dataclasses
from typing import Tuple

import jax.numpy as jnp

from calm_jax.decoding.measures.base import LayerInputs, Measure, MeasureContext

Array = jnp.ndarray


@dataclasses.dataclass(frozen=True)
class StateSaturation(Measure):
  """Cosine similarity of this exit point's state with the previous exit point's.

  Before the first exit point the previous state is the decoder input embedding. The state
  [B, d] float32 only advances at exit points, which are the only layers the decoder asks.
  """

  name = "state_saturation"

  def init(self, context: MeasureContext, embedded: Array) -> Array:
    return embedded.astype(jnp.float32)

  def confidence(self, context: MeasureContext, inputs: LayerInputs,
                 state: Array) -> Tuple[Array, Array]:
    current = inputs.hidden.astype(jnp.float32)
    dot = jnp.sum(current * state, axis=-1)
    norms = jnp.linalg.norm(current, axis=-1) * jnp.linalg.norm(state, axis=-1)
    return dot / jnp.maximum(norms, 1e-12), current
