"""softmax_topk and softmax_pruned: the pruning formulas and the measure against NumPy
references, the top-ranked tokens kept (not the lowest ids), the emitted token mapped back
to its vocabulary id, lambda >= 1 as the full model, batch invariance, bad options."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from calm_jax.decoding.exit_rule import ExitConfig
from calm_jax.decoding.generate import generate
from calm_jax.decoding.measures import (LayerInputs, MeasureContext, Needs, build_measure,
                                        checked_measure)
from calm_jax.decoding.measures import pruned
from calm_jax.decoding.measures.pruned import PrunedSoftmax, SoftmaxPruned
from calm_jax.decoding.sampling import SamplingConfig
from calm_jax.model.config import T5Config
from calm_jax.model.t5 import decode_teacher_forced, encode, init_params, shift_right

CONFIG = T5Config(vocab_size=53, d_model=16, d_kv=4, d_ff=24, num_layers=2,
                  num_decoder_layers=5, num_heads=4, feed_forward_proj="gated-gelu",
                  tie_word_embeddings=False, scale_decoder_outputs=False,
                  relative_attention_num_buckets=8, relative_attention_max_distance=16)
L, V = CONFIG.num_decoder_layers, CONFIG.vocab_size
T, B = 8, 4
MEASURES = {
    "topk": ExitConfig(measure="softmax_topk", top_k=8),
    "decaying": ExitConfig(measure="softmax_pruned", pruning="decaying", top_k=20, min_top_k=3),
    "adaptive": ExitConfig(measure="softmax_pruned", pruning="adaptive", top_k=40, min_top_k=3),
}


# --- NumPy references -----------------------------------------------------------------------

def _np_logits(config, params, hidden):
  """The exit head in float64: hidden [..., d] -> [..., V]."""
  x = np.asarray(hidden, np.float64)
  scale = np.asarray(params["decoder"]["final_norm"]["scale"], np.float64)
  normed = x / np.sqrt(np.mean(x * x, -1, keepdims=True) + config.layer_norm_epsilon) * scale
  if config.scale_decoder_outputs:
    normed = normed * config.d_model ** -0.5
  kernel = (params["shared"]["embedding"].T if config.tie_word_embeddings
            else params["lm_head"]["kernel"])
  return normed @ np.asarray(kernel, np.float64)


def _np_top1_minus_top2(logits):
  logits = np.asarray(logits, np.float64)
  z = np.exp(logits - logits.max())
  probabilities = np.sort(z / z.sum())
  return probabilities[-1] - probabilities[-2]


def _np_kept_count(pruning, layer, top_k, min_top_k, previous_confidence):
  if pruning == "fixed":
    return top_k
  if pruning == "decaying":
    count = math.floor(top_k / (1 + (top_k - min_top_k) / min_top_k * layer / L))
  else:
    count = math.floor(V * (1 - 0.9 * previous_confidence))
  return min(max(min_top_k, count), top_k)


def _np_pruned_measure(exit_config, layer_logits, exit_points):
  """One token: confidences {layer: c} at the exit points and, per layer, (ids of the kept
  tokens best first, their logits) as the measure leaves them."""
  pruning = exit_config.pruning if exit_config.measure == "softmax_pruned" else "fixed"
  top_k, min_top_k = exit_config.top_k, exit_config.min_top_k
  confidences, kept_logits, ids, kept, previous = {}, {}, None, None, None
  for layer in exit_points:
    logits = layer_logits[layer - 1]
    if ids is None:  # the first exit point: full softmax, keep the top-K ids
      ids = np.argsort(-logits, kind="stable")[:top_k]
      kept = np.ones(top_k, bool)
      confidences[layer] = _np_top1_minus_top2(logits)
    else:
      count = _np_kept_count(pruning, layer, top_k, min_top_k, previous)
      if pruning != "fixed":
        previous_logits = kept_logits[max(kept_logits)]
        best = np.argsort(-np.where(kept, previous_logits, -np.inf), kind="stable")[:count]
        kept = kept & np.isin(np.arange(top_k), best)
      confidences[layer] = _np_top1_minus_top2(logits[ids][kept])
    kept_logits[layer] = np.where(kept, logits[ids], -np.inf)
    previous = confidences[layer]
  return confidences, {layer: (ids, kept_logits[layer]) for layer in kept_logits}


# --- the formulas and the measure on its own ----------------------------------------------

def test_built_measures_and_their_declarations():
  assert build_measure(MEASURES["topk"]) == PrunedSoftmax(top_k=8)
  # softmax_topk never prunes, whatever ExitConfig.pruning says.
  assert build_measure(dataclasses.replace(MEASURES["topk"], pruning="adaptive")) == (
      PrunedSoftmax(top_k=8, pruning="fixed"))
  assert build_measure(MEASURES["decaying"]) == SoftmaxPruned(top_k=20, pruning="decaying",
                                                              min_top_k=3)
  for exit_config in MEASURES.values():
    needs = build_measure(exit_config).needs
    assert needs == Needs(logits="subset", subset_width=exit_config.top_k)
    assert checked_measure(exit_config, CONFIG) == build_measure(exit_config)


def test_kept_count_matches_the_formulas():
  confidences = np.array([0.0, 0.3, 0.95, 1.0], np.float32)
  for pruning in pruned.PRUNINGS:
    for layer in range(1, L + 1):
      got = np.asarray(pruned.kept_count(pruning, jnp.int32(layer), L, V, 40, 3,
                                             jnp.asarray(confidences)))
      expected = [_np_kept_count(pruning, layer, 40, 3, float(c)) for c in confidences]
      np.testing.assert_array_equal(got, expected, err_msg=f"{pruning} layer {layer}")
  # Decaying goes from k1 towards k* (reached at layer L), paper-sized numbers.
  sizes = [int(pruned.kept_count("decaying", jnp.int32(i), 8, 32128, 2000, 10,
                                     jnp.zeros(1))[0]) for i in range(1, 9)]
  assert sizes == [math.floor(2000 / (1 + 199 * i / 8)) for i in range(1, 8)] + [10]
  assert sizes == sorted(sizes, reverse=True)


def test_keep_top_ranked_keeps_the_best_members_by_logit():
  kept = jnp.array([[True, True, False, True, True]])
  logits = jnp.array([[0.1, 3.0, 9.0, 2.0, -1.0]])  # entry 2 is no longer kept
  got = pruned.keep_top_ranked(kept, logits, jnp.array([2]))
  assert got.tolist() == [[False, True, False, True, False]]
  # Never grows back: a count above the members keeps the members.
  assert pruned.keep_top_ranked(kept, logits, jnp.array([5])).tolist() == kept.tolist()


@pytest.fixture(scope="module")
def params():
  return jax.tree.map(lambda w: w * 1.5, init_params(CONFIG, jax.random.PRNGKey(3)))


@pytest.mark.parametrize("tied", [False, True])
def test_subset_logits_from_the_head_table_are_the_heads_logits_at_the_ids(params, tied):
  """The [V, d] table (an untied kernel transposed, or the tied embedding) gives each row's
  own ids' logits of the full head, in the ids' order."""
  config, model_params = CONFIG, params
  if tied:
    config = CONFIG.replace(tie_word_embeddings=True, scale_decoder_outputs=True)
    model_params = {k: v for k, v in params.items() if k != "lm_head"}
  table = pruned.head_table(config, model_params)
  assert table.shape == (V, config.d_model)
  hidden = np.random.RandomState(2).randn(3, config.d_model).astype(np.float32)
  ids = np.array([[52, 0, 7, 7], [3, 1, 40, 2], [9, 51, 8, 30]], np.int32)
  got = pruned.subset_logits(config, model_params, jnp.asarray(hidden), table,
                                 jnp.asarray(ids))
  expected = np.take_along_axis(_np_logits(config, model_params, hidden), ids, axis=1)
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", sorted(MEASURES) + ["fixed", "tied_head"])
def test_measure_over_layers_matches_the_numpy_reference(params, variant):
  """The measure stepped through the exit points of one token (2, 3, 4, 5) by hand."""
  config, model_params = CONFIG, params
  exit_config = MEASURES.get(variant)
  if variant == "fixed":
    exit_config = dataclasses.replace(MEASURES["decaying"], pruning="fixed")
  if variant == "tied_head":  # T5 v1.0: tied head with d^-0.5
    config = CONFIG.replace(tie_word_embeddings=True, scale_decoder_outputs=True)
    model_params = {k: v for k, v in params.items() if k != "lm_head"}
    exit_config = MEASURES["decaying"]
  measure = build_measure(exit_config)
  context = MeasureContext(params=model_params, model_config=config)
  hidden = 3.0 * np.random.RandomState(0).randn(L, 6, config.d_model).astype(np.float32)
  state = measure.init(context, jnp.asarray(hidden[0]))
  step = jax.jit(lambda layer, h, s: measure.confidence(context, LayerInputs(
      layer=layer, hidden=h, logits=None, final_top1=None), s))
  points = [2, 3, 4, 5]
  got = {}
  for layer in points:
    confidence, state = step(jnp.int32(layer), jnp.asarray(hidden[layer - 1]), state)
    got[layer] = (np.asarray(confidence), jax.tree.map(np.asarray, state))
  for row in range(6):
    logits = _np_logits(config, model_params, hidden[:, row])  # [L, V]
    confidences, kept = _np_pruned_measure(exit_config, logits, points)
    for layer in points:
      confidence, s = got[layer]
      np.testing.assert_allclose(confidence[row], confidences[layer], atol=2e-6,
                                 err_msg=f"row {row} layer {layer}")
      ids, kept_logits = kept[layer]
      np.testing.assert_array_equal(s.ids[row], ids)
      np.testing.assert_array_equal(np.isfinite(s.logits[row]), np.isfinite(kept_logits))
      finite = np.isfinite(kept_logits)
      np.testing.assert_allclose(s.logits[row][finite], kept_logits[finite], atol=2e-5)
  # The kept ids are the best-ranked tokens, not the lowest ids.
  ids = got[points[0]][1].ids
  assert (np.diff(ids, axis=1) < 0).any() and ids.max() > exit_config.top_k
  if exit_config.measure == "softmax_pruned" and exit_config.pruning != "fixed":
    assert (np.isinf(got[points[-1]][1].logits)).any(), "pruning never shrank the set"


def test_softmax_pruned_fixed_is_softmax_topk(params):
  hidden = jnp.asarray(np.random.RandomState(1).randn(3, 4, CONFIG.d_model), jnp.float32)
  results = []
  for exit_config in [ExitConfig(measure="softmax_topk", top_k=6),
                      ExitConfig(measure="softmax_pruned", pruning="fixed", top_k=6)]:
    measure = build_measure(exit_config)
    context = MeasureContext(params=params, model_config=CONFIG)
    state = measure.init(context, hidden[0])
    for layer in range(3):
      confidence, state = measure.confidence(context, LayerInputs(
          layer=jnp.int32(layer + 1), hidden=hidden[layer], logits=None, final_top1=None),
          state)
    results.append((np.asarray(confidence), np.asarray(state.ids), np.asarray(state.logits)))
  for first, second in zip(*results):
    np.testing.assert_array_equal(first, second)


# --- in the decoder ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def model(params, eos_batch):
  return eos_batch(CONFIG, params, decode_len=T, batch=B)


def _decode(model, exit_config, **kwargs):
  config, params, ids, mask, _ = model
  return jax.tree.map(np.asarray, generate(config, params, ids, mask, exit=exit_config,
                                           max_decode_len=T, return_trace=True, **kwargs))


def _median_threshold(model, exit_config):
  never = _decode(model, dataclasses.replace(exit_config, threshold=1.0))
  return float(np.median(never.trace[never.exit_layers > 0][:, :-1]))


@pytest.mark.parametrize("variant", ["topk", "decaying"])
def test_threshold_one_is_the_full_model(model, variant):
  out = _decode(model, dataclasses.replace(MEASURES[variant], threshold=1.0))
  greedy = model[4]
  generated = out.exit_layers > 0
  np.testing.assert_array_equal(out.tokens, greedy)
  np.testing.assert_array_equal(out.exit_layers, np.where(generated, L, 0))
  assert (~generated).any()


@pytest.mark.parametrize("variant", sorted(MEASURES))
def test_decoder_follows_the_reference_and_maps_tokens_back(model, variant):
  """full_compute keeps every state the full model's given the emitted tokens, so the
  teacher-forced states of the output replay every token through the NumPy reference: its
  confidences, exit layer, and token (the best kept id; the full head's at layer L)."""
  config, params, ids, mask, _ = model
  lam = _median_threshold(model, MEASURES[variant])
  out = _decode(model, dataclasses.replace(MEASURES[variant], threshold=lam,
                                           propagation="full_compute"))
  states = np.asarray(decode_teacher_forced(
      config, params, shift_right(config, jnp.asarray(out.tokens)),
      encode(config, params, ids, mask), mask))  # [L, B, T, d]
  exits = []
  for b, t in zip(*np.nonzero(out.exit_layers > 0)):
    logits = _np_logits(config, params, states[:, b, t])  # [L, V]
    confidences, kept = _np_pruned_measure(MEASURES[variant], logits, range(1, L + 1))
    np.testing.assert_allclose(out.trace[b, t], [confidences[i] for i in range(1, L + 1)],
                               atol=5e-5, err_msg=f"({b}, {t})")
    exit_layer = next((i for i in range(1, L) if confidences[i] >= np.float32(lam)), L)
    assert out.exit_layers[b, t] == exit_layer, (b, t)
    kept_ids, kept_logits = kept[exit_layer]
    expected = (np.argmax(logits[-1]) if exit_layer == L
                else kept_ids[np.argmax(kept_logits)])
    assert out.tokens[b, t] == expected, (b, t, exit_layer)
    exits.append(exit_layer)
  assert len(set(exits)) > 2 and L in exits and min(exits) < L


@pytest.mark.parametrize("variant", ["topk", "adaptive"])
def test_batch_with_mixed_exits_equals_each_example_alone(model, variant,
                                                          assert_mixed_batch_equals_each_alone):
  exit_config = MEASURES[variant]
  assert_mixed_batch_equals_each_alone(model, exit_config,
                                       _median_threshold(model, exit_config), T)


def test_sampling_draws_from_the_kept_tokens(model):
  config, params, ids, mask, _ = model
  out = generate(config, params, ids, mask, exit=dataclasses.replace(MEASURES["topk"],
                                                                      threshold=0.0),
                 max_decode_len=T, sampling=SamplingConfig(temperature=1.0, top_k=30),
                 rng=jax.random.PRNGKey(0))
  layers = np.asarray(out.exit_layers)
  assert ((layers == 1) | (layers == 0)).all()  # lambda = 0: every token leaves at layer 1
  tokens = np.asarray(out.tokens)[layers > 0]
  assert ((tokens >= 0) & (tokens < V)).all() and len(set(tokens.tolist())) > 3


@pytest.mark.parametrize("fields, message", [
    (dict(measure="softmax_topk", top_k=1), r"ExitConfig.top_k=1 must be an integer in "
     r"\[2, 53\] \(the vocabulary size\) for measure 'softmax_topk'"),
    (dict(measure="softmax_topk", top_k=54), r"ExitConfig.top_k=54 must be an integer in "
     r"\[2, 53\]"),
    (dict(measure="softmax_pruned", top_k=2000), r"top_k=2000 must be an integer in \[2, 53\]"),
    (dict(measure="softmax_pruned", top_k=10, pruning="linear"),
     "ExitConfig.pruning='linear'; allowed: fixed, decaying, adaptive"),
    (dict(measure="softmax_pruned", top_k=10, min_top_k=11),
     r"ExitConfig.min_top_k \(k\*\)=11 must be an integer in \[2, top_k=10\]"),
    (dict(measure="softmax_pruned", top_k=10, min_top_k=1), r"min_top_k \(k\*\)=1"),
])
def test_bad_options_are_rejected_before_compiling(model, fields, message):
  config, params, ids, mask, _ = model
  with pytest.raises(ValueError, match=message):
    generate(config, params, ids, mask, exit=ExitConfig(**fields), max_decode_len=T)
