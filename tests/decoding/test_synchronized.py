"""FREE's synchronized decoding (calm_jax.decoding.synchronized) through `generate`: never
exiting is the full model; verification reproduces full greedy decoding at any threshold;
a batch decodes as its examples alone; the rollback rule against a reference that replays
the rule on the teacher-forced forward; bad settings fail before compiling.

Every compiled shape is shared: batches of 8 go through `generate_with_thresholds` (one
threshold per row), single examples through `generate`.
"""

import dataclasses
import functools

import jax
import numpy as np
import pytest

import calm_jax
from calm_jax.decoding import generate as generate_module
from calm_jax.decoding.exit_rule import ExitConfig
from calm_jax.decoding.generate import generate, generate_with_thresholds
from calm_jax.decoding.sampling import SamplingConfig
from calm_jax.decoding.synchronized import UNCHECKED
from calm_jax.decoding.threshold_grid import decode_threshold_grid
from calm_jax.model.config import T5Config
from calm_jax.model.t5 import shift_right

BASE = T5Config(vocab_size=53, d_model=16, d_kv=4, d_ff=24, num_layers=2,
                num_decoder_layers=4, num_heads=4, feed_forward_proj="gated-gelu",
                tie_word_embeddings=False, relative_attention_num_buckets=8,
                relative_attention_max_distance=16)
L, SHALLOW, T = 4, 1, 10
SYNC = ExitConfig(measure="softmax_diff", decoding="synchronized", shallow_exit_layer=SHALLOW,
                  max_pending=3)
VERIFY = dataclasses.replace(SYNC, verify=True)
# One threshold per row: 0 exits every token at layer 1, 1 never exits; the head's scale
# (x3) spreads softmax_diff at layer 1 over roughly 0-0.5.
ROW_THRESHOLDS = [0.0, 0.05, 0.3, 1.0, 0.1, 0.0, 0.2, 0.05]


@pytest.fixture(scope="module")
def model(quick_random_params, eos_batch):
  """(config, params, ids [8, 7], mask, greedy [8, T]); row 0's greedy output emits the EOS
  at position 4, so rows end at different positions."""
  params = quick_random_params(BASE, seed=3, head_scale=3.0)
  return eos_batch(BASE, params, decode_len=T, batch=8, eos_position=4)


@functools.lru_cache(maxsize=None)
def _decoded(model_id, exit_config, thresholds):
  """Memoised batch decode (one compile per ExitConfig shape)."""
  config, params, ids, mask, _ = _MODELS[model_id]
  return jax.tree.map(np.asarray, generate_with_thresholds(
      config, params, ids, mask, thresholds=list(thresholds), exit=exit_config,
      max_decode_len=T))


_MODELS = {}


def _batch(model, exit_config, thresholds=tuple(ROW_THRESHOLDS)):
  _MODELS[id(model)] = model
  return _decoded(id(model), exit_config, tuple(thresholds))


def _alone(model, exit_config, row, threshold):
  config, params, ids, mask, _ = model
  return jax.tree.map(np.asarray, generate(
      config, params, ids[row:row + 1], mask[row:row + 1],
      exit=dataclasses.replace(exit_config, threshold=threshold), max_decode_len=T))


def _generated(tokens, eos):
  """[B, T] bool: positions that hold a generated token (up to and including EOS)."""
  hit = np.asarray(tokens) == eos
  return (np.cumsum(hit, axis=1) - hit) == 0


def test_never_exiting_is_the_full_model(model):
  config, _, _, _, greedy = model
  out = _batch(model, SYNC, (1.0,) * 8)
  np.testing.assert_array_equal(out.tokens, greedy)
  generated = _generated(greedy, config.eos_token_id)
  assert not generated.all(), "no row stopped early: EOS handling is untested"
  np.testing.assert_array_equal(out.exit_layers, np.where(generated, L, 0))
  np.testing.assert_array_equal(out.deep_passes, generated.sum(axis=1))  # one per token
  np.testing.assert_array_equal(out.shallow_steps, generated.sum(axis=1))
  assert np.all(out.deep_agreed == UNCHECKED)


@pytest.mark.parametrize("thresholds", [ROW_THRESHOLDS, [0.0] * 8, [0.3] * 8])
def test_verified_decoding_is_full_greedy_at_any_threshold(model, thresholds):
  config, _, _, _, greedy = model
  out = _batch(model, VERIFY, tuple(thresholds))
  np.testing.assert_array_equal(out.tokens, greedy)
  generated = _generated(greedy, config.eos_token_id)
  np.testing.assert_array_equal(out.exit_layers > 0, generated)
  if thresholds[0] == 0.0:  # many tokens leave at layer 1, and some are rejected
    assert (out.exit_layers == SHALLOW).sum() >= 0.3 * generated.sum()
    assert (out.deep_agreed == 0).sum() >= 3
    assert out.deep_passes.sum() < 0.8 * generated.sum()  # passes span several tokens
  # A token is from layer 1 exactly where the deep layers agreed with it.
  np.testing.assert_array_equal(out.exit_layers == SHALLOW, out.deep_agreed == 1)


@pytest.mark.parametrize("exit_config", [SYNC, VERIFY], ids=["plain", "verified"])
def test_batch_equals_each_example_alone(model, exit_config):
  batch = _batch(model, exit_config)
  pending_runs = set()
  for row, threshold in enumerate(ROW_THRESHOLDS):
    alone = _alone(model, exit_config, row, threshold)
    for field in ("tokens", "exit_layers", "deep_passes", "deep_agreed"):
      np.testing.assert_array_equal(getattr(alone, field)[0], getattr(batch, field)[row],
                                    err_msg=f"{field}, row {row}")
    np.testing.assert_allclose(alone.confidences[0], batch.confidences[row], atol=1e-6)
    pending_runs.add(int(batch.deep_passes[row]))
  assert len(pending_runs) >= 3, "rows did not differ in their deep passes"


@functools.lru_cache(maxsize=None)
def _log_probs_fn(model_id):
  """(row, tokens [1, T]) -> layer-1 and layer-L log-probabilities [2, T, V] of the
  teacher-forced forward on those tokens (compiled once per model)."""
  config, params, ids, mask, _ = _MODELS[model_id]

  @jax.jit
  def log_probs(row, tokens):
    take = lambda array: jax.lax.dynamic_slice_in_dim(array, row, 1)
    states = calm_jax.forward(config, params, take(ids), shift_right(config, tokens),
                              take(mask)).hidden_states
    return jax.nn.log_softmax(calm_jax.exit_logits(config, params,
                                                   states[[SHALLOW - 1, -1], 0]), axis=-1)
  return log_probs


def _reference(model, row, threshold, rollback):
  """Synchronized decoding of one example replayed on the teacher-forced forward: every
  layer's state at every position is the full model's on the tokens so far, which is what
  the decoder's real deep K/V give. Returns (tokens, exit layers, deep passes, shallow
  steps)."""
  _MODELS[id(model)] = model
  config, log_probs = model[0], _log_probs_fn(id(model))

  def predictions(tokens):  # [2, T, V]
    return np.asarray(log_probs(row, np.asarray([tokens + [0] * (T - len(tokens))], np.int32)))

  out, layers, pending, passes, steps = [], [], 0, 0, 0
  while len(out) < T and (not out or out[-1] != config.eos_token_id):
    t, steps = len(out), steps + 1
    shallow, _ = predictions(out)[:, t]
    top = np.sort(np.exp(shallow))
    exits = threshold < 1 and top[-1] - top[-2] >= threshold
    token, first_pending = int(np.argmax(shallow)), t - pending
    if exits:
      out, layers, pending = out + [token], layers + [SHALLOW], pending + 1
      if pending <= SYNC.max_pending and token != config.eos_token_id and t < T - 1:
        continue
    passes += 1
    deep = predictions(out)[1]  # position t's prediction reads only tokens before t
    for position in range(first_pending, len(out)):
      emitted = out[position]
      if int(np.argmax(deep[position])) != emitted and -deep[position, emitted] > rollback:
        out = out[:position] + [int(np.argmax(deep[position]))]
        layers = layers[:position] + [L]
        break
    else:
      if not exits:
        out, layers = out + [int(np.argmax(deep[t]))], layers + [L]
    pending = 0
  return out, layers, passes, steps


@pytest.mark.parametrize("rollback", [float("inf"), 3.0])
def test_rollback_rule_against_a_teacher_forced_replay(model, rollback):
  exit_config = dataclasses.replace(SYNC, rollback_threshold=rollback)
  out = _batch(model, exit_config)
  replaced = 0
  for row, threshold in enumerate(ROW_THRESHOLDS):
    tokens, layers, passes, steps = _reference(model, row, threshold, rollback)
    count = len(tokens)
    np.testing.assert_array_equal(out.tokens[row, :count], tokens, err_msg=f"row {row}")
    np.testing.assert_array_equal(out.exit_layers[row, :count], layers, err_msg=f"row {row}")
    assert np.all(out.exit_layers[row, count:] == 0)
    assert out.deep_passes[row] == passes, f"row {row}"
    assert out.shallow_steps[row] == steps, f"row {row}"
  disagreed = out.deep_agreed == 0
  replaced = (disagreed & (out.exit_layers == L)).sum()
  kept = (disagreed & (out.exit_layers == SHALLOW)).sum()
  # Without a rollback every disagreement is kept; at 3 nats some cost more, some less.
  assert kept > 0 and (replaced > 0) == (rollback == 3.0)


def test_threshold_grid_decodes_every_pair_as_generate_would(model):
  """decode_threshold_grid under synchronized decoding (no trace to share decodes): each
  grid point is the batch decoded at that threshold, the full output the lambda = 1 one."""
  config, params, ids, mask, greedy = model
  thresholds = (1.0, 0.3, 0.0)
  grid = decode_threshold_grid(config, params, ids, mask, thresholds=thresholds, exit=SYNC,
                               max_decode_len=T, batch_size=8)
  assert grid.decoded_pairs == 4 * 8  # three thresholds and the full model's
  for k, threshold in enumerate(thresholds):
    out = _batch(model, SYNC, (threshold,) * 8)
    for field in ("tokens", "exit_layers", "confidences"):
      np.testing.assert_array_equal(getattr(grid, field)[k], getattr(out, field), err_msg=field)
  np.testing.assert_array_equal(grid.full_tokens, greedy)


@pytest.mark.parametrize("change, message", [
    (dict(shallow_exit_layer=L), r"shallow_exit_layer=4 must be in \[1, 3\]"),
    (dict(shallow_exit_layer=0), r"shallow_exit_layer=0 must be in \[1, 3\]"),
    (dict(max_pending=0), "max_pending must be an integer >= 1, got 0"),
    (dict(rollback_threshold=-0.5), "rollback_threshold must be >= 0"),
    (dict(verify=True, rollback_threshold=1.0), "verify=True replaces every disagreement"),
    (dict(decoding="parallel"), "decoding='parallel'; allowed: per_token, synchronized"),
    (dict(adaptive_threshold="beta"), "adaptive_threshold='beta'; allowed: none, beta_mixture"),
    (dict(decoding="per_token", verify=True), "act on synchronized decoding only"),
    (dict(measure="softmax_topk", top_k=8), "measure='softmax_topk' cannot decide"),
    (dict(measure="oracle"), "measure='oracle' cannot decide"),
])
def test_bad_synchronized_settings_fail_before_compiling(model, monkeypatch, change, message):
  config, params, ids, mask, _ = model
  monkeypatch.setattr(generate_module, "_generate_jit", None)  # compiling would crash
  with pytest.raises(ValueError, match=message):
    generate(config, params, ids, mask, exit=dataclasses.replace(SYNC, **change),
             max_decode_len=T)


def test_verify_refuses_sampling_and_the_trace(model, monkeypatch):
  config, params, ids, mask, _ = model
  monkeypatch.setattr(generate_module, "_generate_jit", None)
  with pytest.raises(ValueError, match="verify=True reproduces greedy decoding"):
    generate(config, params, ids, mask, exit=VERIFY, max_decode_len=T,
             sampling=SamplingConfig(temperature=0.7), rng=jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="no per-layer trace"):
    generate(config, params, ids, mask, exit=SYNC, max_decode_len=T, return_trace=True)
