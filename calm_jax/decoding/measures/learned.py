"""Learned exit classifiers as confidence measures (`calm_jax.exit_classifiers`): the
confidence is the classifier's P(consistent), computed at every exit point.

Which measure class serves a classifier follows from what the classifier looks at
(`ClassifierSpec.context`): this layer's state, the last three exit points' states, every
exit point so far (an LSTM carry), or this layer's states of every earlier position (a
`PositionStore`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Tuple, Type

import flax
import jax
import jax.numpy as jnp

from calm_jax.decoding.measures.base import (LayerInputs, Measure, MeasureContext,
                                             PositionStore)
from calm_jax.exit_classifiers import steps
from calm_jax.exit_classifiers.registry import confidence_from_logits

Array = jnp.ndarray


@dataclasses.dataclass(frozen=True)
class StateClassifier(Measure):
  """meta_linear / meta_mlp: P(consistent) of this layer's state."""

  classifier: str = "meta_mlp"  # the registered classifier's name

  @property
  def name(self) -> str:
    return self.classifier

  def confidence(self, context: MeasureContext, inputs: LayerInputs,
                 state: Any) -> Tuple[Array, Any]:
    logits = steps.state_logits(self.classifier, context.classifier_params, inputs.hidden)
    return confidence_from_logits(logits), state


@flax.struct.dataclass
class RecentStates:
  """three_state_mlp's state: the two exit points' states before this one."""

  states: Array  # [B, 2, d] float32, oldest first
  count: Array  # [B] int32, exit points seen so far for this token


@dataclasses.dataclass(frozen=True)
class ThreeStateClassifier(StateClassifier):
  """P(consistent) from the last three exit points' states; 0 before the third."""

  def init(self, context: MeasureContext, embedded: Array) -> RecentStates:
    batch, width = embedded.shape
    return RecentStates(states=jnp.zeros((batch, 2, width), jnp.float32),
                        count=jnp.zeros((batch,), jnp.int32))

  def confidence(self, context: MeasureContext, inputs: LayerInputs,
                 state: RecentStates) -> Tuple[Array, RecentStates]:
    states = jnp.concatenate([state.states, inputs.hidden.astype(jnp.float32)[:, None]],
                             axis=1)  # [B, 3, d]
    logits = steps.three_state_logits(context.classifier_params, states)
    confidence = jnp.where(state.count >= 2, confidence_from_logits(logits), 0.0)
    return confidence, RecentStates(states=states[:, 1:], count=state.count + 1)


@dataclasses.dataclass(frozen=True)
class LSTMClassifier(StateClassifier):
  """P(consistent) from the LSTM's output after stepping on this exit point's state; the
  state is the LSTM carry across the token's exit points."""

  def init(self, context: MeasureContext, embedded: Array) -> Any:
    return steps.initial_lstm_carry(context.classifier_params, embedded.shape[0])

  def confidence(self, context: MeasureContext, inputs: LayerInputs,
                 state: Any) -> Tuple[Array, Any]:
    carry, logits = steps.lstm_step(context.classifier_params, state, inputs.hidden)
    return confidence_from_logits(logits), carry


@flax.struct.dataclass
class AttentionMemory:
  """The attention classifier's keys and values of every layer and output position, laid
  out as its attention reads them (a position's scores and its context are plain
  matrix-vector products per head, with no transpose).

  Size 2 * L * B * T * width float32 (see `steps.init_attention_memory`)."""

  keys: Any  # [L, B, H, T, dh], or L arrays [B, H, T, dh] (the unrolled layer loop's)
  values: Any  # the same layout


class AttentionStore(PositionStore):
  """The attention classifier's store of earlier positions."""

  def init(self, context: MeasureContext, batch: int, max_decode_len: int) -> AttentionMemory:
    return AttentionMemory(*steps.init_attention_memory(
        context.classifier_params, context.model_config.num_decoder_layers, batch,
        max_decode_len))

  def entry(self, context: MeasureContext, hidden: Array) -> AttentionMemory:
    """Keys and values of states hidden [B, d], each [B, H, dh]."""
    return AttentionMemory(*steps.attention_entry(context.classifier_params, hidden))

  def write(self, store: AttentionMemory, entries: AttentionMemory,
            position: Array) -> AttentionMemory:
    def write(stored, entry):  # stored [L, B, H, T, dh] or L x [B, H, T, dh]; [L, B, H, dh]
      if isinstance(stored, tuple):
        return tuple(jax.lax.dynamic_update_slice_in_dim(one, entry[i][:, :, None], position,
                                                         axis=2)
                     for i, one in enumerate(stored))
      return jax.lax.dynamic_update_slice_in_dim(stored, entry[:, :, :, None], position, axis=3)
    return AttentionMemory(keys=write(store.keys, entries.keys),
                           values=write(store.values, entries.values))


@dataclasses.dataclass(frozen=True)
class AttentionClassifier(StateClassifier):
  """P(consistent) from causal attention over this layer's states of positions 0..t."""

  store = AttentionStore()

  def confidence(self, context: MeasureContext, inputs: LayerInputs,
                 state: Any) -> Tuple[Array, Any]:
    logits = steps.attention_step_logits(context.classifier_params, inputs.hidden,
                                         inputs.memory.keys, inputs.memory.values,
                                         inputs.position)
    return confidence_from_logits(logits), state


# ClassifierSpec.context -> the measure class that serves it
BY_CONTEXT: Dict[str, Type[StateClassifier]] = {
    "state": StateClassifier,
    "exit_points": ThreeStateClassifier,
    "layers": LSTMClassifier,
    "positions": AttentionClassifier,
}
