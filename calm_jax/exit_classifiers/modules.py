"""The learned exit classifiers' Flax modules: small networks that score "safe to exit"
from decoder states.

Each maps what it looks at to two logits; index 1 means "consistent with the full model,
safe to exit" (the confidence is softmax(logits)[1], `registry.confidence_from_logits`).
One classifier is shared by every decoder layer, and each first applies its own RMSNorm (a
learned scale, epsilon 1e-6) to every decoder state, because T5's residual stream grows
with depth. `registry` says which module a name is, with which options.
"""

from __future__ import annotations

from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from calm_jax.model.layers import NEG_INF, RMSNorm

Array = jnp.ndarray

INPUT_NORM_EPSILON = 1e-6


def _input_norm(name: Optional[str] = "norm") -> RMSNorm:
  """The classifier's own RMSNorm of decoder states (unnamed inside `setup`)."""
  return RMSNorm(INPUT_NORM_EPSILON, name=name)


def _as_float32(x: Array) -> Array:
  return jnp.asarray(x).astype(jnp.float32)


class MetaLinear(nn.Module):
  """CALM's meta classifier: one dense layer from the state to two classes."""

  @nn.compact
  def __call__(self, state: Array) -> Array:  # [..., d] -> [..., 2]
    return nn.Dense(2, name="out")(_input_norm()(_as_float32(state)))


class MetaMLP(nn.Module):
  """Dense d -> hidden_width, ReLU, dense -> two classes."""

  hidden_width: int

  @nn.compact
  def __call__(self, state: Array) -> Array:  # [..., d] -> [..., 2]
    hidden = nn.relu(nn.Dense(self.hidden_width, name="hidden")(
        _input_norm()(_as_float32(state))))
    return nn.Dense(2, name="out")(hidden)


class ThreeStateMLP(nn.Module):
  """The last three exit points' states, each normed, concatenated (oldest first):
  dense 3d -> hidden_width, ReLU, dense -> two classes."""

  hidden_width: int

  @nn.compact
  def __call__(self, states: Array) -> Array:  # [..., 3, d] -> [..., 2]
    normed = _input_norm()(_as_float32(states))
    joined = normed.reshape(normed.shape[:-2] + (-1,))  # [..., 3d]
    hidden = nn.relu(nn.Dense(self.hidden_width, name="hidden")(joined))
    return nn.Dense(2, name="out")(hidden)


class LSTMCell(nn.Module):
  """One LSTM layer: gates from the input and the previous output, one fused matmul each."""

  width: int

  @nn.compact
  def __call__(self, carry: Tuple[Array, Array], x: Array) -> Tuple[Array, Array]:
    output, memory = carry  # [..., w] each
    gates = (nn.Dense(4 * self.width, name="input")(x)
             + nn.Dense(4 * self.width, use_bias=False, name="recurrent")(output))  # [..., 4w]
    in_gate, forget_gate, candidate, out_gate = jnp.split(gates, 4, axis=-1)
    memory = (jax.nn.sigmoid(forget_gate) * memory
              + jax.nn.sigmoid(in_gate) * jnp.tanh(candidate))
    return jax.nn.sigmoid(out_gate) * jnp.tanh(memory), memory


class LayerLSTM(nn.Module):
  """A stacked LSTM stepping over one token's states, one exit point at a time.

  The carry is (outputs, memories), each [..., num_layers, width]; the logits come from the
  top LSTM layer's output after this step."""

  num_layers: int
  width: int

  def setup(self):
    self.norm = _input_norm(None)
    self.cells = [LSTMCell(self.width) for _ in range(self.num_layers)]
    self.out = nn.Dense(2)

  def __call__(self, carry: Tuple[Array, Array], state: Array):
    outputs, memories = carry  # [..., n, w] each
    x = self.norm(_as_float32(state))  # [..., d]
    new_outputs, new_memories = [], []
    for index, cell in enumerate(self.cells):
      x, memory = cell((outputs[..., index, :], memories[..., index, :]), x)
      new_outputs.append(x)
      new_memories.append(memory)
    return (jnp.stack(new_outputs, axis=-2), jnp.stack(new_memories, axis=-2)), self.out(x)


class PositionAttention(nn.Module):
  """A one-layer, attention-only causal transformer over the positions of one layer.

  state -> RMSNorm -> dense to `width` (the embedding e); logits = out(e + mix(attention of
  e's queries over the keys/values of earlier positions' e and its own)).
  """

  width: int
  num_heads: int

  def setup(self):
    head_width = self.width // self.num_heads
    self.norm = _input_norm(None)
    self.embedding = nn.Dense(self.width)
    self.query = nn.DenseGeneral((self.num_heads, head_width))
    self.key = nn.DenseGeneral((self.num_heads, head_width))
    self.value = nn.DenseGeneral((self.num_heads, head_width))
    self.mix = nn.DenseGeneral(self.width, axis=(-2, -1))
    self.out = nn.Dense(2)

  def embed(self, state: Array) -> Array:  # [..., d] -> [..., w]
    return self.embedding(self.norm(_as_float32(state)))

  def keys_values(self, embedded: Array) -> Tuple[Array, Array]:  # [..., w] -> [..., H, dh] x2
    return self.key(embedded), self.value(embedded)

  def __call__(self, embedded: Array, keys: Array, values: Array, visible: Array) -> Array:
    """embedded [B, Tq, w]; keys, values [B, Tk, H, dh]; visible [B, Tq, Tk] bool ->
    logits [B, Tq, 2]."""
    head_width = self.width // self.num_heads
    query = self.query(embedded) * head_width ** -0.5  # [B, Tq, H, dh]
    scores = jnp.einsum("bqhd,bkhd->bhqk", query, keys)  # [B, H, Tq, Tk]
    scores = jnp.where(visible[:, None], scores, NEG_INF)
    weights = jax.nn.softmax(scores, axis=-1)
    context = jnp.einsum("bhqk,bkhd->bqhd", weights, values)  # [B, Tq, H, dh]
    return self.out(embedded + self.mix(context))

  def step(self, embedded: Array, own_keys: Array, own_values: Array, keys: Array,
           values: Array, earlier: Array) -> Array:
    """One position (the decoder's step): what __call__ gives with the position's own entry
    written into the store, computed without writing it, so the store is only read.
    embedded [R, 1, w]; own_keys, own_values [R, 1, H, dh]; keys, values [R, H, T, dh] (the
    decoder's layout); earlier [R, 1, T] bool marks the stored positions it sees ->
    logits [R, 1, 2]."""
    head_width = self.width // self.num_heads
    query = self.query(embedded) * head_width ** -0.5  # [R, 1, H, dh]
    stored = jnp.einsum("bqhd,bhkd->bhqk", query, keys)  # [R, H, 1, T]
    stored = jnp.where(earlier[:, None], stored, NEG_INF)
    own = jnp.einsum("bqhd,bqhd->bhq", query, own_keys)[..., None]  # [R, H, 1, 1]
    weights = jax.nn.softmax(jnp.concatenate([stored, own], axis=-1), axis=-1)
    context = (jnp.einsum("bhqk,bhkd->bqhd", weights[..., :-1], values)
               + jnp.moveaxis(weights[..., -1:], 1, 2) * own_values)  # [R, 1, H, dh]
    return self.out(embedded + self.mix(context))

  def init_all(self, states: Array) -> Array:
    """Touches every parameter, for `init`: states [B, T, d] -> logits [B, T, 2]."""
    embedded = self.embed(states)
    keys, values = self.keys_values(embedded)
    length = states.shape[1]
    visible = jnp.broadcast_to(jnp.tri(length, dtype=bool), (states.shape[0], length, length))
    return self(embedded, keys, values, visible)
