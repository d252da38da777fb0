"""The early-exit decoder: a while_loop over output positions whose body runs a while_loop
over decoder layers with per-example exits and state propagation (DESIGN section 2).

Per output position t:
  1. (oracle only) a full pass learns the final layer's top-1.
  2. The layer loop writes layer i's self-attention K/V for every row: running examples from
     their true input, exited ones from their exit state h_e, frozen as their input (layer
     i's own norm and K/V projection of h_e: state propagation). The rest of the layer and
     the measure run on the smallest bucket of rows (B, B/2, B/4, B/8) that holds every
     running example, so examples that left stop costing compute. The loop stops once every
     still-generating example has exited; finished sequences start exited.
  3. The layers no example reached get their K/V from each example's exit state (and, for
     a measure with a store of earlier positions, the attention classifier, their entry).
  4. The token comes from the exit layer's logits (greedy or sampled). A measure that scores
     a subset of the vocabulary gives logits over its kept ids; a token that ran all L
     layers always takes the full head's logits, so lambda >= 1 is the full model.
With propagation='full_compute' the layer loop always runs all L layers on true states, so
the cache holds what the full model would have written; exits only choose the token.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional, Tuple

import flax
import jax
import jax.numpy as jnp

from calm_jax.decoding.exit_rule import ExitConfig, is_exit_point, threshold_at
from calm_jax.decoding.measures import (Measure, MeasureInputs, empty_memory_entries,
                                        get_measure, measure_head_table)
from calm_jax.decoding.sampling import SamplingConfig, select_tokens
from calm_jax.model.config import T5Config
from calm_jax.model.incremental import (DecoderCache, decoder_layer_rows, decoder_step,
                                        init_decoder_cache, step_self_bias, write_self_kv)
from calm_jax.model.t5 import embed, encode, exit_logits

Array = jnp.ndarray


@flax.struct.dataclass
class GenerateOutput:
  """What `generate` returns."""

  tokens: Array  # [B, T] int32 emitted ids; pad after EOS
  exit_layers: Array  # [B, T] int32 layers run per token (1..L); 0 after EOS
  confidences: Array  # [B, T] float32 confidence at the exit layer; 0 after EOS
  trace: Optional[Array] = None  # [B, T, L] float32 per-layer confidences; NaN where not computed


@flax.struct.dataclass
class LayerLoopState:
  """State of the layer loop for one output position."""

  layers_run: Array  # [] int32, layers computed so far (the next layer's 0-based index)
  hidden: Array  # [B, 1, d] input of the next layer; frozen at h_e after exit (copy_state)
  exited: Array  # [B] bool, the example has left (finished sequences start True)
  exit_layer: Array  # [B] int32, 1-based exit layer; 0 while running or when finished
  exit_hidden: Array  # [B, 1, d] state at the exit layer
  confidence: Array  # [B] float32, confidence at the exit layer
  exit_logits: Array  # [B, V] float32 logits at the exit layer ([B, K] over a measure's
  #                     subset of the vocabulary, [B, 0] if not computed)
  measure_state: Any  # the measure's own state across layers
  memory_entries: Any  # what this position leaves in the measure's store at each layer,
  #                      leaves [L, B, ...] (zeros at layers not reached); () if no store
  trace: Array  # [B, L] float32 per-layer confidence, NaN where not computed ([B, 0] if off)
  cache: DecoderCache


@flax.struct.dataclass
class TokenLoopState:
  """State of the loop over output positions."""

  position: Array  # [] int32, the output position being generated
  last_token: Array  # [B] int32, decoder input at `position`
  done: Array  # [B] bool, the sequence has emitted EOS
  tokens: Array  # [B, T] int32
  exit_layers: Array  # [B, T] int32
  confidences: Array  # [B, T] float32
  trace: Array  # [B, T, L] float32 ([B, T, 0] when the trace is off)
  measure_memory: Any  # the measure's store of earlier positions, leaves [L, B, ...]; ()
  cache: DecoderCache
  rng: Array  # PRNG key, split once per position when sampling


def row_buckets(batch: int, count: int = 4) -> Tuple[int, ...]:
  """Row counts the layer loop may run a layer on: B, ceil(B/2), ceil(B/4), ... (distinct,
  at most `count`)."""
  sizes = [batch]
  while len(sizes) < count and sizes[-1] > 1:
    sizes.append(-(-sizes[-1] // 2))
  return tuple(sizes)


def _logits_width(config: T5Config, exit_config: ExitConfig, measure: Measure) -> int:
  """Width of the exit logits the layer loop keeps: V, a subset's K, or 0."""
  if measure.uses_logits:
    return config.vocab_size
  return 0 if measure.subset_width is None else measure.subset_width(exit_config)


def _measure_branches(config: T5Config, params: Any, exit_config: ExitConfig,
                      measure: Measure, classifier_params: Any, position: Array,
                      head_table: Optional[Array]):
  """The two lax.cond branches of one layer's measure, on R rows:
  (layer_no, hidden [R, d], measure state, final_top1 [R] or None, memory at this layer,
  leaves [R, ...]) -> (confidence [R] float32, measure state, logits [R, V] float32 or
  [R, 0])."""
  width = _logits_width(config, exit_config, measure)

  def measure_at(layer_no, hidden, measure_state, final_top1, memory):
    logits = exit_logits(config, params, hidden) if measure.uses_logits else None
    inputs = MeasureInputs(layer=layer_no, hidden=hidden, logits=logits, final_top1=final_top1,
                           position=position, classifier_params=classifier_params,
                           memory=memory, model_params=params, head_table=head_table,
                           static_exit_layer=exit_config.static_exit_layer,
                           model_config=config, exit_config=exit_config)
    confidence, measure_state = measure.confidence(inputs, measure_state)
    if measure.token_logits is not None:
      # The measure's own token logits: [R, K] over its ids, or [R, V] contrastive scores.
      own = measure.token_logits(exit_config, measure_state)
      logits = logits if own is None else own
    return confidence.astype(jnp.float32), measure_state, (
        logits if logits is not None else jnp.zeros(hidden.shape[:1] + (0,), jnp.float32))

  def skip(layer_no, hidden, measure_state, final_top1, memory):
    del layer_no, final_top1, memory
    rows = hidden.shape[0]
    return (jnp.zeros((rows,), jnp.float32), measure_state,
            jnp.zeros((rows, width), jnp.float32))

  return measure_at, skip


def _layer_on_rows(config: T5Config, params: Any, branches, size: int, s: "LayerLoopState",
                   cache: DecoderCache, self_bias: Array, wanted: Array,
                   final_top1: Optional[Array], memory: Any):
  """Layer s.layers_run and its measure on `size` rows that include every running one;
  `memory` is the measure's store of earlier positions (read only).

  Returns (output [B, 1, d], confidence [B], measure state, logits [B, V or 0]); rows left
  out of the bucket have exited, and their entries (zeros, or the old state) are never read.
  """
  batch = s.hidden.shape[0]
  layer_no = s.layers_run + 1
  at_layer = lambda stored: jax.lax.dynamic_index_in_dim(stored, s.layers_run,
                                                         keepdims=False)  # [L, B, ...] -> [B, ...]
  if size == batch:
    output = decoder_layer_rows(config, params, cache, s.layers_run, s.hidden, self_bias)
    return (output,) + jax.lax.cond(wanted, *branches, layer_no, output[:, 0],
                                    s.measure_state, final_top1,
                                    jax.tree.map(at_layer, memory))
  rows = jnp.argsort(s.exited, stable=True)[:size]  # [R] running rows first
  take = lambda full: jnp.take(full, rows, axis=0)
  part = decoder_layer_rows(config, params, cache, s.layers_run, take(s.hidden), self_bias,
                            rows)  # [R, 1, d]
  confidence, measure_state, logits = jax.lax.cond(
      wanted, *branches, layer_no, part[:, 0], jax.tree.map(take, s.measure_state),
      None if final_top1 is None else take(final_top1),
      jax.tree.map(lambda stored: take(at_layer(stored)), memory))
  put = lambda full, piece: full.at[rows].set(piece)
  return (put(s.hidden, part), put(jnp.zeros((batch,), jnp.float32), confidence),
          jax.tree.map(put, s.measure_state, measure_state),
          put(jnp.zeros((batch,) + logits.shape[1:], logits.dtype), logits))


def _layer_loop(config: T5Config, params: Any, exit_config: ExitConfig, measure: Measure,
                classifier_params: Any, state: LayerLoopState, position: Array,
                self_bias: Array, threshold: Array, lambda_t: Array,
                final_top1: Optional[Array], compact: bool, memory: Any,
                head_table: Optional[Array]) -> LayerLoopState:
  """Runs decoder layers for one output position until every running example has exited.

  With `compact`, a layer runs only on a bucket of rows holding the running examples (see
  `row_buckets`), so examples that left early stop costing compute; exited rows still get
  their propagated K/V written at every layer the loop runs.
  """
  num_layers = config.num_decoder_layers
  full_compute = exit_config.propagation == "full_compute"
  # lambda >= 1 never exits early, whatever the decay makes of it at this position.
  # threshold and lambda_t are [] (one for the batch) or [B] (one per example).
  allow_early = threshold < 1.0 if measure.thresholded else jnp.array(True)
  branches = _measure_branches(config, params, exit_config, measure, classifier_params,
                               position, head_table)
  batch = state.hidden.shape[0]
  buckets = row_buckets(batch) if compact and not full_compute else (batch,)
  on_rows = [functools.partial(_layer_on_rows, config, params, branches, size)
             for size in buckets]

  def keep_going(s: LayerLoopState) -> Array:
    if full_compute:
      return s.layers_run < num_layers
    return (s.layers_run < num_layers) & ~jnp.all(s.exited)

  def run_layer(s: LayerLoopState) -> LayerLoopState:
    layer_no = s.layers_run + 1
    # Every row writes this layer's K/V: running rows from their true input, exited rows
    # from their frozen exit state (state propagation).
    cache = write_self_kv(config, params, s.cache, s.layers_run, s.hidden, position)
    exit_point = is_exit_point(layer_no, exit_config, num_layers)
    # Logit-based confidence (the costly head) is only computed where it can decide an
    # exit, where the trace records it, or at layer L (its logits give the token); cheap
    # and stateful measures run at every exit point so their state stays current (and
    # at every layer for those that look at any earlier layer).
    wanted = (exit_point | measure.every_layer) & (
        jnp.any(allow_early) | (s.trace.shape[1] > 0) | (layer_no == num_layers)
        | (not measure.uses_logits) | measure.stateful)
    operands = (s, cache, self_bias, wanted, final_top1, memory)
    if len(buckets) == 1:
      output, confidence, measure_state, logits = on_rows[0](*operands)
    else:
      # The smallest bucket that holds every running row.
      branch = jnp.sum(jnp.asarray(buckets) >= jnp.sum(~s.exited)) - 1
      output, confidence, measure_state, logits = jax.lax.switch(branch, on_rows, *operands)
    passes = confidence >= (lambda_t if measure.thresholded else 1.0)
    leaves = ~s.exited & exit_point & ((passes & allow_early) | (layer_no == num_layers))
    frozen = s.exited[:, None, None] & (not full_compute)
    computed_here = wanted & exit_point & (~s.exited | full_compute)
    trace = s.trace
    if trace.shape[1]:
      trace = trace.at[:, s.layers_run].set(jnp.where(computed_here, confidence, jnp.nan))
    hidden = jnp.where(frozen, s.hidden, output)  # exited rows: their exit state
    entries = s.memory_entries
    if measure.memory_entry is not None:
      entry = measure.memory_entry(classifier_params, hidden[:, 0])
      entries = jax.tree.map(lambda all_layers, one: all_layers.at[s.layers_run].set(one),
                             entries, entry)
    return s.replace(
        layers_run=layer_no,
        hidden=hidden,
        exited=s.exited | leaves,
        exit_layer=jnp.where(leaves, layer_no, s.exit_layer),
        exit_hidden=jnp.where(leaves[:, None, None], output, s.exit_hidden),
        confidence=jnp.where(leaves, confidence, s.confidence),
        exit_logits=jnp.where(leaves[:, None], logits, s.exit_logits),
        measure_state=measure_state, memory_entries=entries, trace=trace, cache=cache)

  return jax.lax.while_loop(keep_going, run_layer, state)


def propagate_state(config: T5Config, params: Any, cache: DecoderCache, exit_hidden: Array,
                    first_layer: Array, position: Array) -> DecoderCache:
  """Writes K/V computed from each example's exit state [B, 1, d] into layers
  first_layer..L-1 (0-based) at `position`: the layers no example of the batch ran."""
  def write(layer, cache):
    return write_self_kv(config, params, cache, layer, exit_hidden, position)
  return jax.lax.fori_loop(first_layer, config.num_decoder_layers, write, cache)


def _oracle_final_top1(config, params, cache, token, position):
  states, cache = decoder_step(config, params, cache, token, position)
  return jnp.argmax(exit_logits(config, params, states[-1]), axis=-1).astype(jnp.int32), cache


def _final_memory_entries(config: T5Config, exit_config: ExitConfig, measure: Measure,
                          classifier_params: Any, layers: LayerLoopState) -> Any:
  """The position's entries at every layer: with copy_state, the layers no example reached
  take the exit states (as their K/V do); otherwise they stay zeros."""
  entries = layers.memory_entries
  if exit_config.propagation != "copy_state":
    return entries
  exit_entry = measure.memory_entry(classifier_params, layers.exit_hidden[:, 0])
  unreached = jnp.arange(config.num_decoder_layers) >= layers.layers_run  # [L]

  def fill(all_layers, one):  # [L, B, ...], [B, ...]
    mask = unreached.reshape((-1,) + (1,) * one.ndim)
    return jnp.where(mask, one[None], all_layers)
  return jax.tree.map(fill, entries, exit_entry)


def _generate_one_position(config: T5Config, params: Any, exit_config: ExitConfig,
                           sampling: SamplingConfig, max_decode_len: int, compact: bool,
                           threshold: Array, tau: Array, classifier_params: Any,
                           head_table: Optional[Array], state: TokenLoopState) -> TokenLoopState:
  measure = get_measure(exit_config.measure)
  position, cache = state.position, state.cache
  final_top1 = None
  if measure.needs_final_top1:
    final_top1, cache = _oracle_final_top1(config, params, cache, state.last_token, position)
  embedded = embed(config, params, state.last_token[:, None])  # [B, 1, d]
  batch = embedded.shape[0]
  trace_width = config.num_decoder_layers if state.trace.shape[2] else 0
  layers = _layer_loop(
      config, params, exit_config, measure, classifier_params,
      LayerLoopState(
          layers_run=jnp.array(0, jnp.int32), hidden=embedded, exited=state.done,
          exit_layer=jnp.zeros((batch,), jnp.int32), exit_hidden=embedded,
          confidence=jnp.zeros((batch,), jnp.float32),
          exit_logits=jnp.zeros((batch, _logits_width(config, exit_config, measure)),
                                jnp.float32),
          measure_state=measure.init_state(embedded[:, 0], classifier_params=classifier_params,
                                           exit_config=exit_config, model_params=params,
                                           model_config=config),
          memory_entries=empty_memory_entries(measure, classifier_params,
                                              config.num_decoder_layers, embedded[:, 0]),
          trace=jnp.full((batch, trace_width), jnp.nan, jnp.float32), cache=cache),
      position, step_self_bias(config, params, position, max_decode_len), threshold,
      threshold_at(threshold, tau, position, max_decode_len, exit_config.decay), final_top1,
      compact, state.measure_memory, head_table)
  cache, memory = layers.cache, state.measure_memory
  if exit_config.propagation == "copy_state":
    cache = propagate_state(config, params, cache, layers.exit_hidden, layers.layers_run, position)
  if measure.write_memory is not None:
    memory = measure.write_memory(memory, _final_memory_entries(
        config, exit_config, measure, classifier_params, layers), position)
  rng, token_rng = jax.random.split(state.rng)
  token = _exit_tokens(config, params, measure, sampling, layers, token_rng)
  token = jnp.where(state.done, config.pad_token_id, token)
  at = (slice(None), position)
  return state.replace(
      position=position + 1, last_token=token, done=state.done | (token == config.eos_token_id),
      tokens=state.tokens.at[at].set(token),
      # Finished rows start exited with exit layer 0 and confidence 0, so they record zeros.
      exit_layers=state.exit_layers.at[at].set(layers.exit_layer),
      confidences=state.confidences.at[at].set(layers.confidence),
      trace=(state.trace.at[at].set(jnp.where(state.done[:, None], jnp.nan, layers.trace))
             if trace_width else state.trace),
      measure_memory=memory, cache=cache, rng=rng)


def _exit_tokens(config: T5Config, params: Any, measure: Measure, sampling: SamplingConfig,
                 layers: LayerLoopState, rng: Array) -> Array:
  """The emitted tokens [B] from the exit layer's logits."""
  if measure.uses_logits:
    return select_tokens(layers.exit_logits, rng, sampling)
  full = lambda: select_tokens(exit_logits(config, params, layers.exit_hidden[:, 0]), rng,
                               sampling)
  if measure.subset_width is None:
    return full()
  # The best kept token, mapped back to its id; tokens that ran all L layers take the full
  # head (computed only when some row did).
  subset = dataclasses.replace(sampling, top_k=min(sampling.top_k, layers.exit_logits.shape[1]))
  index = select_tokens(layers.exit_logits, rng, subset)  # [B] into the kept ids
  token = jnp.take_along_axis(layers.measure_state.ids, index[:, None], axis=1)[:, 0]
  at_last = layers.exit_layer == config.num_decoder_layers
  return jax.lax.cond(jnp.any(at_last), lambda: jnp.where(at_last, full(), token),
                      lambda: token)


def generate_impl(config: T5Config, exit_config: ExitConfig, sampling: SamplingConfig,
                  max_decode_len: int, return_trace: bool, params: Any, input_ids: Array,
                  attention_mask: Array, threshold: Array, tau: Array,
                  rng: Array, compact: bool = True,
                  skip_rows: Optional[Array] = None,
                  classifier_params: Any = None) -> GenerateOutput:
  """The traced body of `generate`; threshold and tau are runtime values (vmappable).

  threshold is [] (the whole batch) or [B] (each example its own lambda). `compact` (static)
  runs each layer on running rows only; under vmap its branch choice would become a select
  that computes every bucket, so `generate_grid` turns it off. Rows where `skip_rows` [B]
  is True start finished: they cost nothing and return padding (used to pad a batch to a
  compiled size). `classifier_params` are a learned measure's parameters (traced).
  """
  measure = get_measure(exit_config.measure)
  batch = input_ids.shape[0]
  encoded = encode(config, params, input_ids, attention_mask)
  trace_width = config.num_decoder_layers if return_trace else 0
  state = TokenLoopState(
      position=jnp.array(0, jnp.int32),
      last_token=jnp.full((batch,), config.decoder_start_token_id, jnp.int32),
      done=jnp.zeros((batch,), bool) if skip_rows is None else jnp.asarray(skip_rows, bool),
      tokens=jnp.full((batch, max_decode_len), config.pad_token_id, jnp.int32),
      exit_layers=jnp.zeros((batch, max_decode_len), jnp.int32),
      confidences=jnp.zeros((batch, max_decode_len), jnp.float32),
      trace=jnp.full((batch, max_decode_len, trace_width), jnp.nan, jnp.float32),
      measure_memory=(() if measure.init_memory is None else measure.init_memory(
          classifier_params, config.num_decoder_layers, batch, max_decode_len)),
      cache=init_decoder_cache(config, params, encoded, attention_mask, max_decode_len),
      rng=rng)
  head_table = measure_head_table(measure, config, params)  # once, outside the loops
  step = functools.partial(_generate_one_position, config, params, exit_config, sampling,
                           max_decode_len, compact, threshold, tau, classifier_params,
                           head_table)
  not_finished = lambda s: (s.position < max_decode_len) & ~jnp.all(s.done)
  state = jax.lax.while_loop(not_finished, step, state)
  return GenerateOutput(tokens=state.tokens, exit_layers=state.exit_layers,
                        confidences=state.confidences,
                        trace=state.trace if return_trace else None)
