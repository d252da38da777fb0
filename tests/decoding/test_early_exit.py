"""The early-exit decoder (`generate`, `generate_grid`) against the full model, the exit
rule, one-by-one decoding and a teacher-forced replay of state propagation
(docs/semantics.md). The entry points' argument checks: test_generate.py.

Every distinct (config, ExitConfig without threshold and tau, max_decode_len, batch shape)
compiles once, so the runs below share a handful of shapes: one padded batch of 8 decoded
for T positions, memoised per configuration.
"""

import dataclasses
import functools
import types
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import calm_jax
from calm_jax.decoding import generate as generate_module
from calm_jax.decoding.early_exit import propagate_state
from calm_jax.decoding.exit_rule import ExitConfig
from calm_jax.decoding.generate import generate, generate_grid, generate_with_thresholds
from calm_jax.decoding.greedy import greedy_decode
from calm_jax.decoding.sampling import SamplingConfig
from calm_jax.model.incremental import (DecoderCache, decoder_layer_step, init_decoder_cache,
                                        step_self_bias, write_self_kv)
from calm_jax.model.t5 import embed, encode, exit_logits, shift_right

# T5 v1.1 style (gated-GELU, untied head) with six decoder layers so that exits can vary.
SPEC = dict(vocab_size=53, d_model=16, d_kv=4, d_ff=24, num_layers=2, num_decoder_layers=6,
            num_heads=4, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
            relative_attention_num_buckets=8, relative_attention_max_distance=16)
L = SPEC["num_decoder_layers"]
T = 10  # max_decode_len of every run
LENGTHS = [9, 4, 6, 9, 6, 4, 9, 6]  # unpadded input lengths of the batch (padded to 9)
THRESHOLDED = ["softmax_diff", "softmax_max", "state_saturation"]


def _batch(vocab_size):
  rng = np.random.RandomState(0)
  ids = rng.randint(2, vocab_size, (len(LENGTHS), max(LENGTHS)))
  mask = np.ones_like(ids)
  for row, length in enumerate(LENGTHS):
    ids[row, length:] = 0
    mask[row, length:] = 0
  return ids, mask


def _generated(tokens, eos):
  """[B, T] bool: positions that hold a generated token (up to and including EOS)."""
  hit = np.asarray(tokens) == eos
  return (np.cumsum(hit, axis=1) - hit) == 0


def _softmax_diff(logits):
  """NumPy reference of CALM's softmax response over the last axis."""
  logits = np.asarray(logits, np.float64)
  z = np.exp(logits - logits.max(-1, keepdims=True))
  top = np.sort(z / z.sum(-1, keepdims=True), axis=-1)
  return top[..., -1] - top[..., -2]


def _replay_step(config, params, cache, token, position, exit_layer, copy_from):
  """One output position decoded by hand: example b runs layers 1..exit_layer[b] on its true
  states; every later layer j gets its K/V from layer j's self_kv of the state after layer
  copy_from[b]. Returns every layer's true state [L, B, d], the exit state [B, d], the cache."""
  self_bias = step_self_bias(config, params, position, cache.max_decode_len)
  x = embed(config, params, token[:, None])  # [B, 1, d]
  states = []
  for layer in range(L):
    x, cache = decoder_layer_step(config, params, cache, jnp.int32(layer), x, position,
                                  self_bias)
    states.append(x)
  states = jnp.stack(states)  # [L, B, 1, d]
  pick = lambda layers: jnp.take_along_axis(
      states, (jnp.maximum(layers, 1) - 1)[None, :, None, None], axis=0)[0]  # [B, 1, d]
  source = pick(copy_from)
  for layer in range(L):
    written = write_self_kv(config, params, cache, jnp.int32(layer), source, position)
    skipped = (layer + 1 > exit_layer)[None, :, None, None, None]  # [1, B, 1, 1, 1]
    cache = cache.replace(self_k=jnp.where(skipped, written.self_k, cache.self_k),
                          self_v=jnp.where(skipped, written.self_v, cache.self_v))
  return states[:, :, 0], pick(exit_layer)[:, 0], cache


@pytest.fixture(scope="module")
def model(tmp_path_factory, save_random_hf_t5):
  directory = tmp_path_factory.mktemp("calm")
  save_random_hf_t5(directory, seed=5, scale=1.5, **SPEC)
  config, params = calm_jax.load_hf_t5(str(directory))
  params = jax.tree.map(jnp.asarray, params)
  ids, mask = _batch(config.vocab_size)
  forward = jax.jit(functools.partial(calm_jax.forward, config))
  # Greedy tokens by repeated teacher forcing (no EOS): pick an EOS that row 0 emits at a
  # later position, so that some sequences stop early and others do not.
  free = np.zeros((len(LENGTHS), T), np.int32)
  for position in range(T):
    logits = forward(params, ids, shift_right(config, jnp.asarray(free)), mask).logits
    free[:, position] = np.asarray(jnp.argmax(logits[:, position], -1))
  row = free[0].tolist()
  eos = next(token for p, token in enumerate(row)
             if p >= 3 and token not in row[:p] and token != config.pad_token_id)
  config = config.replace(eos_token_id=int(eos))
  return types.SimpleNamespace(
      config=config, params=params, ids=ids, mask=mask, forward=forward, free=free,
      replay_step=jax.jit(functools.partial(_replay_step, config, params)))


@pytest.fixture(scope="module")
def greedy(model):
  return np.asarray(greedy_decode(model.config, model.params, model.ids, model.mask,
                                  max_decode_len=T))


@pytest.fixture(scope="module")
def run(model):
  """generate on the module's batch, memoised per (ExitConfig, return_trace)."""
  outputs = {}

  def run_(exit_config, return_trace=True):
    key = (exit_config, return_trace)
    if key not in outputs:
      out = generate(model.config, model.params, model.ids, model.mask, exit=exit_config,
                     max_decode_len=T, return_trace=return_trace)
      outputs[key] = jax.tree.map(np.asarray, out)
    return outputs[key]
  return run_


def _median_confidence(model, run, measure):
  """A threshold in the middle of the measure's confidences, so that exits vary."""
  full = run(ExitConfig(measure=measure, threshold=1.0))
  values = full.trace[_generated(full.tokens, model.config.eos_token_id)]  # [N, L]
  return float(np.round(np.median(values), 3))


def _check_exit_rule(out, eos, lambda_t, exit_points):
  """exit layer = first exit point whose confidence reaches lambda_t, else L; the
  confidence is the trace at the exit layer; the trace is NaN after the exit layer, at
  layers that are not exit points and at positions after EOS."""
  generated = _generated(out.tokens, eos)
  for b, t in np.ndindex(generated.shape):
    trace = out.trace[b, t]
    if not generated[b, t]:
      assert out.exit_layers[b, t] == 0 and out.confidences[b, t] == 0, (b, t)
      assert np.isnan(trace).all(), (b, t, trace)
      continue
    threshold = np.float32(lambda_t[t])
    passing = [i for i in exit_points if trace[i - 1] >= threshold]
    expected = passing[0] if passing else L
    assert out.exit_layers[b, t] == expected, (b, t, trace, threshold)
    assert out.confidences[b, t] == trace[expected - 1], (b, t)
    computed = np.array([i for i in exit_points if i <= expected]) - 1
    assert np.isfinite(trace[computed]).all(), (b, t, trace)
    assert np.isnan(np.delete(trace, computed)).all(), (b, t, trace)


def _replay(model, tokens, exit_layers, copy_from=None):
  """Teacher-forced replay of decoded tokens with the exits `generate` reported."""
  config, params = model.config, model.params
  cache = init_decoder_cache(config, params, encode(config, params, model.ids, model.mask),
                             model.mask, T)
  copy_from = exit_layers if copy_from is None else copy_from
  token = jnp.full((len(LENGTHS),), config.decoder_start_token_id, jnp.int32)
  states, exits = [], []
  for position in range(T):
    layer_states, exit_state, cache = model.replay_step(
        cache, token, jnp.int32(position), jnp.asarray(exit_layers[:, position], jnp.int32),
        jnp.asarray(copy_from[:, position], jnp.int32))
    states.append(layer_states)
    exits.append(exit_state)
    token = jnp.asarray(tokens[:, position], jnp.int32)
  layer_logits = np.asarray(exit_logits(config, params, jnp.stack(states, 2)))  # [L, B, T, V]
  exit_logits_ = np.asarray(exit_logits(config, params, jnp.stack(exits, 1)))  # [B, T, V]
  return layer_logits, exit_logits_


# --- 1. lambda >= 1 is the full model ----------------------------------------------------

def test_test_model_is_not_degenerate(model, greedy):
  eos = model.config.eos_token_id
  finished = ~_generated(greedy, eos)
  assert finished.any() and not finished[:, -1].all(), "EOS must stop some rows, not all"
  generated = _generated(greedy, eos)
  np.testing.assert_array_equal(greedy[generated], model.free[generated])
  assert len(set(greedy[generated].tolist())) >= 5


@pytest.mark.parametrize("threshold", [1.0, 1.5])
@pytest.mark.parametrize("measure", THRESHOLDED)
def test_threshold_at_least_one_is_the_full_model(model, greedy, run, measure, threshold):
  out = run(ExitConfig(measure=measure, threshold=threshold))
  generated = _generated(out.tokens, model.config.eos_token_id)
  np.testing.assert_array_equal(out.tokens, greedy)
  np.testing.assert_array_equal(out.exit_layers, np.where(generated, L, 0))
  assert (out.tokens[~generated] == model.config.pad_token_id).all()
  assert (~generated).any(), "EOS never hit: the test checks nothing after it"
  # Every layer was computed (nothing exits early); the confidence is the last layer's.
  assert np.isfinite(out.trace[generated]).all()
  assert np.isnan(out.trace[~generated]).all()
  np.testing.assert_array_equal(out.confidences, np.where(generated, out.trace[..., -1], 0))
  # ... and the trace really holds confidences that would have exited at lower thresholds.
  assert (out.trace[generated][:, :-1] >= 0.5).any()


def test_threshold_one_with_decay_is_the_full_model(model, greedy, run):
  """lambda >= 1 never exits although the decay takes lambda_t = 0.9 + 0.1 exp(-tau t/N)
  below 1 after position 0."""
  out = run(ExitConfig(threshold=1.0, tau=3.0))
  generated = _generated(out.tokens, model.config.eos_token_id)
  np.testing.assert_array_equal(out.exit_layers, np.where(generated, L, 0))
  np.testing.assert_array_equal(out.tokens, greedy)


@pytest.mark.parametrize("measure", ["softmax_diff", "softmax_max", "state_saturation"])
def test_outputs_do_not_depend_on_return_trace(model, run, measure):
  for threshold in [1.0, _median_confidence(model, run, measure)]:
    traced = run(ExitConfig(measure=measure, threshold=threshold))
    plain = run(ExitConfig(measure=measure, threshold=threshold), return_trace=False)
    assert plain.trace is None
    np.testing.assert_array_equal(plain.tokens, traced.tokens)
    np.testing.assert_array_equal(plain.exit_layers, traced.exit_layers)
    np.testing.assert_allclose(plain.confidences, traced.confidences, atol=1e-6, rtol=0,
                               err_msg=f"threshold {threshold}")


# --- 2. and 3. the exit rule end to end ---------------------------------------------------

@pytest.mark.parametrize("measure", THRESHOLDED)
def test_exits_follow_the_rule_with_a_constant_threshold(model, run, measure):
  lam = _median_confidence(model, run, measure)
  out = run(ExitConfig(measure=measure, threshold=lam))
  _check_exit_rule(out, model.config.eos_token_id, np.full(T, lam), range(1, L + 1))
  generated = _generated(out.tokens, model.config.eos_token_id)
  assert len(np.unique(out.exit_layers[generated])) > 2, "exits do not vary between layers"
  assert (out.exit_layers[generated] < L).mean() > 0.3


def test_exits_follow_the_decaying_threshold(model, run):
  lam, tau = _median_confidence(model, run, "softmax_diff"), 3.0
  out = run(ExitConfig(threshold=lam, tau=tau))  # decay='paper'
  lambda_t = np.clip(0.9 * lam + 0.1 * np.exp(-tau * np.arange(T) / T), 0.0, 1.0)
  _check_exit_rule(out, model.config.eos_token_id, lambda_t, range(1, L + 1))
  generated = _generated(out.tokens, model.config.eos_token_id)
  assert len(np.unique(out.exit_layers[generated])) > 2
  # The decay is applied: the exits differ from those under the constant lambda.
  constant = run(ExitConfig(threshold=lam))
  assert np.any(out.exit_layers != constant.exit_layers)


def test_runtime_threshold_and_tau_compile_once_on_an_exit_grid(model, run):
  """min_exit_layer 2, interval 2: exit points 2, 4, 6 of L=6; 'code' decay."""
  exit_config = ExitConfig(min_exit_layer=2, exit_interval=2, decay="code")
  lam = _median_confidence(model, run, "softmax_diff")
  before = generate_module._generate_jit._cache_size()
  seen = set()
  for threshold, tau in [(lam, 0.0), (0.8 * lam, 0.0), (lam, 2.0), (min(1.1 * lam, 0.95), 5.0)]:
    config = dataclasses.replace(exit_config, threshold=threshold, tau=tau)
    out = jax.tree.map(np.asarray, generate(model.config, model.params, model.ids, model.mask,
                                            exit=config, max_decode_len=T, return_trace=True))
    lambda_t = threshold * (0.9 + 0.1 * np.exp(-tau * np.arange(T) / T)) if tau else np.full(
        T, threshold)
    _check_exit_rule(out, model.config.eos_token_id, lambda_t, [2, 4, 6])
    generated = _generated(out.tokens, model.config.eos_token_id)
    assert set(out.exit_layers[generated].tolist()) <= {2, 4, 6}
    seen |= set(out.exit_layers[generated].tolist())
  assert generate_module._generate_jit._cache_size() == before + 1
  assert seen == {2, 4, 6}


# --- 5. a grid of thresholds in one call -----------------------------------------------------

def test_generate_grid_equals_separate_calls(model, run):
  lam = _median_confidence(model, run, "softmax_diff")
  thresholds = [1.0, lam, round(0.6 * lam, 3)]
  grid = jax.tree.map(np.asarray, generate_grid(
      model.config, model.params, model.ids, model.mask, thresholds=thresholds,
      max_decode_len=T, return_trace=True))
  assert grid.tokens.shape == (3, len(LENGTHS), T) and grid.trace.shape == (3, len(LENGTHS), T, L)
  for k, threshold in enumerate(thresholds):
    alone = run(ExitConfig(threshold=threshold))
    np.testing.assert_array_equal(grid.tokens[k], alone.tokens)
    np.testing.assert_array_equal(grid.exit_layers[k], alone.exit_layers)
    np.testing.assert_allclose(grid.confidences[k], alone.confidences, atol=1e-5, rtol=0)
    np.testing.assert_allclose(grid.trace[k], alone.trace, atol=1e-5, rtol=0)
  assert np.any(grid.exit_layers[1] != grid.exit_layers[2])


# --- 6. batch invariance ----------------------------------------------------------------

def test_batch_equals_one_by_one(model, run):
  lam = _median_confidence(model, run, "softmax_diff")
  exit_config = ExitConfig(threshold=lam)
  batch = run(exit_config)
  generated = _generated(batch.tokens, model.config.eos_token_id)
  # Mixed exits: at some position, examples still generating leave at different layers.
  assert any(len(np.unique(batch.exit_layers[generated[:, t], t])) > 1 for t in range(T))
  for row, length in enumerate(LENGTHS):
    alone = jax.tree.map(np.asarray, generate(
        model.config, model.params, model.ids[row:row + 1, :length], exit=exit_config,
        max_decode_len=T, return_trace=True))
    np.testing.assert_array_equal(alone.tokens[0], batch.tokens[row], err_msg=f"row {row}")
    np.testing.assert_array_equal(alone.exit_layers[0], batch.exit_layers[row],
                                  err_msg=f"row {row}")
    np.testing.assert_allclose(alone.confidences[0], batch.confidences[row], atol=5e-5)
    np.testing.assert_allclose(alone.trace[0], batch.trace[row], atol=5e-5)


# --- 7. state propagation ----------------------------------------------------------------

def test_replay_with_exit_state_propagation_reproduces_tokens_and_confidences(model, run):
  lam = _median_confidence(model, run, "softmax_diff")
  out = run(ExitConfig(threshold=lam))
  generated = _generated(out.tokens, model.config.eos_token_id)
  assert (out.exit_layers[generated] < L).mean() > 0.3
  layer_logits, exit_logits_ = _replay(model, out.tokens, out.exit_layers)
  np.testing.assert_array_equal(exit_logits_.argmax(-1)[generated], out.tokens[generated])
  np.testing.assert_allclose(_softmax_diff(exit_logits_)[generated],
                             out.confidences[generated], atol=2e-5, rtol=0)
  # Every computed trace entry is the softmax response of the replay's true state.
  reference = np.moveaxis(_softmax_diff(layer_logits), 0, -1)  # [B, T, L]
  computed = np.isfinite(out.trace)
  np.testing.assert_allclose(out.trace[computed], reference[computed], atol=2e-5, rtol=0)

  # Control: K/V from the first layer's state instead of the exit layer's is detected.
  wrong_logits, _ = _replay(model, out.tokens, out.exit_layers, np.ones_like(out.exit_layers))
  wrong = np.moveaxis(_softmax_diff(wrong_logits), 0, -1)
  assert np.abs(wrong[computed] - out.trace[computed]).max() > 1e-3


def test_static_exit_layer(model, greedy, run):
  out = run(ExitConfig(measure="static", static_exit_layer=3), return_trace=False)
  generated = _generated(out.tokens, model.config.eos_token_id)
  np.testing.assert_array_equal(out.exit_layers, np.where(generated, 3, 0))
  np.testing.assert_array_equal(out.confidences, np.where(generated, 1.0, 0.0))
  assert out.trace is None
  _, exit_logits_ = _replay(model, out.tokens, out.exit_layers)
  np.testing.assert_array_equal(exit_logits_.argmax(-1)[generated], out.tokens[generated])
  assert np.any(out.tokens != greedy), "layer 3 gives the final layer's tokens: checks nothing"

  last = run(ExitConfig(measure="static", static_exit_layer=L), return_trace=False)
  np.testing.assert_array_equal(last.tokens, greedy)
  np.testing.assert_array_equal(last.exit_layers, np.where(_generated(greedy, model.config.eos_token_id), L, 0))


def _oracle(model, run):
  return run(ExitConfig(measure="oracle", propagation="full_compute"))


def test_oracle_with_full_compute_is_greedy_and_exits_at_first_agreeing_layer(model, greedy, run):
  out = _oracle(model, run)
  eos = model.config.eos_token_id
  generated = _generated(greedy, eos)
  np.testing.assert_array_equal(out.tokens, greedy)
  hidden = model.forward(model.params, model.ids, shift_right(model.config, jnp.asarray(greedy)),
                         model.mask).hidden_states  # [L, B, T, d]
  top1 = np.asarray(jnp.argmax(exit_logits(model.config, model.params, hidden), -1))  # [L, B, T]
  agrees = top1 == top1[-1]
  first_agreeing = agrees.argmax(0) + 1  # [B, T], 1-based; layer L always agrees
  np.testing.assert_array_equal(out.exit_layers, np.where(generated, first_agreeing, 0))
  np.testing.assert_array_equal(out.confidences, np.where(generated, 1.0, 0.0))
  assert ((out.exit_layers >= 1) & (out.exit_layers <= L))[generated].all()
  assert len(np.unique(out.exit_layers[generated])) > 2
  # full_compute runs every layer: the trace is the agreement at every layer.
  np.testing.assert_array_equal(out.trace[generated], np.moveaxis(agrees, 0, -1)[generated])


def test_full_compute_trace_is_nan_after_eos(model, greedy, run):
  """Finished rows have no confidences, even where full_compute runs every layer."""
  out = _oracle(model, run)
  finished = ~_generated(greedy, model.config.eos_token_id)
  assert finished.any()
  assert np.isnan(out.trace[finished]).all()


def test_propagate_state_writes_exit_state_kv_from_first_layer_on(model):
  config, params = model.config, model.params
  rng = np.random.RandomState(3)
  batch, position = 3, 4
  shape = (L, batch, config.num_heads, T, config.d_kv)
  cache = DecoderCache(self_k=jnp.asarray(rng.randn(*shape), jnp.float32),
                       self_v=jnp.asarray(rng.randn(*shape), jnp.float32),
                       cross_k=jnp.zeros((L, batch, config.num_heads, 5, config.d_kv)),
                       cross_v=jnp.zeros((L, batch, config.num_heads, 5, config.d_kv)),
                       cross_bias=jnp.zeros((batch, 1, 1, 5)))
  exit_hidden = rng.randn(batch, 1, config.d_model).astype(np.float32)
  propagate = jax.jit(functools.partial(propagate_state, config, params))
  layers = jax.tree.map(np.asarray, params["decoder"]["layers"])
  for first in [0, 2, 5, L]:
    new = propagate(cache, jnp.asarray(exit_hidden), jnp.int32(first), jnp.int32(position))
    expected_k, expected_v = np.array(cache.self_k), np.array(cache.self_v)
    for j in range(first, L):
      x = exit_hidden[:, 0]
      normed = x / np.sqrt(np.mean(x * x, -1, keepdims=True) + config.layer_norm_epsilon)
      normed = normed * layers["self_attn_norm"]["scale"][j]
      split = lambda y: y.reshape(batch, config.num_heads, config.d_kv)
      expected_k[j, :, :, position] = split(normed @ layers["self_attn"]["k"]["kernel"][j])
      expected_v[j, :, :, position] = split(normed @ layers["self_attn"]["v"]["kernel"][j])
    np.testing.assert_allclose(new.self_k, expected_k, atol=1e-5, rtol=0)
    np.testing.assert_allclose(new.self_v, expected_v, atol=1e-5, rtol=0)
    # Layers before `first` and other positions are untouched, bit for bit.
    np.testing.assert_array_equal(np.asarray(new.self_k)[:first], np.asarray(cache.self_k)[:first])
    np.testing.assert_array_equal(np.delete(np.asarray(new.self_v), position, axis=3),
                                  np.delete(np.asarray(cache.self_v), position, axis=3))
  assert propagate._cache_size() == 1


# --- 9. sampling ------------------------------------------------------------------------

def test_sampling_is_reproducible_per_key(model, run, greedy):
  lam = _median_confidence(model, run, "softmax_diff")
  sample = lambda key: jax.tree.map(np.asarray, generate(
      model.config, model.params, model.ids, model.mask, exit=ExitConfig(threshold=lam),
      max_decode_len=T, sampling=SamplingConfig(temperature=1.0), rng=jax.random.PRNGKey(key)))
  first, again, other = sample(0), sample(0), sample(1)
  for name in ("tokens", "exit_layers", "confidences"):
    np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
  assert np.any(first.tokens != other.tokens)
  assert np.any(first.tokens != greedy)
  generated = _generated(first.tokens, model.config.eos_token_id)
  assert ((first.exit_layers >= 1) & (first.exit_layers <= L))[generated].all()
  np.testing.assert_array_equal(first.exit_layers[~generated], 0)


def test_max_input_len_truncates_with_a_warning(model, run):
  lam = _median_confidence(model, run, "softmax_diff")
  exit_config = ExitConfig(threshold=lam)
  # Rows of the full length 9 get three more tokens; shorter rows get padding only.
  extra = np.random.RandomState(4).randint(2, model.config.vocab_size, (len(LENGTHS), 3))
  full = np.array(LENGTHS)[:, None] == max(LENGTHS)
  long_ids = np.concatenate([model.ids, np.where(full, extra, 0)], axis=1)
  long_mask = np.concatenate([model.mask, np.where(full, 1, 0) * np.ones((1, 3), int)], axis=1)
  with pytest.warns(UserWarning, match="inputs of up to 12 tokens truncated to max_input_len=9"):
    out = generate(model.config, model.params, long_ids, long_mask, exit=exit_config,
                   max_decode_len=T, return_trace=True, max_input_len=9)
  expected = run(exit_config)
  np.testing.assert_array_equal(out.tokens, expected.tokens)
  np.testing.assert_array_equal(out.exit_layers, expected.exit_layers)
  # Without truncation the extra tokens change the output: the comparison is meaningful.
  untruncated = generate(model.config, model.params, long_ids, long_mask, exit=exit_config,
                         max_decode_len=T, return_trace=True)
  assert np.any(np.asarray(untruncated.tokens) != expected.tokens)


def test_max_input_len_cutting_only_padding_does_not_warn(model, run):
  lam = _median_confidence(model, run, "softmax_diff")
  exit_config = ExitConfig(threshold=lam)
  long_ids = np.concatenate([model.ids, np.zeros((len(LENGTHS), 3), int)], axis=1)
  long_mask = np.concatenate([model.mask, np.zeros((len(LENGTHS), 3), int)], axis=1)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    out = generate(model.config, model.params, long_ids, long_mask, exit=exit_config,
                   max_decode_len=T, return_trace=True, max_input_len=9)
  np.testing.assert_array_equal(out.tokens, run(exit_config).tokens)
  np.testing.assert_array_equal(out.exit_layers, run(exit_config).exit_layers)


# --- 10. what the loops carry ----------------------------------------------------------

def _while_carries(jaxpr):
  """The carried avals of every while loop in a jaxpr, nested loops and branches included."""
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "while":
      yield [var.aval for var in eqn.outvars]
    for param in eqn.params.values():
      inner = getattr(param, "jaxpr", None)
      for sub in (param if isinstance(param, (tuple, list)) else [param]):
        sub = getattr(sub, "jaxpr", sub)
        if hasattr(sub, "eqns"):
          yield from _while_carries(sub)
      if hasattr(inner, "eqns"):
        yield from _while_carries(inner)


@pytest.mark.parametrize("measure", ["softmax_diff", "softmax_topk", "state_saturation"])
def test_no_loop_carries_vocabulary_wide_logits(model, measure):
  # A check chooses its row's token where it runs, so the layer loop carries tokens [B],
  # never logits [B, V]: a [B, V] carry is read and rewritten at every layer.
  exit_config = ExitConfig(measure=measure, threshold=0.5, top_k=8)
  plan = generate_module.DecodePlan.checked(model.config, exit_config, SamplingConfig(), T,
                                            False)
  constants = generate_module._constants(plan, model.params, exit_config,  # pylint: disable=protected-access
                                         jnp.float32(0.5), None)
  jaxpr = jax.make_jaxpr(functools.partial(generate_module.generate_impl, plan))(
      constants, model.ids, model.mask, jax.random.PRNGKey(0))
  carries = list(_while_carries(jaxpr.jaxpr))
  assert len(carries) >= 2  # the token loop and the layer loop
  wide = [aval.shape for avals in carries for aval in avals
          if model.config.vocab_size in getattr(aval, "shape", ())]
  assert wide == []


# --- lambda >= 1 takes a token loop without the exit machinery ----------------------------

def _decode_with_plan(model, exit_config, return_trace, never_exit, sampling=SamplingConfig(),
                      skip_rows=None):
  """generate's compiled decode (per-layer weights on the CPU) at exit_config's threshold,
  with the never-exit loop or the early-exit one."""
  plan = generate_module.DecodePlan.checked(model.config, exit_config, sampling, T,
                                            return_trace)
  threshold = np.float32(exit_config.threshold)
  if never_exit:
    plan = plan.for_thresholds(threshold)
    assert plan.never_exits
  params = generate_module._layout_params(model.params, "auto", None)  # pylint: disable=protected-access
  constants = generate_module._constants(plan, params, exit_config, threshold, None)  # pylint: disable=protected-access
  out = generate_module._generate_jit(plan, constants, jnp.asarray(model.ids),  # pylint: disable=protected-access
                                      jnp.asarray(model.mask), jax.random.PRNGKey(3),
                                      skip_rows=skip_rows)
  return jax.tree.map(np.asarray, out)


@pytest.mark.parametrize("exit_config, return_trace, sampling", [
    (ExitConfig(measure="softmax_diff", threshold=1.0), False, SamplingConfig()),
    (ExitConfig(measure="softmax_diff", threshold=1.0, tau=3.0), True, SamplingConfig()),
    (ExitConfig(measure="state_saturation", threshold=1.2), True, SamplingConfig()),
    (ExitConfig(measure="softmax_topk", threshold=1.0, top_k=8), False, SamplingConfig()),
    (ExitConfig(measure="softmax_max", threshold=1.0), False,
     SamplingConfig(temperature=1.0, top_k=5)),
])
def test_never_exit_loop_gives_what_the_early_exit_loop_gives(model, exit_config, return_trace,
                                                              sampling):
  fast = _decode_with_plan(model, exit_config, return_trace, True, sampling)
  slow = _decode_with_plan(model, exit_config, return_trace, False, sampling)
  np.testing.assert_array_equal(fast.tokens, slow.tokens)
  np.testing.assert_array_equal(fast.exit_layers, slow.exit_layers)
  assert (fast.exit_layers[fast.exit_layers > 0] == L).all()
  np.testing.assert_allclose(fast.confidences, slow.confidences, atol=5e-5, rtol=0)
  if return_trace:  # NaN exactly where the early-exit loop computed nothing
    np.testing.assert_allclose(fast.trace, slow.trace, atol=5e-5, rtol=0)


@pytest.mark.parametrize("skipped", [(), (3, 4, 5, 6, 7), (1, 2, 3, 4, 5, 6, 7)])
def test_never_exit_loop_keeps_its_outputs_while_rows_finish(model, skipped):
  """The never-exit loop runs one token loop per row bucket (8 and 2 rows here), moving to
  the smaller one once it holds every row still generating. Skipped rows start finished
  and row 0 emits EOS a few positions in, so these cases run 8, 3 and 1 rows at first (on
  8, 8 and 2) and one fewer after row 0 stops (3 -> 2 moves to the 2-row loop)."""
  skip = np.isin(np.arange(len(LENGTHS)), skipped)
  exit_config = ExitConfig(measure="softmax_diff", threshold=1.0)
  fast = _decode_with_plan(model, exit_config, True, True, skip_rows=skip)
  slow = _decode_with_plan(model, exit_config, True, False, skip_rows=skip)
  generating = (fast.exit_layers > 0).sum(axis=0)  # [T] rows still generating
  assert generating[0] == len(LENGTHS) - len(skipped) and generating[-1] < generating[0]
  np.testing.assert_array_equal(fast.tokens, slow.tokens)
  np.testing.assert_array_equal(fast.exit_layers, slow.exit_layers)
  np.testing.assert_allclose(fast.trace, slow.trace, atol=5e-5, rtol=0)
  assert (fast.tokens[skip] == model.config.pad_token_id).all()


def test_the_never_exit_loop_runs_exactly_when_no_threshold_allows_an_early_exit(
    model, monkeypatch):
  compiled_plans = []
  real = generate_module._generate_jit  # pylint: disable=protected-access
  monkeypatch.setattr(generate_module, "_generate_jit",
                      lambda plan, *args, **kw: compiled_plans.append(plan) or real(plan, *args,
                                                                                     **kw))
  never = lambda: compiled_plans[-1].never_exits
  decode = lambda **exit_fields: generate(model.config, model.params, model.ids, model.mask,
                                          exit=ExitConfig(**exit_fields), max_decode_len=T)
  for fields, expected in [
      (dict(threshold=1.0), True), (dict(threshold=1.5, tau=2.0), True),
      (dict(threshold=0.999), False), (dict(measure="static", static_exit_layer=L), False),
      (dict(threshold=1.0, propagation="full_compute"), False)]:
    decode(**fields)
    assert never() == expected, fields
  per_row = lambda thresholds, skip=None: generate_with_thresholds(
      model.config, model.params, model.ids, model.mask, thresholds=thresholds,
      max_decode_len=T, skip_rows=skip)
  per_row([1.0] * 7 + [1.3])
  assert never()
  per_row([1.0] * 7 + [0.5])
  assert not never()
  per_row([1.0] * 7 + [0.5], np.array([False] * 7 + [True]))  # a skipped row's threshold
  assert never()
