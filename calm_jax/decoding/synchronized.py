"""FREE's synchronized parallel decoding (Bae et al. 2023), per example at any batch size
(docs/semantics.md, "Synchronized decoding").

One exit point, the shallow layer s. Each loop step runs layers 1..s for the current token
of every example at that example's own position, and the measure decides at layer s:

  * a token whose confidence clears lambda_t is emitted from layer s and left pending: its
    layer-s state waits in the example's buffer (W = max_pending + 1 slots, by position
    mod W) and the deep layers s+1..L do not run for it;
  * the example's deep pass runs when its current token does not clear lambda_t, when
    max_pending tokens are already pending, when it emitted EOS or when it reached the last
    position: layers s+1..L run once over its pending positions plus the current one,
    in parallel with a causal mask (model.window), writing the deep layers' real K/V
    there. A current token that did not exit takes the deep layers' token.
  * at a deep pass each pending token is compared with the deep prediction at its position.
    The first one rejected (verify: any disagreement; otherwise cross-entropy of the emitted
    token under the deep prediction above rollback_threshold) is replaced by the deep token,
    and the example's later positions are discarded and regenerated from there (its
    position rewinds; stale cache entries lie after it and are masked, then overwritten).

Examples keep their own positions, pending counts and deep passes, so a batch decodes as
its examples would alone. Rows without a deep pass are untouched by it (their K/V writes
are masked off), and the deep pass runs on the narrowest of a few window widths that holds
every example's pending tokens, only when some example needs it.
"""

from __future__ import annotations

import functools
from typing import Optional

import flax
import jax
import jax.numpy as jnp

from calm_jax.decoding.exit_rule import threshold_at
from calm_jax.decoding.measures import LayerInputs
from calm_jax.decoding.plan import DecodeConstants, DecodePlan
from calm_jax.decoding.sampling import select_tokens
from calm_jax.model.incremental import DecoderCache, init_decoder_cache
from calm_jax.model.t5 import causal_self_bias, embed, encode, exit_logits
from calm_jax.model.window import window_layer_step, window_positions, window_self_bias

Array = jnp.ndarray
UNCHECKED = -1  # SynchronizedOutput.deep_agreed where no deep pass judged the token


@flax.struct.dataclass
class SynchronizedOutput:
  """What synchronized decoding returns (the first three fields as in GenerateOutput)."""

  tokens: Array  # [B, T] int32 emitted ids; pad after EOS
  exit_layers: Array  # [B, T] int32 layer whose state gave the token: s or L; 0 after EOS
  # [B, T] float32 the measure's confidence at layer s; 0 after EOS and where lambda >= 1
  # (nothing exits there: the head and the measure do not run at layer s)
  confidences: Array
  deep_passes: Array  # [B] int32 deep passes each example ran
  # [B] int32 steps of layers 1..s each example ran: its tokens, plus those a deep pass
  # discarded (regenerated after a rollback or a verification)
  shallow_steps: Array
  # [B, T] int32 whether the deep layers' prediction agreed (1) or not (0) with a token
  # emitted from layer s (a replaced token: 0); UNCHECKED for deep-layer tokens and pad
  deep_agreed: Array
  trace: Optional[Array] = None  # always None (no per-layer trace in this mode)


@flax.struct.dataclass
class SyncState:
  """State of the synchronized token loop; every example keeps its own position."""

  position: Array  # [B] int32 the output position each example generates next
  last_token: Array  # [B] int32 decoder input at `position`
  done: Array  # [B] bool: EOS emitted and checked, or the last position filled
  pending: Array  # [B] int32 tokens emitted from layer s without a deep pass yet, at
  #                 positions position - pending .. position - 1
  shallow_states: Array  # [B, W, d] layer-s states, position p in slot p mod W
  tokens: Array  # [B, T] int32
  exit_layers: Array  # [B, T] int32
  confidences: Array  # [B, T] float32
  deep_agreed: Array  # [B, T] int32 (1, 0 or UNCHECKED)
  deep_passes: Array  # [B] int32
  shallow_steps: Array  # [B] int32 steps each example ran layers 1..s in
  cache: DecoderCache
  causal_bias: Array  # [1, H, T, T] float32 self-attention bias of every output position
  rng: Array  # PRNG key, split once per step


@flax.struct.dataclass
class ShallowStep:
  """The current token of every example after layers 1..s."""

  hidden: Array  # [B, d] layer-s state
  token: Array  # [B] int32 the token layer s predicts
  confidence: Array  # [B] float32 the measure at layer s
  exits: Array  # [B] bool: running and confident (emitted from layer s)
  flush: Array  # [B] bool: the example's deep pass runs at this step


def window_width(plan: DecodePlan) -> int:
  """W: the most positions a deep pass covers (max_pending pending + the current one)."""
  return min(plan.exit.max_pending + 1, plan.max_decode_len)


def deep_pass_widths(plan: DecodePlan):
  """The window widths a deep pass may run at, widest first: W and the powers of two below
  it (1: the current token alone, every token while nothing exits). A pass runs at the
  narrowest that holds every due example's window, so it computes at most about twice the
  positions it needs: where a pass costs more with each position (the CPU at the calm shape:
  width 5 ~1.4x width 1), a pass due after one or two pending tokens no longer pays for W.
  Each width compiles the deep layers once more."""
  width = window_width(plan)
  return tuple(sorted({2 ** k for k in range(width.bit_length()) if 2 ** k < width} | {width},
                      reverse=True))


def _at_positions(values: Array, positions: Array) -> Array:
  """values [B, T] at per-row positions [B] -> [B]."""
  return jnp.take_along_axis(values, positions[:, None], axis=1)[:, 0]


def _set_where(values: Array, positions: Array, new: Array, where: Array) -> Array:
  """values [B, T] with new [B] at per-row positions [B] in the rows marked by where [B]."""
  old = _at_positions(values, positions)
  rows = jnp.arange(values.shape[0])
  return values.at[rows, positions].set(jnp.where(where, new, old).astype(values.dtype))


def _shallow_step(plan: DecodePlan, constants: DecodeConstants, state: SyncState,
                  rng: Array) -> tuple:
  """Layers 1..s for every example's current token (K/V written where running): the
  ShallowStep's hidden state, token and confidence, and the cache. The head and the measure
  at layer s run only when some running example may exit (lambda < 1: at lambda >= 1 the
  deep layers give every token, and the head's d x V product is the costliest piece of a
  step at a large vocabulary); an example that cannot exit gets confidence 0."""
  config, context = plan.model, constants.context
  shallow, measure = plan.exit.shallow_exit_layer, plan.measure
  running = ~state.done
  x = embed(config, context.params, state.last_token[:, None])  # [B, 1, d]
  bias = window_self_bias(state.causal_bias, state.position, 1)  # [B, H, 1, T]
  measure_state = measure.init(context, x[:, 0])
  cache = state.cache
  for layer in range(shallow):
    x, cache = window_layer_step(config, context.params, cache, layer, x, state.position,
                                 running[:, None], bias)
    if plan.needs.every_layer and layer + 1 < shallow:  # measures reading every layer
      _, measure_state = _measure_at(plan, context, layer + 1, x[:, 0], measure_state)

  def head(hidden):  # [B, d] -> token [B], confidence [B] at layer s
    logits, confidence = _measure_at(plan, context, shallow, hidden, measure_state)[0]
    return select_tokens(logits, rng, plan.sampling), confidence.astype(jnp.float32)

  def no_exit(hidden):
    batch = hidden.shape[0]
    return jnp.zeros((batch,), jnp.int32), jnp.zeros((batch,), jnp.float32)
  may_exit = running & (constants.threshold < 1.0)  # [B]
  token, confidence = jax.lax.cond(jnp.any(may_exit), head, no_exit, x[:, 0])
  return x[:, 0], token, jnp.where(may_exit, confidence, 0.0), cache


def _measure_at(plan: DecodePlan, context, layer_no: int, hidden: Array,
                measure_state) -> tuple:
  """((logits [B, V], confidence [B]), measure state) of the measure at 1-based layer
  `layer_no` on states hidden [B, d]."""
  logits = exit_logits(plan.model, context.params, hidden)  # [B, V]
  inputs = LayerInputs(layer=jnp.int32(layer_no), hidden=hidden, static_layer=layer_no,
                       logits=logits if plan.needs.logits == "full" else None)
  confidence, measure_state = plan.measure.confidence(context, inputs, measure_state)
  return (logits, confidence), measure_state


def _decide(plan: DecodePlan, constants: DecodeConstants, state: SyncState, token: Array,
            confidence: Array) -> tuple:
  """(exits, flush), each [B] bool, for the current tokens."""
  running = ~state.done
  lambda_t = threshold_at(constants.threshold, constants.tau, state.position,
                          plan.max_decode_len, plan.exit.decay)  # [B]
  allow_early = constants.threshold < 1.0  # lambda >= 1 never exits, whatever the decay
  exits = running & allow_early & (confidence >= lambda_t)
  full = state.pending >= window_width(plan) - 1
  ends = (token == plan.model.eos_token_id) | (state.position == plan.max_decode_len - 1)
  return exits, running & (~exits | full | ends)


def _emit_shallow(plan: DecodePlan, state: SyncState, step: ShallowStep) -> SyncState:
  """Stores every running example's layer-s state and records the tokens that exit."""
  width = state.shallow_states.shape[1]
  slot = state.position % width  # [B]
  rows = jnp.arange(slot.shape[0])
  running = ~state.done
  old = state.shallow_states[rows, slot]  # [B, d]
  shallow_states = state.shallow_states.at[rows, slot].set(
      jnp.where(running[:, None], step.hidden, old))
  at, exits = state.position, step.exits
  return state.replace(
      shallow_states=shallow_states,
      tokens=_set_where(state.tokens, at, step.token, exits),
      exit_layers=_set_where(state.exit_layers, at, jnp.full_like(at, plan.exit.shallow_exit_layer),
                             exits),
      confidences=_set_where(state.confidences, at, step.confidence, running))


def _advance_pending(state: SyncState, step: ShallowStep) -> SyncState:
  """Examples whose token exited without a deep pass move on with it pending."""
  moves = step.exits & ~step.flush
  return state.replace(position=state.position + moves,
                       pending=state.pending + moves,
                       last_token=jnp.where(moves, step.token, state.last_token))


def _deep_layers(plan: DecodePlan, constants: DecodeConstants, state: SyncState,
                 starts: Array, writes: Array, width: int) -> tuple:
  """Layers s+1..L over each example's window of `width` positions from `starts` [B]
  (inputs: the buffered layer-s states); K/V written where `writes` [B, W]. Returns the
  deep logits [B, W, V] and the cache."""
  config, params = plan.model, constants.context.params
  slots = window_positions(starts, width) % state.shallow_states.shape[1]  # [B, W]
  x = jnp.take_along_axis(state.shallow_states, slots[:, :, None], axis=1)  # [B, W, d]
  bias = window_self_bias(state.causal_bias, starts, width)  # [B, H, W, T]
  cache = state.cache
  for layer in range(plan.exit.shallow_exit_layer, plan.num_layers):
    x, cache = window_layer_step(config, params, cache, layer, x, starts, writes, bias)
  return exit_logits(config, params, x), cache  # [B, W, V]


def _rejected(plan: DecodePlan, deep_logits: Array, deep_tokens: Array,
              emitted: Array) -> Array:
  """[B, W] bool: the deep layers reject the emitted token (verify: any disagreement;
  otherwise cross-entropy of the emitted token above rollback_threshold)."""
  disagree = deep_tokens != emitted
  if plan.exit.verify:
    return disagree
  log_z = jax.nn.logsumexp(deep_logits, axis=-1)  # [B, W]
  emitted_logit = jnp.take_along_axis(deep_logits, emitted[..., None], axis=-1)[..., 0]
  return disagree & (log_z - emitted_logit > plan.exit.rollback_threshold)


def _deep_pass(plan: DecodePlan, constants: DecodeConstants, step: ShallowStep,
               rng: Array, width: int, state: SyncState) -> SyncState:
  """The deep pass of every example marked in step.flush, over `width` >= its pending + 1
  positions: pending tokens judged, the first rejected one replaced (later ones dropped),
  a current token that did not exit given the deep token; the example then moves on."""
  config = plan.model
  length = plan.max_decode_len
  starts = state.position - state.pending  # [B] first pending position
  offsets = jnp.arange(width)[None, :]  # [1, W]
  in_window = step.flush[:, None] & (offsets <= state.pending[:, None])  # [B, W]
  deep_logits, cache = _deep_layers(plan, constants, state, starts, in_window, width)
  batch = deep_logits.shape[0]
  deep_tokens = select_tokens(deep_logits.reshape(batch * width, -1), rng,
                              plan.sampling).reshape(batch, width)  # [B, W]
  positions = jnp.minimum(window_positions(starts, width), length - 1)  # [B, W]
  emitted = jnp.take_along_axis(state.tokens, positions, axis=1)  # [B, W]
  # Tokens emitted from layer s: the pending ones and the current one if it exited.
  shallow = in_window & ((offsets < state.pending[:, None]) | step.exits[:, None])
  rejected = shallow & _rejected(plan, deep_logits, deep_tokens, emitted)  # [B, W]
  agreed = deep_tokens == emitted  # [B, W]
  replaced = jnp.any(rejected, axis=1)  # [B]
  first_rejected = jnp.where(replaced, jnp.argmax(rejected, axis=1), width)  # [B]
  settled = jnp.minimum(first_rejected, state.pending)  # [B] offset of the last settled position
  last = starts + settled  # [B] the last position this pass settles
  takes_deep = step.flush & (replaced | ~step.exits)  # [B] last position gets the deep token
  deep_token = jnp.take_along_axis(deep_tokens, settled[:, None], axis=1)[:, 0]  # [B]
  judged = shallow & (offsets <= first_rejected[:, None])  # later ones are discarded
  state = _judge(plan, state, judged, agreed, positions, last, step.flush)
  tokens = _set_where(state.tokens, last, deep_token, takes_deep)
  last_token = _at_positions(tokens, last)
  done = (last_token == config.eos_token_id) | (last + 1 >= length)
  flush = step.flush
  return state.replace(
      tokens=tokens,
      exit_layers=_set_where(state.exit_layers, last, jnp.full_like(last, plan.num_layers),
                             takes_deep),
      position=jnp.where(flush, last + 1, state.position),
      last_token=jnp.where(flush, last_token, state.last_token),
      done=state.done | (flush & done), pending=jnp.where(flush, 0, state.pending),
      deep_passes=state.deep_passes + flush, cache=cache)


def _judge(plan: DecodePlan, state: SyncState, judged: Array, agreed: Array,
           positions: Array, last: Array, flush: Array) -> SyncState:
  """Records the deep verdicts `agreed` [B, W] (1 or 0) at the window positions [B, W] the
  pass judged; positions after `last` up to the current one are cleared (they will be
  generated again)."""
  rows = jnp.arange(positions.shape[0])[:, None]  # [B, 1]
  length = plan.max_decode_len
  judged_at = jnp.where(judged, positions, length)  # [B, W]; past the end: dropped
  deep_agreed = state.deep_agreed.at[rows, judged_at].set(agreed.astype(jnp.int32),
                                                          mode="drop")
  all_positions = jnp.arange(length)[None, :]  # [1, T]
  stale = (flush[:, None] & (all_positions > last[:, None])
           & (all_positions <= state.position[:, None]))  # [B, T]
  return state.replace(
      deep_agreed=jnp.where(stale, UNCHECKED, deep_agreed),
      tokens=jnp.where(stale, plan.model.pad_token_id, state.tokens),
      exit_layers=jnp.where(stale, 0, state.exit_layers),
      confidences=jnp.where(stale, 0.0, state.confidences))


def _synchronized_step(plan: DecodePlan, constants: DecodeConstants,
                       state: SyncState) -> SyncState:
  """One step of every running example: layers 1..s, then the deep passes that are due."""
  if plan.sampling.greedy:  # the keys are never read: no split per step
    rng = shallow_rng = deep_rng = state.rng
  else:
    rng, shallow_rng, deep_rng = jax.random.split(state.rng, 3)
  hidden, token, confidence, cache = _shallow_step(plan, constants, state, shallow_rng)
  state = state.replace(cache=cache, rng=rng, shallow_steps=state.shallow_steps + ~state.done)
  exits, flush = _decide(plan, constants, state, token, confidence)
  step = ShallowStep(hidden=hidden, token=token, confidence=confidence, exits=exits,
                     flush=flush)
  state = _emit_shallow(plan, state, step)
  needed = jnp.max(jnp.where(flush, state.pending + 1, 0))  # widest window due (0: none)
  narrower = 0
  for width in sorted(deep_pass_widths(plan)):
    state = _at_most_once((needed > narrower) & (needed <= width), functools.partial(
        _deep_pass, plan, constants, step, deep_rng, width), state)
    narrower = width
  return _advance_pending(state, step)


def _at_most_once(run: Array, body, state: SyncState) -> SyncState:
  """body(state) if `run` else state, as a while loop of at most one trip: a loop updates
  its carry (the caches) in place, where a conditional's untaken branch copies them."""
  def once(carry):
    return jnp.array(False), body(carry[1])
  return jax.lax.while_loop(lambda carry: carry[0], once, (run, state))[1]


def _initial_state(plan: DecodePlan, constants: DecodeConstants, input_ids: Array,
                   attention_mask: Array, rng: Array, skip_rows: Optional[Array]) -> SyncState:
  config, params = plan.model, constants.context.params
  batch, length = input_ids.shape[0], plan.max_decode_len
  encoded = encode(config, params, input_ids, attention_mask)
  zeros = jnp.zeros((batch,), jnp.int32)
  return SyncState(
      position=zeros,
      last_token=jnp.full((batch,), config.decoder_start_token_id, jnp.int32),
      done=jnp.zeros((batch,), bool) if skip_rows is None else jnp.asarray(skip_rows, bool),
      pending=zeros,
      shallow_states=jnp.zeros((batch, window_width(plan), config.d_model), config.jnp_dtype),
      tokens=jnp.full((batch, length), config.pad_token_id, jnp.int32),
      exit_layers=jnp.zeros((batch, length), jnp.int32),
      confidences=jnp.zeros((batch, length), jnp.float32),
      deep_agreed=jnp.full((batch, length), UNCHECKED, jnp.int32),
      deep_passes=zeros,
      shallow_steps=zeros,
      # Per-layer cross K/V buffers: every layer index here is a Python int, and a layer
      # sliced out of the stacked cross cache was copied per use (model.incremental).
      cache=init_decoder_cache(config, params, encoded, attention_mask, length,
                               per_layer=True),
      causal_bias=causal_self_bias(config, params, length),
      rng=rng)


def synchronized_impl(plan: DecodePlan, constants: DecodeConstants, input_ids: Array,
                      attention_mask: Array, rng: Array,
                      skip_rows: Optional[Array] = None) -> SynchronizedOutput:
  """The traced body of synchronized decoding for input ids [B, S] (the signature of
  early_exit.generate_impl; rows where `skip_rows` [B] start finished)."""
  state = _initial_state(plan, constants, input_ids, attention_mask, rng, skip_rows)
  running = lambda s: ~jnp.all(s.done)
  state = jax.lax.while_loop(running, functools.partial(_synchronized_step, plan, constants),
                             state)
  return SynchronizedOutput(tokens=state.tokens, exit_layers=state.exit_layers,
                            confidences=state.confidences, deep_passes=state.deep_passes,
                            shallow_steps=state.shallow_steps, deep_agreed=state.deep_agreed)
