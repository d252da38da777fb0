"""The early-exit decoder: a while_loop over output positions whose body runs a while_loop
over decoder layers with per-example exits and state propagation (docs/semantics.md).

Per output position t:
  1. (oracle only) a full pass learns the final layer's top-1.
  2. The layer loop writes layer i's self-attention K/V for every row: running examples from
     their true input, exited ones from their exit state h_e, frozen as their input (layer
     i's own norm and K/V projection of h_e: state propagation). The rest of the layer and
     the measure run on the smallest bucket of rows (B, B/4, B/16, B/64) that holds every
     running example, so examples that left stop costing compute. The loop stops once every
     still-generating example has exited; finished sequences start exited.
  3. The layers no example reached get their K/V from each example's exit state (and, for
     a measure with a store of earlier positions, the attention classifier, their entry).
  4. The token comes from the exit layer's logits (greedy, or sampled with the row's own
     key). A measure that computes logits chooses each row's token where it checks it, so
     only the token [B] is carried across layers, never the logits [B, V]; a measure that
     scores a subset of the vocabulary gives its best kept id; a token that ran all L layers
     always takes the full head's logits, so lambda >= 1 is the full model. Measures without
     logits get their token from the head on the exit state after the layer loop.
With propagation='full_compute' the layer loop always runs all L layers on true states, so
the cache holds what the full model would have written; exits only choose the token.

With per-layer weights (model.layer_layout, the CPU default) the layer loop is unrolled:
layer i writes its K/V, then runs under one switch (its row bucket, or skipped once no
example runs), with
its weights, cross-attention buffers, exit point and trace column static; with stacked
weights it is a while_loop over a traced layer index (the threshold grid's vmap).

Static choices come in one `DecodePlan`, traced constants in one `DecodeConstants`, and
what stays fixed over one position in one `PositionInputs`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp

from calm_jax.decoding.exit_rule import is_exit_point, threshold_at
from calm_jax.decoding.measures import LayerInputs, MeasureContext
from calm_jax.decoding.measures.pruned import head_table
from calm_jax.decoding.plan import DecodeConstants, DecodePlan
from calm_jax.decoding.sampling import row_keys, select_row_tokens
from calm_jax.model.incremental import (DecoderCache, cache_layer, decoder_layer_rows,
                                        decoder_step, init_decoder_cache, step_self_bias,
                                        write_self_kv)
from calm_jax.model.layer_layout import is_per_layer
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
class PositionInputs:
  """What stays fixed while the layer loop runs for one output position."""

  position: Array  # [] int32, the output position t
  self_bias: Array  # [1, H, 1, T] float32 self-attention bias of this position
  lambda_t: Array  # [] or [B] float32, the threshold at this position
  allow_early: Array  # [] or [B] bool, lambda < 1 (exits before layer L are allowed)
  final_top1: Optional[Array]  # [B] int32 final layer's top-1 (Needs.final_top1), else None
  memory: Any  # the measure's store of earlier positions, leaves [L, B, ...] (read only)
  keys: Optional[Array]  # [B, 2] uint32 each row's sampling key here; None when greedy


@flax.struct.dataclass
class LayerLoopState:
  """State of the layer loop for one output position."""

  layers_run: Array  # [] int32, layers computed so far (the next layer's 0-based index)
  hidden: Array  # [B, 1, d] input of the next layer; frozen at h_e after exit (copy_state)
  exited: Array  # [B] bool, the example has left (finished sequences start True)
  exit_layer: Array  # [B] int32, 1-based exit layer; 0 while running or when finished
  exit_hidden: Array  # [B, 1, d] state at the exit layer
  confidence: Array  # [B] float32, confidence at the exit layer
  exit_token: Array  # [B] int32 token chosen at the exit layer by a measure with logits
  #                    (0 for measures without: the head runs after the loop)
  measure_state: Any  # the measure's own state across layers
  memory_entries: Any  # what this position leaves in the measure's store at each layer,
  #                      leaves [L, B, ...] (zeros at layers not reached); () if no store
  trace: Array  # [B, L] float32 per-layer confidence, NaN where not computed ([B, 0] if off)
  cache: Optional[DecoderCache]  # None inside an unrolled layer's conditional (read only there)


@flax.struct.dataclass
class LayerOutput:
  """One layer's output and its measure's verdict, for every row of the batch (rows left
  out of the bucket have exited; their entries are zeros or the old state, never read)."""

  output: Array  # [B, 1, d]
  confidence: Array  # [B] float32
  measure_state: Any
  token: Array  # [B] int32 token of this layer's logits where the measure ran, else 0


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


def _measure_branches(plan: DecodePlan, context: MeasureContext):
  """The two lax.cond branches of one layer's measure on R rows: (LayerInputs, measure
  state, keys [R, 2] or None) -> (confidence [R] float32, measure state, token [R] int32)."""
  measure = plan.measure

  def measure_at(inputs: LayerInputs, measure_state, keys):
    if plan.needs.logits == "full":
      inputs = inputs.replace(logits=exit_logits(plan.model, context.params, inputs.hidden))
    confidence, measure_state = measure.confidence(context, inputs, measure_state)
    return (confidence.astype(jnp.float32), measure_state,
            _check_tokens(plan, inputs, measure_state, keys))

  def skip(inputs: LayerInputs, measure_state, keys):
    rows = inputs.hidden.shape[0]
    return jnp.zeros((rows,), jnp.float32), measure_state, jnp.zeros((rows,), jnp.int32)

  return measure_at, skip


def _check_tokens(plan: DecodePlan, inputs: LayerInputs, measure_state,
                  keys: Optional[Array]) -> Array:
  """[R] int32: the token each row emits if it leaves at this check: from the measure's
  own logits (the best of a subset's kept ids, contrastive scores) or the exit head's;
  zeros for a measure without logits (its token comes from the head after the loop)."""
  logits = plan.measure.token_logits(measure_state)  # [R, K] or [R, V] or None
  if plan.needs.logits == "subset":
    subset = dataclasses.replace(plan.sampling,
                                 top_k=min(plan.sampling.top_k, logits.shape[1]))
    index = select_row_tokens(logits, keys, subset)  # [R] into the kept ids
    return jnp.take_along_axis(measure_state.ids, index[:, None], axis=1)[:, 0]
  logits = inputs.logits if logits is None else logits
  if logits is None:
    return jnp.zeros(inputs.hidden.shape[:1], jnp.int32)
  return select_row_tokens(logits, keys, plan.sampling)


def _measure_verdict(plan: DecodePlan, context: MeasureContext, wanted, inputs: LayerInputs,
                     measure_state, keys):
  """(confidence [R], measure state, token [R]) of the measure where `wanted` (a Python bool
  when the layer is static, then no conditional is compiled) and zeros elsewhere."""
  measure_at, skip = _measure_branches(plan, context)
  if isinstance(wanted, bool):
    return (measure_at if wanted else skip)(inputs, measure_state, keys)
  return jax.lax.cond(wanted, measure_at, skip, inputs, measure_state, keys)


def _memory_at_layer(memory: Any, layer) -> Any:
  """Layer `layer`'s part of a measure's store: each field [L, B, ...] or L x [B, ...]
  (per-layer buffers, read in place: `_layered_memory`) -> [B, ...]; () without a store."""
  if memory == ():
    return memory
  return jax.tree.map(lambda field: cache_layer(field, layer), memory,
                      is_leaf=lambda field: isinstance(field, tuple))


def _layered_memory(plan: DecodePlan, memory: Any, per_layer: bool) -> Any:
  """A measure's empty store, with each field [L, B, ...] split into L buffers [B, ...]
  for the unrolled layer loop: a layer sliced out of a stacked store is copied at every
  layer and token (2 x 1.2 MB per layer for the attention classifier at the demo shape,
  batch 200), while its own buffer is read in place."""
  if not per_layer or memory == ():
    return memory
  return jax.tree.map(lambda stored: tuple(stored[i] for i in range(plan.num_layers)), memory)


def _layer_on_rows(plan: DecodePlan, constants: DecodeConstants, at: PositionInputs,
                   size: int, layer, wanted, s: LayerLoopState) -> LayerOutput:
  """Layer `layer` (0-based: a Python int when the layer loop is unrolled, else traced) and
  (where `wanted`) its measure on `size` rows that include every running one; s.cache
  already holds this layer's K/V at this position."""
  config, context = plan.model, constants.context
  batch = s.hidden.shape[0]
  memory = _memory_at_layer(at.memory, layer)
  inputs = LayerInputs(layer=jnp.int32(layer + 1), hidden=None, final_top1=at.final_top1,
                       static_layer=layer + 1 if isinstance(layer, int) else None,
                       position=at.position, memory=memory)
  if size == batch:
    output = decoder_layer_rows(config, context.params, s.cache, layer, s.hidden,
                                at.self_bias)  # [B, 1, d]
    verdict = _measure_verdict(plan, context, wanted, inputs.replace(hidden=output[:, 0]),
                               s.measure_state, at.keys)
    return LayerOutput(output, *verdict)
  rows = jnp.argsort(s.exited, stable=True)[:size]  # [R] running rows first
  take = lambda full: jnp.take(full, rows, axis=0)
  part = decoder_layer_rows(config, context.params, s.cache, layer, take(s.hidden),
                            at.self_bias, rows)  # [R, 1, d]
  inputs = inputs.replace(hidden=part[:, 0], memory=jax.tree.map(take, memory),
                          final_top1=None if at.final_top1 is None else take(at.final_top1))
  confidence, measure_state, token = _measure_verdict(
      plan, context, wanted, inputs, jax.tree.map(take, s.measure_state),
      jax.tree.map(take, at.keys))
  put = lambda full, piece: full.at[rows].set(piece)
  return LayerOutput(put(s.hidden, part), put(jnp.zeros((batch,), jnp.float32), confidence),
                     jax.tree.map(put, s.measure_state, measure_state),
                     put(jnp.zeros((batch,), jnp.int32), token))


def _write_layer_kv(plan: DecodePlan, constants: DecodeConstants, at: PositionInputs, layer,
                    s: LayerLoopState) -> LayerLoopState:
  """Layer `layer`'s K/V at this position for every row: running rows from their true
  input, exited rows from their frozen exit state (state propagation)."""
  return s.replace(cache=write_self_kv(plan.model, constants.context.params, s.cache, layer,
                                       s.hidden, at.position))


def _run_layer(plan: DecodePlan, constants: DecodeConstants, at: PositionInputs, layer,
               cache: DecoderCache, s: LayerLoopState, skip_if_idle: bool) -> LayerLoopState:
  """The layer loop state after layer `layer` (0-based; a Python int when unrolled, so its
  weights, cache slices, exit point and trace column are static), reading `cache`, which
  holds this layer's K/V at this position; s.cache is not read and comes back as it was.

  The layer runs on the smallest row bucket that holds every running example, chosen by
  one switch; with `skip_if_idle` (the unrolled loop) the same switch has one more branch,
  taken once no example runs, that leaves the state as it is (the layer's K/V are written
  already), and each branch records its own exits, so a layer costs one conditional."""
  layer_no = layer + 1
  exit_point = is_exit_point(layer_no, plan.exit, plan.num_layers)
  wanted = plan.checks_at(layer_no, exit_point, at.allow_early)
  buckets = plan.buckets(s.hidden.shape[0])
  bare = s.replace(cache=None)

  def on_rows(size: int, s: LayerLoopState) -> LayerOutput:
    return _layer_on_rows(plan, constants, at, size, layer, wanted, s.replace(cache=cache))

  def recorded(size: int, s: LayerLoopState) -> LayerLoopState:
    return _record_layer(plan, constants.context, at, s, layer, on_rows(size, s), wanted)

  # The smallest bucket that holds every running row.
  index = jnp.sum(jnp.asarray(buckets) >= jnp.sum(~s.exited)) - 1
  if skip_if_idle:
    branches = [functools.partial(recorded, size) for size in buckets] + [lambda s: s]
    index = jnp.where(jnp.all(s.exited), len(buckets), index)
    return jax.lax.switch(index, branches, bare).replace(cache=s.cache)
  if len(buckets) == 1:
    out = on_rows(buckets[0], bare)
  else:  # the state is recorded outside: its [L, B, ...] entries stay out of the switch
    out = jax.lax.switch(index, [functools.partial(on_rows, size) for size in buckets], bare)
  return _record_layer(plan, constants.context, at, s, layer, out, wanted)


def unrolls_layers(params: Any) -> bool:
  """Whether the layer loop is unrolled: per-layer weights (model.layer_layout) give each
  layer its own buffers, so layer i is a static piece of the program, guarded by one
  conditional; stacked weights keep a while_loop over a traced layer index."""
  return is_per_layer(params)


def _layer_loop(plan: DecodePlan, constants: DecodeConstants, at: PositionInputs,
                state: LayerLoopState) -> LayerLoopState:
  """Runs decoder layers for one output position until every running example has exited.

  With compaction (`DecodePlan.buckets`), a layer runs only on a bucket of rows holding the
  running examples, so examples that left early stop costing compute; exited rows still
  get their propagated K/V written at every layer the loop runs.

  Unrolled, every layer writes its K/V (from the exit states once no example runs, so
  nothing is left for propagate_state) outside the layer's conditional, which only reads
  the cache: a conditional that updated the cache would copy all of it at every layer.
  """
  num_layers, every_layer = plan.num_layers, plan.runs_every_layer
  write_kv = functools.partial(_write_layer_kv, plan, constants, at)
  run_layer = functools.partial(_run_layer, plan, constants, at)

  if unrolls_layers(constants.context.params):
    s = state
    for layer in range(num_layers):
      cache = write_kv(layer, s).cache
      s = run_layer(layer, cache, s.replace(cache=None), not every_layer).replace(cache=cache)
    return s

  def keep_going(s: LayerLoopState) -> Array:
    if every_layer:
      return s.layers_run < num_layers
    return (s.layers_run < num_layers) & ~jnp.all(s.exited)

  def one_layer(s: LayerLoopState) -> LayerLoopState:
    s = write_kv(s.layers_run, s)
    return run_layer(s.layers_run, s.cache, s, False)

  return jax.lax.while_loop(keep_going, one_layer, state)


def _record_layer(plan: DecodePlan, context: MeasureContext, at: PositionInputs,
                  s: LayerLoopState, layer, out: LayerOutput, wanted) -> LayerLoopState:
  """The layer loop state after layer `layer` (0-based; its output `out`; the measure ran
  where `wanted`): exits, trace and store entries."""
  layer_no = layer + 1
  exit_point = is_exit_point(layer_no, plan.exit, plan.num_layers)
  computed = wanted & exit_point & (~s.exited | plan.full_compute)  # [B]
  passes = out.confidence >= (at.lambda_t if plan.needs.thresholded else 1.0)
  leaves = ~s.exited & exit_point & ((passes & at.allow_early) | (layer_no == plan.num_layers))
  frozen = s.exited[:, None, None] & (not plan.full_compute)
  trace = s.trace
  if trace.shape[1]:
    trace = trace.at[:, layer].set(jnp.where(computed, out.confidence, jnp.nan))
  hidden = jnp.where(frozen, s.hidden, out.output)  # exited rows: their exit state
  entries = s.memory_entries
  if plan.measure.store is not None:
    entry = plan.measure.store.entry(context, hidden[:, 0])
    entries = jax.tree.map(lambda all_layers, one: all_layers.at[layer].set(one),
                           entries, entry)
  return s.replace(
      layers_run=jnp.int32(layer_no) if isinstance(layer, int) else layer_no,
      hidden=hidden,
      exited=s.exited | leaves,
      exit_layer=jnp.where(leaves, layer_no, s.exit_layer),
      exit_hidden=jnp.where(leaves[:, None, None], out.output, s.exit_hidden),
      confidence=jnp.where(leaves, out.confidence, s.confidence),
      exit_token=jnp.where(leaves, out.token, s.exit_token),
      measure_state=out.measure_state, memory_entries=entries, trace=trace)


def propagate_state(config, params: Any, cache: DecoderCache, exit_hidden: Array,
                    first_layer: Array, position: Array) -> DecoderCache:
  """Writes K/V computed from each example's exit state [B, 1, d] into layers
  first_layer..L-1 (0-based) at `position`: the layers no example of the batch ran."""
  def write(layer, cache):
    return write_self_kv(config, params, cache, layer, exit_hidden, position)
  return jax.lax.fori_loop(first_layer, config.num_decoder_layers, write, cache)


def _final_memory_entries(plan: DecodePlan, context: MeasureContext,
                          layers: LayerLoopState) -> Any:
  """The position's entries at every layer: with copy_state, the layers no example reached
  take the exit states (as their K/V do); otherwise they stay zeros."""
  entries = layers.memory_entries
  if plan.exit.propagation != "copy_state":
    return entries
  exit_entry = plan.measure.store.entry(context, layers.exit_hidden[:, 0])
  unreached = jnp.arange(plan.num_layers) >= layers.layers_run  # [L]

  def fill(all_layers, one):  # [L, B, ...], [B, ...]
    mask = unreached.reshape((-1,) + (1,) * one.ndim)
    return jnp.where(mask, one[None], all_layers)
  return jax.tree.map(fill, entries, exit_entry)


def _position_inputs(plan: DecodePlan, constants: DecodeConstants, state: TokenLoopState,
                     final_top1: Optional[Array], keys: Optional[Array]) -> PositionInputs:
  position = state.position
  threshold = constants.threshold
  return PositionInputs(
      position=position,
      self_bias=step_self_bias(plan.model, constants.context.params, position,
                               plan.max_decode_len),
      lambda_t=threshold_at(threshold, constants.tau, position, plan.max_decode_len,
                            plan.exit.decay),
      # lambda >= 1 never exits early, whatever the decay makes of it at this position.
      allow_early=threshold < 1.0 if plan.needs.thresholded else jnp.array(True),
      final_top1=final_top1, memory=state.measure_memory, keys=keys)


def _start_layers(plan: DecodePlan, context: MeasureContext, state: TokenLoopState,
                  cache: DecoderCache) -> LayerLoopState:
  """The layer loop state before layer 1 of this position; finished rows start exited."""
  embedded = embed(plan.model, context.params, state.last_token[:, None])  # [B, 1, d]
  batch = embedded.shape[0]
  store = plan.measure.store
  return LayerLoopState(
      layers_run=jnp.array(0, jnp.int32), hidden=embedded, exited=state.done,
      exit_layer=jnp.zeros((batch,), jnp.int32), exit_hidden=embedded,
      confidence=jnp.zeros((batch,), jnp.float32),
      exit_token=jnp.zeros((batch,), jnp.int32),
      measure_state=plan.measure.init(context, embedded[:, 0]),
      memory_entries=() if store is None else store.empty_entries(context, embedded[:, 0]),
      trace=jnp.full((batch, plan.trace_width), jnp.nan, jnp.float32), cache=cache)


def _generate_one_position(plan: DecodePlan, constants: DecodeConstants,
                           state: TokenLoopState) -> TokenLoopState:
  config, context = plan.model, constants.context
  position, cache = state.position, state.cache
  final_top1 = None
  if plan.needs.final_top1:  # the oracle: a full pass first
    states, cache = decoder_step(config, context.params, cache, state.last_token, position)
    final_top1 = jnp.argmax(exit_logits(config, context.params, states[-1]),
                            axis=-1).astype(jnp.int32)
  rng, token_rng = jax.random.split(state.rng)
  keys = None if plan.sampling.greedy else row_keys(token_rng, state.last_token.shape[0])
  layers = _layer_loop(plan, constants,
                       _position_inputs(plan, constants, state, final_top1, keys),
                       _start_layers(plan, context, state, cache))
  cache, memory = layers.cache, state.measure_memory
  if plan.exit.propagation == "copy_state" and not unrolls_layers(context.params):
    cache = propagate_state(config, context.params, cache, layers.exit_hidden,
                            layers.layers_run, position)
  if plan.measure.store is not None:
    memory = plan.measure.store.write(memory, _final_memory_entries(plan, context, layers),
                                      position)
  token = _exit_tokens(plan, context, layers, keys)
  token = jnp.where(state.done, config.pad_token_id, token)
  at = (slice(None), position)
  return state.replace(
      position=position + 1, last_token=token, done=state.done | (token == config.eos_token_id),
      tokens=state.tokens.at[at].set(token),
      # Finished rows start exited with exit layer 0 and confidence 0, so they record zeros.
      exit_layers=state.exit_layers.at[at].set(layers.exit_layer),
      confidences=state.confidences.at[at].set(layers.confidence),
      trace=(state.trace.at[at].set(jnp.where(state.done[:, None], jnp.nan, layers.trace))
             if plan.return_trace else state.trace),
      measure_memory=memory, cache=cache, rng=rng)


def _exit_tokens(plan: DecodePlan, context: MeasureContext, layers: LayerLoopState,
                 keys: Optional[Array]) -> Array:
  """The emitted tokens [B]: chosen at the exit check by a measure with logits; from the
  head on the exit state for a measure without, and for a subset measure's rows that ran
  all L layers (computed only when some row did)."""
  if plan.needs.logits == "full":
    return layers.exit_token
  full = lambda: select_row_tokens(exit_logits(plan.model, context.params,
                                               layers.exit_hidden[:, 0]), keys, plan.sampling)
  if plan.needs.logits == "none":
    return full()
  at_last = layers.exit_layer == plan.num_layers
  return jax.lax.cond(jnp.any(at_last), lambda: jnp.where(at_last, full(), layers.exit_token),
                      lambda: layers.exit_token)


def _encoded_cache(plan: DecodePlan, params: Any, input_ids: Array,
                   attention_mask: Array) -> DecoderCache:
  """The decode's start, before its first token: the inputs encoded, each layer's
  cross-attention K/V and an empty self-attention cache."""
  encoded = encode(plan.model, params, input_ids, attention_mask)
  return init_decoder_cache(plan.model, params, encoded, attention_mask, plan.max_decode_len,
                            per_layer=unrolls_layers(params))


def fixed_part_impl(plan: DecodePlan, constants: DecodeConstants, input_ids: Array,
                    attention_mask: Array, rng: Array, skip_rows: Optional[Array] = None
                    ) -> Array:
  """What every decode of these inputs runs once before its token loop, whatever its exit
  rule (generate_impl's start: encoder, cross-attention K/V), as a program of its own so it
  can be timed beside whole decodes; returns [B] float32 sums of each row's cross K/V (a
  result that needs every buffer computed)."""
  del rng, skip_rows  # the decoders' signature (sharded.decode_on_mesh calls it so)
  cache = _encoded_cache(plan, constants.context.params, input_ids, attention_mask)
  per_row = lambda buffer: jnp.sum(buffer.astype(jnp.float32),
                                   axis=tuple(range(1, buffer.ndim)))  # [B]
  buffers = jax.tree.leaves((cache.cross_k, cache.cross_v))
  if not unrolls_layers(constants.context.params):  # stacked [L, B, ...]
    buffers = [jnp.moveaxis(buffer, 0, 1) for buffer in buffers]
  return sum(per_row(buffer) for buffer in buffers)


def _token_loop(plan: DecodePlan, constants: DecodeConstants,
                state: TokenLoopState) -> TokenLoopState:
  """Generates every output position (until T, or until every row has emitted EOS).

  A never-exit plan with row buckets runs one while_loop per bucket (B, then B/4), in
  order from B rows down: each runs while the rows still generating need that bucket and
  no smaller one (their count only decreases, since no row leaves a position early), so
  every layer runs on a static row count without a per-layer switch."""
  def not_finished(s: TokenLoopState) -> Array:
    return (s.position < plan.max_decode_len) & ~jnp.all(s.done)

  buckets = plan.phase_buckets(state.done.shape[0])
  if not plan.never_exits or len(buckets) == 1:
    return jax.lax.while_loop(not_finished,
                              functools.partial(_generate_one_position, plan, constants), state)
  for rows, next_rows in zip(buckets, buckets[1:] + (0,)):
    def needs_rows(s: TokenLoopState, next_rows=next_rows) -> Array:
      return not_finished(s) & (jnp.sum(~s.done) > next_rows)
    phase = dataclasses.replace(plan, fixed_rows=rows)
    state = jax.lax.while_loop(needs_rows,
                               functools.partial(_generate_one_position, phase, constants),
                               state)
  return state


def generate_impl(plan: DecodePlan, constants: DecodeConstants, input_ids: Array,
                  attention_mask: Array, rng: Array,
                  skip_rows: Optional[Array] = None) -> GenerateOutput:
  """The traced body of `generate` for input ids [B, S]; `constants` are traced (a new
  threshold never recompiles, and a grid of them vmaps).

  Rows where `skip_rows` [B] is True start finished: they cost nothing and return padding
  (used to pad a batch to a compiled size).
  """
  config, context = plan.model, constants.context
  if plan.needs.logits == "subset" and context.head_table is None:
    # The head's rows [V, d], once per decode, outside the loops.
    context = context.replace(head_table=head_table(config, context.params))
  constants = constants.replace(context=context)
  batch = input_ids.shape[0]
  store = plan.measure.store
  state = TokenLoopState(
      position=jnp.array(0, jnp.int32),
      last_token=jnp.full((batch,), config.decoder_start_token_id, jnp.int32),
      done=jnp.zeros((batch,), bool) if skip_rows is None else jnp.asarray(skip_rows, bool),
      tokens=jnp.full((batch, plan.max_decode_len), config.pad_token_id, jnp.int32),
      exit_layers=jnp.zeros((batch, plan.max_decode_len), jnp.int32),
      confidences=jnp.zeros((batch, plan.max_decode_len), jnp.float32),
      trace=jnp.full((batch, plan.max_decode_len, plan.trace_width), jnp.nan, jnp.float32),
      measure_memory=() if store is None else _layered_memory(
          plan, store.init(context, batch, plan.max_decode_len), unrolls_layers(context.params)),
      cache=_encoded_cache(plan, context.params, input_ids, attention_mask), rng=rng)
  state = _token_loop(plan, constants, state)
  return GenerateOutput(tokens=state.tokens, exit_layers=state.exit_layers,
                        confidences=state.confidences,
                        trace=state.trace if plan.return_trace else None)
