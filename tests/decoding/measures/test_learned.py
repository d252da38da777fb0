"""Learned exit classifiers as confidence measures in the decoder: the decoder's
confidences equal the teacher-forced logits that training differentiates through, batch
invariance, the attention classifier's store under state propagation, new parameters
without recompiling, and which measure class serves which classifier.

Tolerances: incremental and teacher-forced decoding compute the model's states in different
orders (float32 differences ~1e-6, amplified by the deliberately sharp random classifiers);
the controls below change confidences by more than 1e-3.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from calm_jax.decoding import generate as generate_module
from calm_jax.decoding.exit_rule import ExitConfig, exit_point_layers
from calm_jax.decoding.generate import generate, generate_with_thresholds
from calm_jax.decoding.measures import MeasureContext, Needs, build_measure
from calm_jax.decoding.measures.learned import (AttentionClassifier, AttentionMemory,
                                                AttentionStore, LSTMClassifier,
                                                StateClassifier, ThreeStateClassifier)
from calm_jax.exit_classifiers.registry import confidence_from_logits
from calm_jax.exit_classifiers.teacher_forced import classifier_logits_teacher_forced
from calm_jax.model.incremental import decoder_step, init_decoder_cache, write_self_kv
from calm_jax.model.t5 import decode_teacher_forced, encode, shift_right

L, T, B = 5, 8, 4  # classifier_model's decoder layers, output positions and batch
NAMES = ["attention", "lstm", "meta_linear", "meta_mlp", "three_state_mlp"]


@pytest.fixture(scope="module")
def model(classifier_model):
  """conftest's classifier_model: the tiny T5, its batch and one random head per
  classifier."""
  return classifier_model


def _decode(model, exit_config, **kwargs):
  out = generate(model.config, model.params, model.ids, model.mask, exit=exit_config,
                 max_decode_len=T, return_trace=True,
                 classifier_params=model.heads[exit_config.measure], **kwargs)
  return jax.tree.map(np.asarray, out)


def _teacher_forced_confidences(model, name, tokens, generated, states=None, exit_points=None):
  """softmax(teacher-forced logits)[..., 1] as [B, T, L], on the decoded tokens."""
  if states is None:
    encoded = encode(model.config, model.params, model.ids, model.mask)
    states = decode_teacher_forced(model.config, model.params,
                                   shift_right(model.config, jnp.asarray(tokens)), encoded,
                                   model.mask)  # [L, B, T, d]
  logits = classifier_logits_teacher_forced(name, model.heads[name], states,
                                            generated.astype(np.int32), exit_points)
  assert logits.shape == (L, B, T, 2) and logits.dtype == jnp.float32
  return np.moveaxis(np.asarray(confidence_from_logits(logits)), 0, -1)


@pytest.mark.parametrize("name, exit_grid", [(name, (1, 1)) for name in NAMES] + [
    ("three_state_mlp", (2, 2)), ("lstm", (2, 2))])
def test_decoder_confidences_equal_teacher_forced_logits(model, name, exit_grid):
  """Never exit, every layer computed: the trace at every exit point and generated position
  is softmax of the teacher-forced logits of the decoded sequence."""
  exit_config = ExitConfig(measure=name, threshold=1.0, propagation="full_compute",
                           min_exit_layer=exit_grid[0], exit_interval=exit_grid[1])
  out = _decode(model, exit_config)
  generated = out.exit_layers > 0
  assert (~generated).any() and generated[:, -1].any(), "EOS must stop some rows, not all"
  points = exit_point_layers(exit_config, L)
  expected = _teacher_forced_confidences(model, name, out.tokens, generated, exit_points=points)
  on_grid = np.isin(np.arange(1, L + 1), points)  # [L]
  assert np.isfinite(out.trace[generated][:, on_grid]).all()
  assert np.isnan(out.trace[generated][:, ~on_grid]).all()
  np.testing.assert_allclose(out.trace[generated][:, on_grid],
                             expected[generated][:, on_grid], atol=5e-5, rtol=0)
  values = out.trace[generated][:, on_grid]
  assert np.unique(values.round(4)).size > 10, "confidences do not vary: checks little"
  if name == "three_state_mlp":  # nothing before the third exit point, real values after
    has_three = np.cumsum(on_grid)[on_grid] >= 3
    np.testing.assert_array_equal(values[:, ~has_three], 0.0)
    assert (values[:, has_three] > 0).all()


@pytest.mark.parametrize("name", NAMES)
def test_batch_with_mixed_exits_equals_each_example_alone(model, name):
  never = _decode(model, ExitConfig(measure=name, threshold=1.0))
  values = never.trace[never.exit_layers > 0][:, :-1]
  thresholds = np.quantile(values, [0.3, 0.5, 0.7]).tolist() + [1.0]  # row 3 never exits
  exit_config = ExitConfig(measure=name)
  both = jax.tree.map(np.asarray, generate_with_thresholds(
      model.config, model.params, model.ids, model.mask, thresholds=thresholds,
      exit=exit_config, max_decode_len=T, return_trace=True,
      classifier_params=model.heads[name]))
  generated = both.exit_layers > 0
  assert any(len(np.unique(both.exit_layers[generated[:, t], t])) > 1 for t in range(T)), (
      "no position with mixed exits")
  assert ((both.exit_layers > 0) & (both.exit_layers < L)).any()
  for row, threshold in enumerate(thresholds):
    alone = jax.tree.map(np.asarray, generate(
        model.config, model.params, model.ids[row:row + 1], model.mask[row:row + 1],
        exit=dataclasses.replace(exit_config, threshold=float(threshold)), max_decode_len=T,
        return_trace=True, classifier_params=model.heads[name]))
    np.testing.assert_array_equal(alone.tokens[0], both.tokens[row], err_msg=f"row {row}")
    np.testing.assert_array_equal(alone.exit_layers[0], both.exit_layers[row],
                                  err_msg=f"row {row}")
    # One row and four rows take differently blocked matrix-product kernels on per-layer
    # weights: equal to float32 rounding, which the attention classifier's softmax widens.
    np.testing.assert_allclose(alone.confidences[0], both.confidences[row], rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(alone.trace[0], both.trace[row], rtol=1e-4, atol=1e-5)


def _replayed_states(model, tokens, exit_layers, propagate):
  """Every layer's state [L, B, T, d] of decoded tokens, with the model's K/V above each
  token's exit layer from its exit state; with `propagate`, the states above the exit layer
  are the exit state too (what the attention classifier's store holds)."""
  config, params = model.config, model.params

  @jax.jit
  def step(cache, token, position, exit_layer):
    states, cache = decoder_step(config, params, cache, token, position)  # [L, B, d]
    exit_state = jnp.take_along_axis(states, (exit_layer - 1)[None, :, None], axis=0)[0]
    above = (jnp.arange(L)[:, None] + 1) > exit_layer[None]  # [L, B]
    for layer in range(L):
      written = write_self_kv(config, params, cache, jnp.int32(layer), exit_state[:, None],
                              position)
      skipped = above[layer][None, :, None, None, None]
      cache = cache.replace(self_k=jnp.where(skipped, written.self_k, cache.self_k),
                            self_v=jnp.where(skipped, written.self_v, cache.self_v))
    if propagate:
      states = jnp.where(above[..., None], exit_state[None], states)
    return states, cache

  cache = init_decoder_cache(config, params, encode(config, params, model.ids, model.mask),
                             model.mask, T)
  token = jnp.full((B,), config.decoder_start_token_id, jnp.int32)
  exits = np.where(exit_layers > 0, exit_layers, L)  # rows after EOS: anything valid
  states = []
  for position in range(T):
    layer_states, cache = step(cache, token, jnp.int32(position),
                               jnp.asarray(exits[:, position], jnp.int32))
    states.append(layer_states)
    token = jnp.asarray(tokens[:, position], jnp.int32)
  return jnp.stack(states, axis=2)


def test_attention_store_holds_exit_states_above_the_exit_layer(model):
  """With early exits and state propagation, the attention classifier at layer i sees each
  earlier position's state at layer min(i, its exit layer)."""
  never = _decode(model, ExitConfig(measure="attention", threshold=1.0))
  lam = float(np.quantile(never.trace[never.exit_layers > 0][:, :-1], 0.5))
  out = _decode(model, ExitConfig(measure="attention", threshold=lam))
  generated = out.exit_layers > 0
  assert ((out.exit_layers > 0) & (out.exit_layers < L)).mean() > 0.3
  computed = np.isfinite(out.trace)
  assert computed[generated].any(axis=-1).all()
  expected = _teacher_forced_confidences(
      model, "attention", out.tokens, generated,
      states=_replayed_states(model, out.tokens, out.exit_layers, propagate=True))
  np.testing.assert_allclose(out.trace[computed], expected[computed], atol=5e-5, rtol=0)
  # Control: true states above the exit layers instead of the exit states are detected.
  unpropagated = _teacher_forced_confidences(
      model, "attention", out.tokens, generated,
      states=_replayed_states(model, out.tokens, out.exit_layers, propagate=False))
  assert np.abs(unpropagated[computed] - out.trace[computed]).max() > 1e-3


def test_new_parameters_of_the_same_shapes_do_not_recompile(model):
  exit_config = ExitConfig(measure="meta_mlp", threshold=0.6)
  run = lambda head: generate(model.config, model.params, model.ids, model.mask,
                              exit=exit_config, max_decode_len=T, classifier_params=head)
  first = run(model.heads["meta_mlp"])
  before = generate_module._generate_jit._cache_size()
  other = run(jax.tree.map(lambda w: -w, model.heads["meta_mlp"]))
  assert generate_module._generate_jit._cache_size() == before
  assert np.any(np.asarray(first.confidences) != np.asarray(other.confidences))


def test_each_classifier_is_served_by_the_measure_class_of_what_it_looks_at(model):
  classes = {"meta_linear": StateClassifier, "meta_mlp": StateClassifier,
             "three_state_mlp": ThreeStateClassifier, "lstm": LSTMClassifier,
             "attention": AttentionClassifier}
  for name in NAMES:
    measure = build_measure(ExitConfig(measure=name))
    assert type(measure) is classes[name]  # pylint: disable=unidiomatic-typecheck
    assert measure.name == name
    assert measure.needs == Needs()
    assert (measure.store is not None) == (name == "attention")


def test_attention_store_init_empty_entries_and_write(model):
  """The store is [L, B, H, T, dh] zeros; a new position's entries [L, B, H, dh] zeros; a
  write fills that position of every layer and nothing else."""
  context = MeasureContext(params=model.params, classifier_params=model.heads["attention"],
                           model_config=model.config)
  store = build_measure(ExitConfig(measure="attention")).store
  assert isinstance(store, AttentionStore)
  memory = store.init(context, B, T)
  assert isinstance(memory, AttentionMemory)
  assert memory.keys.shape == memory.values.shape == (L, B, 2, T, 4)
  assert not np.asarray(memory.keys).any() and not np.asarray(memory.values).any()
  entries = store.empty_entries(context, jnp.zeros((B, model.config.d_model)))
  assert entries.keys.shape == entries.values.shape == (L, B, 2, 4)
  assert not np.asarray(entries.keys).any()
  ones = jax.tree.map(lambda x: x + 1.0, entries)
  written = jax.tree.map(np.asarray, store.write(memory, ones, jnp.int32(3)))
  for leaf in (written.keys, written.values):
    assert (leaf[:, :, :, 3] == 1.0).all() and not np.delete(leaf, 3, axis=3).any()
  # An entry is the keys and values of the states it is given.
  hidden = jax.random.normal(jax.random.PRNGKey(0), (B, model.config.d_model))
  entry = store.entry(context, hidden)
  assert entry.keys.shape == (B, 2, 4) and np.abs(np.asarray(entry.keys)).max() > 0
