"""The learned exit classifiers over whole sequences (training): the logits the decoder
computes at every layer and position, from every layer's states under teacher forcing.

`three_state_mlp` has no prediction before the third exit point: its logits there are
`ZERO_CONFIDENCE_LOGITS` (confidence exactly 0, no gradient); `defined_layers` says where
its predictions are real, for masking a training loss.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from calm_jax.exit_classifiers.modules import PositionAttention
from calm_jax.exit_classifiers.registry import build_classifier, get_classifier
from calm_jax.exit_classifiers.steps import (initial_lstm_carry, lstm_step, state_logits,
                                             three_state_logits)
from calm_jax.model.layers import NEG_INF

Array = jnp.ndarray
Params = Any

# Logits of "no prediction": softmax gives exactly confidence 0.
ZERO_CONFIDENCE_LOGITS = (0.0, NEG_INF)


def exit_point_mask(num_layers: int, exit_points: Optional[Sequence[int]]) -> np.ndarray:
  """[L] bool from 1-based exit layers (None: every layer). Layer L is always one."""
  if exit_points is None:
    return np.ones(num_layers, bool)
  layers = np.asarray(list(exit_points), np.int64)
  if layers.size and (layers.min() < 1 or layers.max() > num_layers):
    raise ValueError(f"exit_points must lie in [1, {num_layers}], got {sorted(layers.tolist())}")
  mask = np.zeros(num_layers, bool)
  mask[layers - 1] = True
  mask[-1] = True
  return mask


def defined_layers(name: str, num_layers: int,
                   exit_points: Optional[Sequence[int]] = None) -> np.ndarray:
  """[L] bool: exit points where classifier `name` makes a real prediction (for masking a
  training loss): every exit point, except before the third one for three_state_mlp."""
  mask = exit_point_mask(num_layers, exit_points)
  if get_classifier(name).context == "exit_points":
    mask &= np.cumsum(mask) >= 3
  return mask


def _three_state_teacher_forced(params: Params, states: Array, points: np.ndarray) -> Array:
  """Layer i sees the two exit points before it and itself; 0 confidence with fewer."""
  num_layers = states.shape[0]
  index = np.zeros((num_layers, 3), np.int64)  # [L, 3] layer of each of the three states
  valid = np.zeros(num_layers, bool)
  for layer in range(num_layers):
    before = np.flatnonzero(points[:layer])
    if before.size >= 2:
      index[layer] = [before[-2], before[-1], layer]
      valid[layer] = True
    else:
      index[layer] = layer
  gathered = jnp.moveaxis(states[index], 1, -2)  # [L, 3, B, T, d] -> [L, B, T, 3, d]
  logits = three_state_logits(params, gathered)  # [L, B, T, 2]
  return jnp.where(valid[:, None, None, None], logits,
                   jnp.asarray(ZERO_CONFIDENCE_LOGITS, logits.dtype))


def _lstm_teacher_forced(params: Params, states: Array, points: np.ndarray) -> Array:
  """The LSTM steps over the exit points in order; any layer's logits come from one step
  on its state from the carry of the exit points before it."""
  num_layers, batch, length, _ = states.shape
  carry = jax.tree.map(lambda a: a.reshape(batch, length, *a.shape[1:]),
                       initial_lstm_carry(params, batch * length))  # [B, T, n, w] each
  logits = []
  for layer in range(num_layers):
    stepped, layer_logits = lstm_step(params, carry, states[layer])
    logits.append(layer_logits)
    if points[layer]:
      carry = stepped
  return jnp.stack(logits)  # [L, B, T, 2]


def _attention_teacher_forced(params: Params, states: Array,
                              decoder_mask: Optional[Array]) -> Array:
  """Causal attention over the positions of each layer; padding positions are no keys."""
  num_layers, batch, length, d_model = states.shape
  module = build_classifier("attention", params)
  flat = states.reshape(num_layers * batch, length, d_model)
  embedded = module.apply({"params": params}, flat, method=PositionAttention.embed)
  keys, values = module.apply({"params": params}, embedded,
                              method=PositionAttention.keys_values)
  visible = jnp.tri(length, dtype=bool)[None]  # [1, T, T]
  if decoder_mask is not None:
    visible = visible & (jnp.asarray(decoder_mask) > 0)[:, None, :]  # [B, T, T]
  visible = jnp.broadcast_to(visible[None], (num_layers, batch, length, length))
  logits = module.apply({"params": params}, embedded, keys, values,
                        visible.reshape(num_layers * batch, length, length))
  return logits.reshape(num_layers, batch, length, 2)


def classifier_logits_teacher_forced(name: str, params: Params, states: Array,
                                     decoder_mask: Optional[Array] = None,
                                     exit_points: Optional[Sequence[int]] = None) -> Array:
  """Two-class logits [L, B, T, 2] float32 of classifier `name` at every decoder layer and
  position of whole sequences, exactly as the decoder computes them there.

  states: every decoder layer's output [L, B, T, d] (`model.t5.decode_teacher_forced`).
  decoder_mask: [B, T], 1 at real decoder positions (attention ignores the others as keys).
  exit_points: the 1-based exit layers (static; None = every layer; layer L always is one).
    three_state_mlp and lstm advance over exit points only; at any layer the logits are
    what the classifier says if asked there (three_state_mlp: ZERO_CONFIDENCE_LOGITS
    before two exit points precede the layer; see `defined_layers`).

  Pure and jittable (name and exit_points static); gradients flow to params and states.
  """
  spec = get_classifier(name)
  points = exit_point_mask(states.shape[0], exit_points)
  if spec.context == "exit_points":
    logits = _three_state_teacher_forced(params, states, points)
  elif spec.context == "layers":
    logits = _lstm_teacher_forced(params, states, points)
  elif spec.context == "positions":
    logits = _attention_teacher_forced(params, states, decoder_mask)
  else:
    logits = state_logits(name, params, states)
  return logits.astype(jnp.float32)
