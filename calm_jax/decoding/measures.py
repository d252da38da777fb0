"""Confidence measures: small pure functions in a registry, looked up by name.

A measure sees one decoder layer's output for the current token of every example and
returns a confidence per example, carrying its own small state across the layers of one
token. It declares what it needs; the decoder supplies only that:

- `uses_logits`: the decoder computes the full-vocabulary logits at exit points and passes
  them (and reuses them for the emitted token).
- `needs_final_top1`: the decoder first runs every layer to learn the final layer's top-1
  (the oracle), and passes it.
- `thresholded`: exit when confidence >= lambda_t; otherwise the measure decides alone and
  exits where confidence >= 1 (static and oracle exits ignore the threshold).
- `stateful`: the state carries information across exit points, so the decoder runs the
  measure at every exit point, also where no exit can happen (lambda >= 1).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Optional, Tuple

import flax
import jax
import jax.numpy as jnp

Array = jnp.ndarray


@flax.struct.dataclass
class MeasureInputs:
  """What a measure may read at one layer of one token."""

  layer: Array  # [] int32, 1-based number of the layer just computed
  hidden: Array  # [B, d] that layer's output
  logits: Optional[Array]  # [B, V] float32 exit-head logits, when the measure uses them
  final_top1: Optional[Array]  # [B] int32 final layer's top-1, when the measure needs it
  static_exit_layer: int = flax.struct.field(pytree_node=False, default=0)


@dataclasses.dataclass(frozen=True)
class Measure:
  """A registered confidence measure."""

  name: str
  # (inputs, state) -> (confidence [B] float32, new state)
  confidence: Callable[[MeasureInputs, Any], Tuple[Array, Any]]
  # (embedded decoder input [B, d]) -> the state before layer 1
  init_state: Callable[[Array], Any] = lambda embedded: ()
  uses_logits: bool = False
  needs_final_top1: bool = False
  thresholded: bool = True
  # The state carries information across exit points, so the decoder must run the measure
  # at every exit point (even where it could not decide an exit) to keep it current.
  stateful: bool = False


def _top2_probabilities(logits: Array) -> Tuple[Array, Array]:
  """The two largest softmax probabilities [B] each (equal when the top logit is tied).

  Two max reductions instead of `lax.top_k`, which XLA lowers to a sort on CPU (about 10x
  slower over a vocabulary).
  """
  logits = logits.astype(jnp.float32)
  log_normaliser = jax.nn.logsumexp(logits, axis=-1)  # [B]
  first = jnp.max(logits, axis=-1)  # [B]
  top_index = jnp.argmax(logits, axis=-1)  # [B]
  is_top = jnp.arange(logits.shape[-1]) == top_index[:, None]  # [B, V]
  second = jnp.max(jnp.where(is_top, -jnp.inf, logits), axis=-1)  # [B]
  return jnp.exp(first - log_normaliser), jnp.exp(second - log_normaliser)


def softmax_diff(inputs: MeasureInputs, state) -> Tuple[Array, Any]:
  """Top-1 minus top-2 probability of the full softmax (CALM's softmax response)."""
  first, second = _top2_probabilities(inputs.logits)
  return first - second, state


def softmax_max(inputs: MeasureInputs, state) -> Tuple[Array, Any]:
  """The largest probability of the full softmax."""
  first, _ = _top2_probabilities(inputs.logits)
  return first, state


def state_saturation(inputs: MeasureInputs, previous: Array) -> Tuple[Array, Array]:
  """Cosine similarity of this exit point's state with the previous exit point's.

  Before the first exit point the previous state is the decoder input embedding. The state
  only advances at exit points, which are the only layers the decoder asks.
  """
  current = inputs.hidden.astype(jnp.float32)
  dot = jnp.sum(current * previous, axis=-1)
  norms = jnp.linalg.norm(current, axis=-1) * jnp.linalg.norm(previous, axis=-1)
  return dot / jnp.maximum(norms, 1e-12), current


def monotone_heuristic(inputs: MeasureInputs, previous: Array) -> Tuple[Array, Array]:
  """The top-1 probability where the last three exit points' top-1 probabilities (the two
  before and this one) rise strictly, else 0: with the rule confidence >= lambda_t, the
  token leaves once its confidence has risen twice in a row and reached the threshold.

  previous: [B, 2] the top-1 probabilities of the two exit points before (NaN when there
  were fewer than two; NaN compares false, so the confidence stays 0 until then).
  """
  first, _ = _top2_probabilities(inputs.logits)  # [B]
  rising = (previous[:, 0] < previous[:, 1]) & (previous[:, 1] < first)
  return jnp.where(rising, first, 0.0), jnp.stack([previous[:, 1], first], axis=1)


def static_exit(inputs: MeasureInputs, state) -> Tuple[Array, Any]:
  """1 at `static_exit_layer`, 0 elsewhere: every token leaves at that layer."""
  hit = inputs.layer == inputs.static_exit_layer
  return jnp.broadcast_to(hit, inputs.hidden.shape[:1]).astype(jnp.float32), state


def oracle_exit(inputs: MeasureInputs, state) -> Tuple[Array, Any]:
  """1 where this layer's top-1 equals the final layer's (CALM's local oracle)."""
  top1 = jnp.argmax(inputs.logits, axis=-1).astype(jnp.int32)
  return (top1 == inputs.final_top1).astype(jnp.float32), state


MEASURES: Dict[str, Measure] = {}


def register(measure: Measure) -> Measure:
  """Adds a measure to the registry (names are unique)."""
  if measure.name in MEASURES:
    raise ValueError(f"a measure named {measure.name!r} is already registered")
  MEASURES[measure.name] = measure
  return measure


register(Measure("softmax_diff", softmax_diff, uses_logits=True))
register(Measure("softmax_max", softmax_max, uses_logits=True))
register(Measure("state_saturation", state_saturation,
                 init_state=lambda embedded: embedded.astype(jnp.float32)))
register(Measure("monotone_heuristic", monotone_heuristic, uses_logits=True, stateful=True,
                 init_state=lambda embedded: jnp.full((embedded.shape[0], 2), jnp.nan,
                                                      jnp.float32)))
register(Measure("static", static_exit, thresholded=False))
register(Measure("oracle", oracle_exit, uses_logits=True, needs_final_top1=True,
                 thresholded=False))


def get_measure(name: str) -> Measure:
  if name not in MEASURES:
    raise ValueError(f"unknown confidence measure {name!r}; registered: {', '.join(sorted(MEASURES))}")
  return MEASURES[name]
