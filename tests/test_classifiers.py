"""Learned exit classifiers: the decoder's confidences equal the teacher-forced logits that
training differentiates through, batch invariance, the attention classifier's store under
state propagation, saving and loading, and bad input.

Tolerances: incremental and teacher-forced decoding compute the model's states in different
orders (float32 differences ~1e-6, amplified by the deliberately sharp random classifiers);
the controls below change confidences by more than 1e-3.
"""

import dataclasses
import functools
import json
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from calm_jax.decoding import classifiers
from calm_jax.decoding import generate as generate_module
from calm_jax.decoding.classifiers import (check_classifier_params, classifier_logits_teacher_forced,
                                          classifier_params_for, confidence_from_logits,
                                          defined_layers, init_classifier, load_classifier,
                                          save_classifier)
from calm_jax.decoding.exit_rule import ExitConfig, exit_point_layers
from calm_jax.decoding.generate import generate, generate_with_thresholds
from calm_jax.decoding.greedy import greedy_decode
from calm_jax.model.config import T5Config
from calm_jax.model.incremental import decoder_step, init_decoder_cache, write_self_kv
from calm_jax.model.t5 import decode_teacher_forced, encode, init_params, shift_right

CONFIG = T5Config(vocab_size=53, d_model=16, d_kv=4, d_ff=24, num_layers=2,
                  num_decoder_layers=5, num_heads=4, feed_forward_proj="gated-gelu",
                  tie_word_embeddings=False, relative_attention_num_buckets=8,
                  relative_attention_max_distance=16)
L = CONFIG.num_decoder_layers
T = 8
B = 4
OPTIONS = {"meta_linear": {}, "meta_mlp": {"hidden_width": 12},
           "three_state_mlp": {"hidden_width": 8}, "lstm": {"num_layers": 2, "width": 8},
           "attention": {"width": 8, "num_heads": 2}}
NAMES = sorted(OPTIONS)


@pytest.fixture(scope="module")
def model():
  params = jax.tree.map(lambda w: w * 1.5, init_params(CONFIG, jax.random.PRNGKey(3)))
  rng = np.random.RandomState(1)
  ids = rng.randint(2, CONFIG.vocab_size, (B, 7)).astype(np.int32)
  mask = np.ones_like(ids)
  ids[1, 4:], mask[1, 4:] = 0, 0
  # An EOS that row 0 emits at position 4, so that some rows stop early.
  free = np.asarray(greedy_decode(CONFIG, params, ids, mask, max_decode_len=T))
  config = CONFIG.replace(eos_token_id=int(free[0, 4]))
  # Scaled up so that the random classifiers' confidences spread over (0, 1).
  heads = {name: jax.tree.map(lambda w: 2.0 * w, init_classifier(
      name, CONFIG, jax.random.PRNGKey(7), **OPTIONS[name])) for name in NAMES}
  return types.SimpleNamespace(config=config, params=params, ids=ids, mask=mask, heads=heads)


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
    np.testing.assert_allclose(alone.confidences[0], both.confidences[row], atol=1e-5)
    np.testing.assert_allclose(alone.trace[0], both.trace[row], atol=1e-5)


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


@pytest.mark.parametrize("position", [0, 3, 7])
def test_attention_step_equals_attention_with_the_entry_written(position):
  """The decoder's copy-free step (own entry attended beside the store) gives what the
  module's plain attention gives over a store holding that entry at `position`."""
  width, heads, d, T, rows = 16, 4, 12, 8, 3
  module = classifiers.PositionAttention(width=width, num_heads=heads)
  params = module.init(jax.random.PRNGKey(0), jnp.ones((1, T, d)),
                       method=classifiers.PositionAttention.init_all)["params"]
  keys_rng, values_rng, state_rng = jax.random.split(jax.random.PRNGKey(1), 3)
  keys = jax.random.normal(keys_rng, (rows, T, heads, width // heads))
  values = jax.random.normal(values_rng, (rows, T, heads, width // heads))
  hidden = jax.random.normal(state_rng, (rows, d))
  apply = functools.partial(module.apply, {"params": params})
  embedded = apply(hidden[:, None], method=classifiers.PositionAttention.embed)
  own_k, own_v = apply(embedded, method=classifiers.PositionAttention.keys_values)
  written_k = keys.at[:, position].set(own_k[:, 0])
  written_v = values.at[:, position].set(own_v[:, 0])
  visible = jnp.broadcast_to(jnp.arange(T) <= position, (rows, 1, T))
  expected = apply(embedded, written_k, written_v, visible)[:, 0]
  stored = lambda x: jnp.swapaxes(x, 1, 2)  # the decoder's store layout [R, H, T, dh]
  got = classifiers.attention_step_logits(params, hidden, stored(keys), stored(values),
                                          jnp.int32(position))
  np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-5, rtol=1e-5)
  # Entries at `position` and later in the store are never read.
  noisy = classifiers.attention_step_logits(params, hidden,
                                            stored(keys.at[:, position:].set(9.0)),
                                            stored(values.at[:, position:].set(-9.0)),
                                            jnp.int32(position))
  np.testing.assert_array_equal(np.asarray(noisy), np.asarray(got))


@pytest.mark.parametrize("name", NAMES)
def test_teacher_forced_logits_are_jittable_and_differentiable(model, name):
  states = jax.random.normal(jax.random.PRNGKey(0), (L, 2, 3, CONFIG.d_model))
  mask = np.array([[1, 1, 1], [1, 1, 0]], np.int32)
  points = (2, 3, 5)

  def loss(params, states):
    logits = classifier_logits_teacher_forced(name, params, states, mask, points)
    weight = jnp.asarray(defined_layers(name, L, points))[:, None, None]  # [L, 1, 1]
    return jnp.sum(weight * jax.nn.log_softmax(logits)[..., 1])

  value, (grads, state_grads) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(
      model.heads[name], states)
  assert np.isfinite(value)
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  assert all(np.abs(g).max() > 0 for g in jax.tree.leaves(grads)), "a parameter gets no gradient"
  assert np.abs(state_grads).max() > 0


def test_defined_layers():
  assert defined_layers("meta_linear", 5).tolist() == [True] * 5
  assert defined_layers("lstm", 5, (2, 4)).tolist() == [False, True, False, True, True]
  assert defined_layers("three_state_mlp", 5).tolist() == [False, False, True, True, True]
  assert defined_layers("three_state_mlp", 5, (2, 4)).tolist() == [False] * 4 + [True]
  with pytest.raises(ValueError, match=r"exit_points must lie in \[1, 5\], got \[0, 2\]"):
    defined_layers("lstm", 5, (0, 2))


def test_options_are_read_off_parameter_shapes():
  for name in NAMES:
    params = init_classifier(name, CONFIG, jax.random.PRNGKey(0), **OPTIONS[name])
    expected = dict(OPTIONS[name])
    assert classifiers.classifier_options(name, params) == expected
    assert check_classifier_params(name, params, CONFIG.d_model) == expected
  defaults = init_classifier("lstm", CONFIG, jax.random.PRNGKey(0))
  assert classifiers.classifier_options("lstm", defaults) == {"num_layers": 2, "width": 64}
  mlp = init_classifier("meta_mlp", CONFIG, jax.random.PRNGKey(0))
  assert classifiers.classifier_options("meta_mlp", mlp) == {"hidden_width": CONFIG.d_model}
  three = init_classifier("lstm", CONFIG, jax.random.PRNGKey(0), num_layers=3, width=4)
  assert classifiers.classifier_options("lstm", three) == {"num_layers": 3, "width": 4}


def test_new_parameters_of_the_same_shapes_do_not_recompile(model):
  exit_config = ExitConfig(measure="meta_mlp", threshold=0.6)
  run = lambda head: generate(model.config, model.params, model.ids, model.mask,
                              exit=exit_config, max_decode_len=T, classifier_params=head)
  first = run(model.heads["meta_mlp"])
  before = generate_module._generate_jit._cache_size()
  other = run(jax.tree.map(lambda w: -w, model.heads["meta_mlp"]))
  assert generate_module._generate_jit._cache_size() == before
  assert np.any(np.asarray(first.confidences) != np.asarray(other.confidences))


def test_save_and_load_round_trip(model, tmp_path):
  for name in NAMES:
    directory = str(tmp_path / name)
    assert save_classifier(directory, name, model.heads[name]) == directory
    assert sorted(os.listdir(directory)) == ["classifier.json", "params.msgpack"]
    loaded = load_classifier(directory, CONFIG, expected_name=name)
    assert (loaded.name, loaded.options, loaded.input_width) == (name, OPTIONS[name], 16)
    jax.tree.map(np.testing.assert_array_equal, loaded.params,
                 jax.tree.map(np.asarray, model.heads[name]))
  # From a run config: ExitConfig.classifier_path; None for measures that are not learned.
  exit_config = ExitConfig(measure="lstm", threshold=0.5, classifier_path=str(tmp_path / "lstm"))
  params = classifier_params_for(exit_config, CONFIG)
  out = generate(model.config, model.params, model.ids, model.mask, exit=exit_config,
                 max_decode_len=T, classifier_params=params)
  again = generate(model.config, model.params, model.ids, model.mask, exit=exit_config,
                   max_decode_len=T, classifier_params=model.heads["lstm"])
  np.testing.assert_array_equal(np.asarray(out.exit_layers), np.asarray(again.exit_layers))
  assert classifier_params_for(ExitConfig(), CONFIG) is None


def test_loading_bad_files_is_a_clear_error(model, tmp_path):
  directory = str(tmp_path / "head")
  save_classifier(directory, "meta_mlp", model.heads["meta_mlp"])
  info_path = os.path.join(directory, "classifier.json")
  info = json.load(open(info_path, encoding="utf-8"))

  def rewrite(**changes):
    with open(info_path, "w", encoding="utf-8") as f:
      json.dump({**info, **changes}, f)

  with pytest.raises(ValueError, match="no saved exit classifier at '.*missing': "
                     "classifier.json is missing"):
    load_classifier(str(tmp_path / "missing"))
  with pytest.raises(ValueError, match="is 'meta_mlp', but the measure is 'lstm'"):
    load_classifier(directory, expected_name="lstm")
  with pytest.raises(ValueError, match="reads states of width 16, but the model's d_model is 32"):
    load_classifier(directory, CONFIG.replace(d_model=32))
  rewrite(name="bogus")
  with pytest.raises(ValueError, match="unknown exit classifier 'bogus'; registered: attention, "
                     "lstm, meta_linear, meta_mlp, three_state_mlp"):
    load_classifier(directory)
  rewrite(options={"hidden_width": 3})
  with pytest.raises(ValueError, match=r"has options \{'hidden_width': 12\}, but classifier.json "
                     r"records \{'hidden_width': 3\}"):
    load_classifier(directory)
  rewrite(params_sha256="0" * 64)
  with pytest.raises(ValueError, match="does not match the checksum"):
    load_classifier(directory)
  rewrite()
  os.remove(os.path.join(directory, "params.msgpack"))
  with pytest.raises(ValueError, match="params.msgpack is missing"):
    load_classifier(directory)
  with pytest.raises(ValueError, match="measure 'lstm' is a learned exit classifier: set "
                     "exit.classifier_path"):
    classifier_params_for(ExitConfig(measure="lstm"), CONFIG)


def test_bad_classifiers_and_options_are_rejected(model):
  init = functools.partial(init_classifier, model_config=CONFIG, rng=jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="unknown exit classifier 'mlp'"):
    init("mlp")
  with pytest.raises(ValueError, match=r"unknown option\(s\) \['heads'\] for exit classifier "
                     "'attention'; allowed: width, num_heads"):
    init("attention", heads=2)
  with pytest.raises(ValueError, match=r"unknown option\(s\) \['width'\] .*allowed: none"):
    init("meta_linear", width=2)
  with pytest.raises(ValueError, match="option num_layers=0 must be a positive integer"):
    init("lstm", num_layers=0)
  with pytest.raises(ValueError, match="width=6 must be a multiple of num_heads=4"):
    init("attention", width=6)
  head = model.heads["meta_mlp"]
  wrong_width = jax.tree.map(lambda w: w, head)
  wrong_width["out"]["kernel"] = np.zeros((5, 2), np.float32)
  with pytest.raises(ValueError, match=r"parameter \['out'\]\['kernel'\] has shape \(5, 2\), "
                     r"expected \(12, 2\)"):
    check_classifier_params("meta_mlp", wrong_width, CONFIG.d_model)
  with pytest.raises(ValueError, match="parameters do not look like an exit classifier 'lstm'"):
    check_classifier_params("lstm", head, CONFIG.d_model)
  with pytest.raises(ValueError, match="'meta_linear' parameters have an unexpected entry "
                     r"\['hidden'\]"):
    check_classifier_params("meta_linear", head, CONFIG.d_model)


@pytest.mark.parametrize("measure, head, message", [
    ("lstm", None, "measure 'lstm' is a learned exit classifier and needs its parameters"),
    ("meta_mlp", "lstm", "parameters do not look like an exit classifier 'meta_mlp'"),
    ("meta_linear", "meta_linear32", r"parameter \['norm'\]\['scale'\] has shape \(32,\), "
     r"expected \(16,\)"),
    ("softmax_diff", "lstm", "classifier_params given, but measure 'softmax_diff' is not a "
     "learned exit classifier"),
])
def test_decoding_with_bad_classifier_params_fails_before_compiling(model, measure, head,
                                                                    message):
  heads = dict(model.heads, meta_linear32=init_classifier(
      "meta_linear", CONFIG.replace(d_model=32), jax.random.PRNGKey(0)))
  params = None if head is None else heads[head]
  before = generate_module._generate_jit._cache_size()
  with pytest.raises(ValueError, match=message):
    generate(model.config, model.params, model.ids, model.mask,
             exit=ExitConfig(measure=measure, threshold=0.5), max_decode_len=T,
             classifier_params=params)
  with pytest.raises(ValueError, match=message):
    generate_with_thresholds(model.config, model.params, model.ids, model.mask,
                             thresholds=[0.5] * B, exit=ExitConfig(measure=measure),
                             max_decode_len=T, classifier_params=params)
  assert generate_module._generate_jit._cache_size() == before


def test_a_saved_classifier_is_used_from_the_run_config(tmp_path):
  """The demo's decode mode with measure = a learned classifier and its classifier_path."""
  import sys  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from calm_jax import run  # pylint: disable=import-outside-toplevel
  from calm_jax.model.source import load_model  # pylint: disable=import-outside-toplevel
  from configs import demo  # pylint: disable=import-outside-toplevel
  config = demo.get_config()
  config.mode = "decode"
  config.data.num_examples, config.decode.max_decode_len = 2, 4
  config.model.num_decoder_layers = 3
  config.exit.measure, config.exit.threshold = "meta_linear", 0.5
  model_config, _ = load_model(config.model, config.seed)
  head = init_classifier("meta_linear", model_config, jax.random.PRNGKey(0))
  config.exit.classifier_path = save_classifier(str(tmp_path / "head"), "meta_linear", head)
  path = run.run(config, str(tmp_path / "work"))
  records = [json.loads(line) for line in open(path, encoding="utf-8")]
  assert len(records) == 2 and all(r["exit_layers"] for r in records)
  config.exit.classifier_path = str(tmp_path / "nothing")
  with pytest.raises(ValueError, match="no saved exit classifier at .*nothing"):
    run.run(config, str(tmp_path / "work"))
