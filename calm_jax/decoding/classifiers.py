"""Learned exit classifiers: small Flax modules that score "safe to exit" from decoder states.

Each classifier maps what it looks at to two logits; index 1 means "consistent with the
full model, safe to exit", and the confidence is softmax(logits)[1]. One classifier is
shared by every decoder layer. Every classifier first applies its own RMSNorm (a learned
scale, epsilon 1e-6) to each decoder state, because T5's residual stream grows with depth.

| name              | looks at                                  | options (default)            |
|-------------------|-------------------------------------------|------------------------------|
| `meta_linear`     | this layer's state                        | -                            |
| `meta_mlp`        | this layer's state                        | hidden_width (d_model)       |
| `three_state_mlp` | the last three exit points' states        | hidden_width (d_model)       |
| `lstm`            | this token's states at every exit point   | num_layers (2), width (64)   |
|                   | so far, oldest first                      |                              |
| `attention`       | this layer's states of every position so  | width (64), num_heads (4)    |
|                   | far (causal, one attention-only layer)    |                              |

Options are never stored apart from the parameters: they are read off the parameter shapes
(`classifier_options`), so a parameter tree alone says which module it belongs to and the
decoder needs nothing but the classifier's name (`ExitConfig.measure`) and its parameters.

`three_state_mlp` has no prediction before the third exit point: its logits there are
`ZERO_CONFIDENCE_LOGITS` (confidence exactly 0, no gradient); `defined_layers` says where
its predictions are real, for masking a training loss.

`classifier_logits_teacher_forced` computes, from every layer's state of a whole sequence,
the logits the decoder computes at each layer and position; it is pure and jittable, the
function exit-classifier training differentiates through. The per-token pieces the decoder
calls (`state_logits`, `three_state_logits`, `lstm_step`, `attention_step_logits`, ...)
compute the same thing one position at a time.

Parameters are saved as a directory holding `params.msgpack` (flax.serialization) and
`classifier.json` (name, options, input width, SHA-256 of the parameter file), each written
atomically; `load_classifier` checks all of it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from calm_jax.files import replace_atomically, write_json_atomically
from calm_jax.model.layers import NEG_INF, RMSNorm

Array = jnp.ndarray
Params = Any

INPUT_NORM_EPSILON = 1e-6
# Logits of "no prediction": softmax gives exactly confidence 0.
ZERO_CONFIDENCE_LOGITS = (0.0, NEG_INF)
PARAMS_FILE = "params.msgpack"
INFO_FILE = "classifier.json"


def _input_norm(name: Optional[str] = "norm") -> RMSNorm:
  """The classifier's own RMSNorm of decoder states (unnamed inside `setup`)."""
  return RMSNorm(INPUT_NORM_EPSILON, name=name)


def _as_float32(x: Array) -> Array:
  return jnp.asarray(x).astype(jnp.float32)


# --- modules ------------------------------------------------------------------------------

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


# --- registry -----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ClassifierSpec:
  """A registered classifier: its module, options and what it looks at."""

  name: str
  module: Callable[..., nn.Module]  # (**options) -> the Flax module
  defaults: Mapping[str, Optional[int]]  # option -> default; None means d_model
  # params -> options, read off the parameter shapes
  options_of: Callable[[Params], Dict[str, int]]
  # 'state' (this layer's), 'exit_points' (the last three), 'layers' (all exit points so
  # far, recurrent) or 'positions' (this layer's states of all positions so far)
  context: str


CLASSIFIERS: Dict[str, ClassifierSpec] = {
    spec.name: spec for spec in [
        ClassifierSpec("meta_linear", MetaLinear, {}, lambda p: {}, "state"),
        ClassifierSpec("meta_mlp", MetaMLP, {"hidden_width": None},
                       lambda p: {"hidden_width": p["hidden"]["kernel"].shape[1]}, "state"),
        ClassifierSpec("three_state_mlp", ThreeStateMLP, {"hidden_width": None},
                       lambda p: {"hidden_width": p["hidden"]["kernel"].shape[1]},
                       "exit_points"),
        ClassifierSpec("lstm", LayerLSTM, {"num_layers": 2, "width": 64},
                       lambda p: {"num_layers": sum(k.startswith("cells_") for k in p),
                                  "width": p["cells_0"]["recurrent"]["kernel"].shape[0]},
                       "layers"),
        ClassifierSpec("attention", PositionAttention, {"width": 64, "num_heads": 4},
                       lambda p: {"width": p["embedding"]["kernel"].shape[1],
                                  "num_heads": p["query"]["kernel"].shape[1]}, "positions"),
    ]
}


def get_classifier(name: str) -> ClassifierSpec:
  if name not in CLASSIFIERS:
    raise ValueError(f"unknown exit classifier {name!r}; registered: "
                     f"{', '.join(sorted(CLASSIFIERS))}")
  return CLASSIFIERS[name]


def _check_options(name: str, d_model: int, options: Mapping[str, Any]) -> Dict[str, int]:
  """The classifier's options with defaults filled in; ValueError naming a bad one."""
  spec = get_classifier(name)
  unknown = sorted(set(options) - set(spec.defaults))
  if unknown:
    allowed = ", ".join(spec.defaults) or "none"
    raise ValueError(f"unknown option(s) {unknown} for exit classifier {name!r}; allowed: "
                     f"{allowed}")
  filled = {key: d_model if default is None else default
            for key, default in spec.defaults.items()}
  filled.update(options)
  for key, value in filled.items():
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"exit classifier {name!r} option {key}={value!r} must be a positive "
                       "integer")
  if name == "attention" and filled["width"] % filled["num_heads"]:
    raise ValueError(f"exit classifier 'attention': width={filled['width']} must be a "
                     f"multiple of num_heads={filled['num_heads']}")
  return {key: int(value) for key, value in filled.items()}


def check_classifier_options(name: str, d_model: int,
                             options: Mapping[str, Any]) -> Dict[str, int]:
  """Public form of the option check: the options with defaults filled in, or a ValueError
  naming the bad one (used by training configs before any model is loaded)."""
  return _check_options(name, d_model, options)


def _init_inputs(spec: ClassifierSpec, d_model: int, options: Mapping[str, int]):
  """(arguments, method) that make `init` touch every parameter."""
  if spec.context == "exit_points":
    return (jnp.zeros((1, 3, d_model)),), None
  if spec.context == "layers":
    carry = initial_lstm_carry_shape(1, options["num_layers"], options["width"])
    return (carry, jnp.zeros((1, d_model))), None
  if spec.context == "positions":
    return (jnp.zeros((1, 2, d_model)),), PositionAttention.init_all
  return (jnp.zeros((1, d_model)),), None


def initial_lstm_carry_shape(batch: int, num_layers: int, width: int) -> Tuple[Array, Array]:
  """Zero (outputs, memories) of a LayerLSTM, each [batch, num_layers, width]."""
  zeros = jnp.zeros((batch, num_layers, width), jnp.float32)
  return zeros, zeros


def init_classifier(name: str, model_config, rng: Array, **options) -> Params:
  """Fresh parameters (a plain nested dict) of classifier `name` for the model's d_model."""
  d_model = model_config.d_model
  options = _check_options(name, d_model, options)
  spec = get_classifier(name)
  arguments, method = _init_inputs(spec, d_model, options)
  variables = spec.module(**options).init(rng, *arguments, method=method)
  return flax.core.unfreeze(variables["params"])


def classifier_options(name: str, params: Params) -> Dict[str, int]:
  """The options a parameter tree was built with, read off its shapes."""
  try:
    return get_classifier(name).options_of(params)
  except (KeyError, TypeError, IndexError, AttributeError) as error:
    raise ValueError(f"parameters do not look like an exit classifier {name!r} (missing or "
                     f"malformed entry: {error!r})") from None


def _leaf_shapes(tree: Params) -> Dict[str, Tuple[int, ...]]:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path): tuple(np.shape(leaf)) for path, leaf in flat}


def check_classifier_params(name: str, params: Params, d_model: int) -> Dict[str, int]:
  """Checks that `params` is a complete classifier `name` for states of width d_model;
  returns its options. ValueError naming the first bad entry."""
  if params is None:
    raise ValueError(f"measure {name!r} is a learned exit classifier and needs its parameters "
                     "(classifier_params=..., or config.exit.classifier_path)")
  options = classifier_options(name, params)
  expected = _leaf_shapes(jax.eval_shape(
      lambda: init_classifier(name, _Width(d_model), jax.random.PRNGKey(0), **options)))
  got = _leaf_shapes(params)
  for key in sorted(set(expected) | set(got)):
    if key not in got:
      raise ValueError(f"exit classifier {name!r} parameters lack {key} (shape "
                       f"{expected[key]})")
    if key not in expected:
      raise ValueError(f"exit classifier {name!r} parameters have an unexpected entry {key}")
    if got[key] != expected[key]:
      raise ValueError(f"exit classifier {name!r} parameter {key} has shape {got[key]}, "
                       f"expected {expected[key]} (options {options}, d_model {d_model})")
  return options


@dataclasses.dataclass(frozen=True)
class _Width:
  """Stands in for a model config where only d_model matters."""

  d_model: int


def build_classifier(name: str, params: Params) -> nn.Module:
  """The module of classifier `name` with the options its parameters were built with."""
  return get_classifier(name).module(**classifier_options(name, params))


def _apply(name: str, params: Params, *args, method=None):
  return build_classifier(name, params).apply({"params": params}, *args, method=method)


def confidence_from_logits(logits: Array) -> Array:
  """P(consistent) = softmax(logits)[..., 1], float32."""
  return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)[..., 1]


# --- one position at a time (the decoder) -------------------------------------------------

def state_logits(name: str, params: Params, hidden: Array) -> Array:
  """meta_linear / meta_mlp: hidden [..., d] -> logits [..., 2]."""
  return _apply(name, params, hidden)


def three_state_logits(params: Params, states: Array) -> Array:
  """three_state_mlp: the last three exit points' states [..., 3, d] (oldest first) ->
  logits [..., 2]."""
  return _apply("three_state_mlp", params, states)


def initial_lstm_carry(params: Params, batch: int) -> Tuple[Array, Array]:
  """The LSTM's zero carry before a token's first exit point, each [B, n, w]."""
  options = classifier_options("lstm", params)
  return initial_lstm_carry_shape(batch, options["num_layers"], options["width"])


def lstm_step(params: Params, carry: Tuple[Array, Array], hidden: Array):
  """One exit point of the LSTM: (carry, hidden [B, d]) -> (carry, logits [B, 2])."""
  return _apply("lstm", params, carry, hidden)


def attention_entry(params: Params, hidden: Array) -> Tuple[Array, Array]:
  """What a position leaves for later positions at one layer: keys and values of states
  hidden [B, d], each [B, H, dh] float32. The same at every layer (the classifier is
  shared), so state propagation computes it once per exit state."""
  module = build_classifier("attention", params)
  embedded = module.apply({"params": params}, hidden, method=PositionAttention.embed)
  return module.apply({"params": params}, embedded, method=PositionAttention.keys_values)


def attention_step_logits(params: Params, hidden: Array, keys: Array, values: Array,
                          position: Array) -> Array:
  """Logits [R, 2] of position `position` from its states hidden [R, d] and the keys and
  values [R, H, T, dh] of this layer's earlier positions (entries at `position` and after
  are ignored)."""
  module = build_classifier("attention", params)
  embedded = module.apply({"params": params}, hidden[:, None],
                          method=PositionAttention.embed)  # [R, 1, w]
  own_keys, own_values = module.apply({"params": params}, embedded,
                                      method=PositionAttention.keys_values)  # [R, 1, H, dh]
  length = keys.shape[2]
  earlier = jnp.broadcast_to(jnp.arange(length) < position, (hidden.shape[0], 1, length))
  return module.apply({"params": params}, embedded, own_keys, own_values, keys, values,
                      earlier, method=PositionAttention.step)[:, 0]


def init_attention_memory(params: Params, num_layers: int, batch: int,
                          max_decode_len: int) -> Tuple[Array, Array]:
  """The decoder's store of earlier positions for the attention classifier: keys and
  values, each [L, B, H, T, dh] float32 (zeros). Memory: 2 * L * B * T * width * 4 bytes,
  e.g. 8 layers, batch 64, 256 positions, width 64: 64 MiB."""
  options = classifier_options("attention", params)
  heads = options["num_heads"]
  shape = (num_layers, batch, heads, max_decode_len, options["width"] // heads)
  zeros = jnp.zeros(shape, jnp.float32)
  return zeros, zeros


# --- whole sequences (training) -----------------------------------------------------------

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


# --- saving and loading -------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class SavedClassifier:
  """A classifier read back from disk."""

  name: str
  options: Dict[str, int]
  input_width: int  # d_model of the decoder it was trained on
  params: Params


def _input_width(name: str, params: Params) -> int:
  """d_model of the states the classifier reads (its input norm's width)."""
  try:
    return int(params["norm"]["scale"].shape[0])
  except (KeyError, TypeError, IndexError, AttributeError):
    raise ValueError(f"parameters do not look like an exit classifier {name!r} (no "
                     "norm/scale)") from None


def save_classifier(directory: str, name: str, params: Params) -> str:
  """Writes classifier `name`'s parameters and a description to `directory` (created if
  needed): params.msgpack first, then classifier.json, each atomically; returns the
  directory. ValueError if the parameters are not a complete classifier `name`."""
  options = classifier_options(name, params)
  width = _input_width(name, params)
  check_classifier_params(name, params, width)
  payload = flax.serialization.msgpack_serialize(jax.tree.map(np.asarray, params))
  os.makedirs(directory, exist_ok=True)

  def write(temporary: str) -> None:
    with open(temporary, "wb") as f:
      f.write(payload)
  replace_atomically(os.path.join(directory, PARAMS_FILE), write)
  write_json_atomically(os.path.join(directory, INFO_FILE), {
      "name": name, "options": options, "input_width": width,
      "params_sha256": hashlib.sha256(payload).hexdigest()})
  return directory


def _read_info(directory: str) -> Dict[str, Any]:
  path = os.path.join(directory, INFO_FILE)
  if not os.path.isfile(path):
    raise ValueError(f"no saved exit classifier at {directory!r}: {INFO_FILE} is missing")
  try:
    with open(path, encoding="utf-8") as f:
      info = json.load(f)
  except json.JSONDecodeError as error:
    raise ValueError(f"{path!r} is not valid JSON: {error}") from None
  missing = [key for key in ("name", "options", "input_width", "params_sha256")
             if not isinstance(info, dict) or key not in info]
  if missing:
    raise ValueError(f"{path!r} lacks {', '.join(missing)}")
  return info


def load_classifier(directory: str, model_config=None,
                    expected_name: Optional[str] = None) -> SavedClassifier:
  """Reads a classifier written by `save_classifier` and checks it: known name (equal to
  `expected_name` when given), parameter file intact and of the recorded options' shapes,
  input width equal to `model_config.d_model` when given. ValueError naming what is wrong."""
  info = _read_info(directory)
  name = info["name"]
  get_classifier(name)
  if expected_name is not None and name != expected_name:
    raise ValueError(f"the exit classifier at {directory!r} is {name!r}, but the measure is "
                     f"{expected_name!r}")
  path = os.path.join(directory, PARAMS_FILE)
  if not os.path.isfile(path):
    raise ValueError(f"no saved exit classifier at {directory!r}: {PARAMS_FILE} is missing")
  with open(path, "rb") as f:
    payload = f.read()
  if hashlib.sha256(payload).hexdigest() != info["params_sha256"]:
    raise ValueError(f"{path!r} does not match the checksum in {INFO_FILE} (changed or "
                     "partly written)")
  params = flax.serialization.msgpack_restore(payload)
  width = int(info["input_width"])
  if model_config is not None and model_config.d_model != width:
    raise ValueError(f"the exit classifier at {directory!r} reads states of width {width}, "
                     f"but the model's d_model is {model_config.d_model}")
  options = check_classifier_params(name, params, width)
  if options != info["options"]:
    raise ValueError(f"the exit classifier at {directory!r} has options {options}, but "
                     f"{INFO_FILE} records {info['options']}")
  return SavedClassifier(name, options, width, params)


def classifier_params_for(exit_config, model_config) -> Optional[Params]:
  """The classifier parameters a run config asks for: None unless the measure is a learned
  classifier, else those saved at `exit_config.classifier_path` (checked)."""
  if exit_config.measure not in CLASSIFIERS:
    return None
  if not exit_config.classifier_path:
    raise ValueError(f"measure {exit_config.measure!r} is a learned exit classifier: set "
                     "exit.classifier_path to a directory written by save_classifier")
  return load_classifier(exit_config.classifier_path, model_config,
                         expected_name=exit_config.measure).params
