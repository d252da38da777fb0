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
- `learned`: a learned exit classifier (`calm_jax.decoding.classifiers`, same name); the
  decoder passes its parameters (`classifier_params`) and refuses to run without them.
- `every_layer`: the measure looks at any earlier layer (contrastive_weighted's amateur is
  layer floor(i/2)), so the decoder runs it at every layer, not only at exit points.
  contrastive_* with `contrastive_token` emit the contrastive argmax (also at layer L, so
  lambda >= 1 is then contrastive decoding, not the full model).
- `token_logits`: (exit_config, state) -> the logits the token is chosen from at an exit,
  or None for the exit head's. With `subset_width` the measure scores its own subset of
  the vocabulary (softmax_topk, softmax_pruned): its state holds `logits` [B, K] and their
  vocabulary `ids` [B, K]; an early exit emits the best of those, mapped back to its id,
  and a token that runs all L layers the full head's, so lambda >= 1 stays the full model.
  The decoder builds the head's rows [V, d] once per decode (`MeasureInputs.head_table`)
  for these measures to gather from.
- `init_memory` / `memory_entry` / `write_memory`: a store of earlier positions (the
  attention classifier), leaves [L, B, ...]. During a position the store is only read: the
  decoder passes the measure this layer's slice for its rows ([R, ...]), and collects what
  the position leaves at each layer (`memory_entry`, after the layer, for every row: exited
  rows leave their exit state, like state propagation; the layers no example reached get
  the exit states). After the position it writes them all at once (`write_memory`), so no
  layer's read of the store waits on a write to it or works on a copy of it.

Measures that do not use logits (and stateful ones) run at every exit point.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
from typing import Any, Callable, Dict, Optional, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np

from calm_jax.decoding import classifiers, contrastive, vocabulary
from calm_jax.decoding.exit_rule import is_exit_point
from calm_jax.model.t5 import exit_logits

Array = jnp.ndarray


@flax.struct.dataclass
class MeasureInputs:
  """What a measure may read at one layer of one token."""

  layer: Array  # [] int32, 1-based number of the layer just computed
  hidden: Array  # [B, d] that layer's output
  logits: Optional[Array]  # [B, V] float32 exit-head logits, when the measure uses them
  final_top1: Optional[Array]  # [B] int32 final layer's top-1, when the measure needs it
  position: Optional[Array] = None  # [] int32, the output position
  classifier_params: Any = None  # the learned classifier's parameters (learned measures)
  memory: Any = ()  # this layer's store of earlier positions, leaves [B, ...] (init_memory)
  model_params: Any = None  # the model's parameters (measures that run the exit head)
  # [V, d] the head's rows, for the subset-vocabulary measures (the decoder builds it once
  # per decode; built from model_params when absent)
  head_table: Optional[Array] = None
  static_exit_layer: int = flax.struct.field(pytree_node=False, default=0)
  model_config: Any = flax.struct.field(pytree_node=False, default=None)  # T5Config
  exit_config: Any = flax.struct.field(pytree_node=False, default=None)  # ExitConfig


@dataclasses.dataclass(frozen=True)
class Measure:
  """A registered confidence measure."""

  name: str
  # (inputs, state) -> (confidence [B] float32, new state)
  confidence: Callable[[MeasureInputs, Any], Tuple[Array, Any]]
  # (embedded decoder input [B, d], classifier_params=, exit_config=, model_params=,
  # model_config=) -> the state before layer 1
  init_state: Callable[..., Any] = lambda embedded, **_: ()
  uses_logits: bool = False
  needs_final_top1: bool = False
  thresholded: bool = True
  # The state carries information across exit points, so the decoder must run the measure
  # at every exit point (even where it could not decide an exit) to keep it current.
  stateful: bool = False
  learned: bool = False
  # (classifier params, L, B, T) -> store of earlier positions, leaves [L, B, ...]
  init_memory: Optional[Callable[[Any, int, int, int], Any]] = None
  # (classifier params, states [B, d]) -> what a position leaves at one layer, leaves [B, ...]
  memory_entry: Optional[Callable[[Any, Array], Any]] = None
  # (store, entries with leaves [L, B, ...], position) -> the store holding them at position
  write_memory: Optional[Callable[[Any, Any, Array], Any]] = None
  every_layer: bool = False
  # (exit_config, state) -> logits [B, K or V] the token is chosen from, or None
  token_logits: Optional[Callable[[Any, Any], Optional[Array]]] = None
  # exit_config -> K, the width of the logits in the state (subset-vocabulary measures)
  subset_width: Optional[Callable[[Any], int]] = None
  # (exit_config, vocab_size or None) -> None; ValueError naming a bad option
  validate_options: Callable[[Any, Optional[int]], None] = lambda exit_config, vocab_size: None


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


@flax.struct.dataclass
class RecentStates:
  """three_state_mlp's state: the two exit points' states before this one."""

  states: Array  # [B, 2, d] float32, oldest first
  count: Array  # [B] int32, exit points seen so far for this token


@flax.struct.dataclass
class AttentionMemory:
  """The attention classifier's keys and values of every layer and output position, laid
  out as its attention reads them (a position's scores and its context are plain
  matrix-vector products per head, with no transpose).

  Size 2 * L * B * T * width float32 (see `classifiers.init_attention_memory`)."""

  keys: Array  # [L, B, H, T, dh]
  values: Array  # [L, B, H, T, dh]


def classifier_state_confidence(name: str, inputs: MeasureInputs, state) -> Tuple[Array, Any]:
  """meta_linear / meta_mlp: P(consistent) of this layer's state."""
  logits = classifiers.state_logits(name, inputs.classifier_params, inputs.hidden)
  return classifiers.confidence_from_logits(logits), state


def three_state_confidence(inputs: MeasureInputs,
                           recent: RecentStates) -> Tuple[Array, RecentStates]:
  """P(consistent) from the last three exit points' states; 0 before the third."""
  states = jnp.concatenate([recent.states, inputs.hidden.astype(jnp.float32)[:, None]],
                           axis=1)  # [B, 3, d]
  logits = classifiers.three_state_logits(inputs.classifier_params, states)
  confidence = jnp.where(recent.count >= 2, classifiers.confidence_from_logits(logits), 0.0)
  return confidence, RecentStates(states=states[:, 1:], count=recent.count + 1)


def _no_recent_states(embedded: Array, **_) -> RecentStates:
  batch, width = embedded.shape
  return RecentStates(states=jnp.zeros((batch, 2, width), jnp.float32),
                      count=jnp.zeros((batch,), jnp.int32))


def lstm_confidence(inputs: MeasureInputs, carry) -> Tuple[Array, Any]:
  """P(consistent) from the LSTM's output after stepping on this exit point's state."""
  carry, logits = classifiers.lstm_step(inputs.classifier_params, carry, inputs.hidden)
  return classifiers.confidence_from_logits(logits), carry


def attention_confidence(inputs: MeasureInputs, state) -> Tuple[Array, Any]:
  """P(consistent) from causal attention over this layer's states of positions 0..t."""
  logits = classifiers.attention_step_logits(inputs.classifier_params, inputs.hidden,
                                             inputs.memory.keys, inputs.memory.values,
                                             inputs.position)
  return classifiers.confidence_from_logits(logits), state


def _init_attention_memory(classifier_params, num_layers: int, batch: int,
                           max_decode_len: int) -> AttentionMemory:
  return AttentionMemory(*classifiers.init_attention_memory(classifier_params, num_layers,
                                                            batch, max_decode_len))


def attention_memory_entry(classifier_params, hidden: Array) -> AttentionMemory:
  """What a position with states hidden [B, d] leaves at one layer: keys and values, each
  [B, H, dh]."""
  return AttentionMemory(*classifiers.attention_entry(classifier_params, hidden))


def write_attention_memory(memory: AttentionMemory, entries: AttentionMemory,
                           position: Array) -> AttentionMemory:
  """The store with entries (leaves [L, B, H, dh]) at `position` of every layer."""
  write = lambda store, entry: jax.lax.dynamic_update_slice_in_dim(
      store, entry[:, :, :, None], position, axis=3)  # [L, B, H, T, dh]
  return jax.tree.map(write, memory, entries)


def pruned_softmax_diff(inputs: MeasureInputs, pruned: vocabulary.PrunedVocabulary):
  """softmax_topk / softmax_pruned: top-1 minus top-2 probability, of the full softmax at
  the token's first exit point (which keeps the top-K ids and their head rows), then of the
  softmax over the kept tokens only."""
  return jax.lax.cond(jnp.any(pruned.ready), _over_kept_tokens, _prune_vocabulary, inputs,
                      pruned)


def _prune_vocabulary(inputs: MeasureInputs, pruned: vocabulary.PrunedVocabulary):
  config, params = inputs.model_config, inputs.model_params
  logits = exit_logits(config, params, inputs.hidden)  # [B, V]
  top_logits, ids = jax.lax.top_k(logits, inputs.exit_config.top_k)  # [B, K] best first
  first, second = _top2_probabilities(logits)
  confidence = first - second
  return confidence, vocabulary.PrunedVocabulary(
      ids=ids.astype(jnp.int32),
      kept=jnp.ones(ids.shape, bool), logits=top_logits, confidence=confidence,
      ready=jnp.ones(ids.shape[:1], bool))


def _over_kept_tokens(inputs: MeasureInputs, pruned: vocabulary.PrunedVocabulary):
  options, config = inputs.exit_config, inputs.model_config
  kept = pruned.kept
  if _pruning(options) != "fixed":
    count = vocabulary.kept_count(_pruning(options), inputs.layer, config.num_decoder_layers,
                                  config.vocab_size, options.top_k, options.min_top_k,
                                  pruned.confidence)  # [B]
    kept = vocabulary.keep_top_ranked(kept, pruned.logits, count)
  table = inputs.head_table
  if table is None:  # a caller outside the decoder: build it here (a V * d copy per call)
    table = vocabulary.head_table(config, inputs.model_params)
  logits = vocabulary.subset_logits(config, inputs.model_params, inputs.hidden, table,
                                    pruned.ids)
  logits = jnp.where(kept, logits, -jnp.inf)  # [B, K]
  first, second = _top2_probabilities(logits)
  confidence = first - second
  return confidence, pruned.replace(kept=kept, logits=logits, confidence=confidence)


def _pruning(exit_config) -> str:
  return exit_config.pruning if exit_config.measure == "softmax_pruned" else "fixed"


def _check_pruning_options(exit_config, vocab_size: Optional[int]) -> None:
  top_k = exit_config.top_k
  largest = vocab_size if vocab_size is not None else top_k
  if isinstance(top_k, bool) or not isinstance(top_k, int) or not 2 <= top_k <= largest:
    raise ValueError(f"ExitConfig.top_k={top_k!r} must be an integer in [2, {largest}] (the "
                     f"vocabulary size) for measure {exit_config.measure!r}")
  if exit_config.measure != "softmax_pruned":
    return
  if exit_config.pruning not in vocabulary.PRUNINGS:
    raise ValueError(f"ExitConfig.pruning={exit_config.pruning!r}; allowed: "
                     f"{', '.join(vocabulary.PRUNINGS)}")
  k_min = exit_config.min_top_k
  if isinstance(k_min, bool) or not isinstance(k_min, int) or not 2 <= k_min <= top_k:
    raise ValueError(f"ExitConfig.min_top_k (k*)={k_min!r} must be an integer in [2, top_k="
                     f"{top_k}]")


def contrastive_confidence(inputs: MeasureInputs,
                           history: contrastive.LayerHistory) -> Tuple[Array, Any]:
  """contrastive_weighted / contrastive_jsd: top-1 minus top-2 of the contrastive score s
  (see `contrastive`)."""
  options = inputs.exit_config
  log_probs = jax.nn.log_softmax(inputs.logits.astype(jnp.float32), axis=-1)  # [B, V]
  history = contrastive.record(history, inputs.layer, log_probs)
  if options.measure == "contrastive_jsd":
    num_layers = inputs.model_config.num_decoder_layers
    layers = np.arange(num_layers + 1)
    candidates = (layers == 0) | np.asarray(is_exit_point(layers, options, num_layers))
    amateur = contrastive.jsd_amateur(history, inputs.layer, log_probs, candidates,
                                      options.jsd_by_distance)
  else:
    amateur = contrastive.weighted_amateur(history, inputs.layer)
  contrast, mass = contrastive.head_contrast(log_probs, amateur, options.contrastive_alpha)
  first, second = _top2_probabilities(contrast)
  return (first - second) * mass, history.replace(contrast=contrast)


def _start_contrastive_history(embedded: Array, model_params, model_config,
                               **_) -> contrastive.LayerHistory:
  logits = exit_logits(model_config, model_params, embedded)  # [B, V], layer 0
  return contrastive.start_history(jax.nn.log_softmax(logits, axis=-1),
                                   model_config.num_decoder_layers)


def _check_contrastive_options(exit_config, vocab_size: Optional[int]) -> None:
  del vocab_size
  alpha = exit_config.contrastive_alpha
  if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 < alpha <= 1:
    raise ValueError(f"ExitConfig.contrastive_alpha={alpha!r} must be in (0, 1]")
  for name in ("jsd_by_distance", "contrastive_token"):
    if not isinstance(getattr(exit_config, name), bool):
      raise ValueError(f"ExitConfig.{name} must be true or false, got "
                       f"{getattr(exit_config, name)!r}")


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
                 init_state=lambda embedded, **_: embedded.astype(jnp.float32)))
register(Measure("monotone_heuristic", monotone_heuristic, uses_logits=True, stateful=True,
                 init_state=lambda embedded, **_: jnp.full((embedded.shape[0], 2), jnp.nan,
                                                           jnp.float32)))
register(Measure("static", static_exit, thresholded=False))
register(Measure("oracle", oracle_exit, uses_logits=True, needs_final_top1=True,
                 thresholded=False))
for _name in ("meta_linear", "meta_mlp"):
  register(Measure(_name, functools.partial(classifier_state_confidence, _name), learned=True))
register(Measure("three_state_mlp", three_state_confidence, init_state=_no_recent_states,
                 learned=True))
register(Measure("lstm", lstm_confidence, learned=True,
                 init_state=lambda embedded, classifier_params, **_: (
                     classifiers.initial_lstm_carry(classifier_params, embedded.shape[0]))))
register(Measure("attention", attention_confidence, learned=True,
                 init_memory=_init_attention_memory, memory_entry=attention_memory_entry,
                 write_memory=write_attention_memory))
for _name, _every_layer in (("contrastive_weighted", True), ("contrastive_jsd", False)):
  register(Measure(_name, contrastive_confidence, uses_logits=True, stateful=True,
                   every_layer=_every_layer, init_state=_start_contrastive_history,
                   token_logits=lambda exit_config, history: (
                       history.contrast if exit_config.contrastive_token else None),
                   validate_options=_check_contrastive_options))
for _name in ("softmax_topk", "softmax_pruned"):
  register(Measure(_name, pruned_softmax_diff,
                   init_state=lambda embedded, exit_config, **_: vocabulary.empty_vocabulary(
                       embedded, exit_config.top_k),
                   subset_width=lambda exit_config: exit_config.top_k,
                   token_logits=lambda exit_config, pruned: pruned.logits,
                   validate_options=_check_pruning_options))


def get_measure(name: str) -> Measure:
  if name not in MEASURES:
    raise ValueError(f"unknown confidence measure {name!r}; registered: {', '.join(sorted(MEASURES))}")
  return MEASURES[name]


def empty_memory_entries(measure: Measure, classifier_params: Any, num_layers: int,
                         hidden: Array) -> Any:
  """Zero entries [L, B, ...] of the measure's store for a new position (states hidden
  [B, d] give the shapes); () for a measure without a store."""
  if measure.memory_entry is None:
    return ()
  entry = jax.eval_shape(measure.memory_entry, classifier_params, hidden)
  return jax.tree.map(lambda one: jnp.zeros((num_layers,) + one.shape, one.dtype), entry)


def measure_head_table(measure: Measure, config, params) -> Optional[Array]:
  """The head's rows [V, d] a subset-vocabulary measure gathers from, built once per decode
  (outside its loops); None for the other measures."""
  return None if measure.subset_width is None else vocabulary.head_table(config, params)
