"""contrastive_weighted and contrastive_jsd: the formulas against a NumPy reference (head
set, amateur choice, Jensen-Shannon divergence, scores), the decoder replayed through the
reference, the contrastive token option, lambda >= 1, batch invariance, bad options."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import rel_entr

from calm_jax.decoding.exit_rule import ExitConfig, exit_point_layers
from calm_jax.decoding.generate import generate
from calm_jax.decoding.measures import (LayerInputs, MeasureContext, Needs, build_measure,
                                        checked_measure, contrastive)
from calm_jax.decoding.measures.contrastive import ContrastiveJSD, ContrastiveWeighted
from calm_jax.model.config import T5Config
from calm_jax.model.t5 import (decode_teacher_forced, encode, exit_logits, init_params,
                              shift_right)

CONFIG = T5Config(vocab_size=53, d_model=16, d_kv=4, d_ff=24, num_layers=2,
                  num_decoder_layers=5, num_heads=4, feed_forward_proj="gated-gelu",
                  tie_word_embeddings=False, scale_decoder_outputs=False,
                  relative_attention_num_buckets=8, relative_attention_max_distance=16)
L, V = CONFIG.num_decoder_layers, CONFIG.vocab_size
T, B = 8, 4
MEASURES = {
    "weighted": ExitConfig(measure="contrastive_weighted"),
    "jsd": ExitConfig(measure="contrastive_jsd", min_exit_layer=2, jsd_by_distance=True,
                      contrastive_alpha=0.05),
    "jsd_token": ExitConfig(measure="contrastive_jsd", contrastive_token=True),
}


# --- NumPy reference ----------------------------------------------------------------------

def _np_logits(params, hidden):
  x = np.asarray(hidden, np.float64)
  scale = np.asarray(params["decoder"]["final_norm"]["scale"], np.float64)
  normed = x / np.sqrt(np.mean(x * x, -1, keepdims=True) + CONFIG.layer_norm_epsilon) * scale
  return normed @ np.asarray(params["lm_head"]["kernel"], np.float64)


def _np_log_softmax(logits):
  shifted = logits - logits.max(-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _np_jsd(log_p, log_q):
  p, q = np.exp(log_p), np.exp(log_q)
  m = 0.5 * (p + q)
  return 0.5 * np.sum(p * np.log(p / m)) + 0.5 * np.sum(q * np.log(q / m))


def _np_scores(log_p, log_a, alpha):
  """s: softmax over the head set of log p - log p_a, times the head set's mass."""
  p = np.exp(log_p)
  head = p >= alpha * p.max()
  contrast = np.where(head, log_p - log_a, -np.inf)
  z = np.exp(contrast - contrast[head].max())
  return z / z.sum() * p[head].sum(), contrast


def _np_contrastive(exit_config, layer_logits, exit_points):
  """One token: {layer: (confidence, contrast [V])} at its exit points, from the logits of
  layers 0 (embedded input) .. L [L + 1, V]."""
  log_probs = _np_log_softmax(np.asarray(layer_logits, np.float64))
  candidates = [0] + list(exit_points)
  results = {}
  for i in exit_points:
    if exit_config.measure == "contrastive_weighted":
      amateur = i // 2
    else:
      divergence = {j: _np_jsd(log_probs[i], log_probs[j]) / (
          i - j if exit_config.jsd_by_distance else 1) for j in candidates if j < i}
      amateur = max(divergence, key=divergence.get)
    scores, contrast = _np_scores(log_probs[i], log_probs[amateur],
                                  exit_config.contrastive_alpha)
    top = np.sort(scores)
    results[i] = (top[-1] - top[-2], contrast)
  return results


# --- the formulas and the measure on its own ----------------------------------------------

def test_built_measures_and_their_declarations():
  assert build_measure(MEASURES["weighted"]) == ContrastiveWeighted(alpha=0.1,
                                                                    emit_contrastive=False)
  assert build_measure(MEASURES["jsd"]) == ContrastiveJSD(
      alpha=0.05, emit_contrastive=False, exit_rule=MEASURES["jsd"].compiled_part(),
      by_distance=True)
  assert build_measure(MEASURES["jsd_token"]).emit_contrastive
  # contrastive_weighted's amateur (layer floor(i / 2)) need not be an exit point.
  assert build_measure(MEASURES["weighted"]).needs == Needs(logits="full", every_layer=True,
                                                            every_exit_point=True)
  assert build_measure(MEASURES["jsd"]).needs == Needs(logits="full", every_exit_point=True)


def test_head_contrast_on_a_hand_made_distribution():
  p = np.array([0.5, 0.3, 0.04, 0.16])
  a = np.array([0.25, 0.25, 0.25, 0.25])
  contrast, mass = contrastive.head_contrast(jnp.log(jnp.asarray([p])),
                                             jnp.log(jnp.asarray([a])), 0.1)
  # Head set: p >= 0.05, so token 2 (0.04) is out; mass 0.96.
  np.testing.assert_allclose(mass, [0.96], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(contrast)[0, [0, 1, 3]], np.log(p[[0, 1, 3]] / 0.25),
                             rtol=1e-6)
  assert np.isneginf(np.asarray(contrast)[0, 2])
  # alpha = 1 keeps only the top token: s = (mass, 0, ...), confidence = p_max.
  _, mass = contrastive.head_contrast(jnp.log(jnp.asarray([p])), jnp.log(jnp.asarray([a])), 1.0)
  np.testing.assert_allclose(mass, [0.5], rtol=1e-6)


def test_jensen_shannon_matches_numpy():
  rng = np.random.RandomState(0)
  log_p = _np_log_softmax(3 * rng.randn(2, 11))
  log_q = _np_log_softmax(3 * rng.randn(2, 3, 11))
  got = np.asarray(contrastive.jensen_shannon(jnp.asarray(log_p, jnp.float32),
                                              jnp.asarray(log_q, jnp.float32)))
  expected = [[_np_jsd(log_p[b], log_q[b, j]) for j in range(3)] for b in range(2)]
  np.testing.assert_allclose(got, expected, atol=1e-6)
  assert np.all(np.asarray(got) <= np.log(2) + 1e-6)


def test_jensen_shannon_of_distributions_with_zero_probabilities():
  """Tokens with probability 0 under p or q (log -inf) add nothing (0 log 0 = 0): against
  SciPy's relative entropy, on a vocabulary wide enough for float32 sums to matter."""
  rng = np.random.RandomState(1)
  log_p = _np_log_softmax(4 * rng.randn(3, 4000))
  log_q = _np_log_softmax(4 * rng.randn(3, 5, 4000))
  log_p[0, :7] = -np.inf  # p puts nothing on 7 tokens that q covers
  log_q[1, 2, 100:130] = -np.inf
  log_p = log_p - np.logaddexp.reduce(log_p, axis=-1, keepdims=True)
  log_q = log_q - np.logaddexp.reduce(log_q, axis=-1, keepdims=True)
  got = np.asarray(contrastive.jensen_shannon(jnp.asarray(log_p, jnp.float32),
                                              jnp.asarray(log_q, jnp.float32)))
  p, q = np.exp(log_p)[:, None], np.exp(log_q)
  m = 0.5 * (p + q)
  expected = 0.5 * (rel_entr(p, m).sum(-1) + rel_entr(q, m).sum(-1))  # [3, 5]
  assert np.isfinite(got).all()
  np.testing.assert_allclose(got, expected, atol=2e-6)


@pytest.fixture(scope="module")
def params():
  params = jax.tree.map(lambda w: w * 1.5, init_params(CONFIG, jax.random.PRNGKey(3)))
  # A softer head: with this random model's peaked layers most JSDs would saturate at
  # log 2, making the farthest layer a tie that rounding decides.
  return dict(params, lm_head={"kernel": 0.25 * params["lm_head"]["kernel"]})


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("variant", sorted(MEASURES))
def test_measure_over_layers_matches_the_numpy_reference(params, variant, static):
  """The measure stepped by hand through the layers the decoder runs it at, with the layer
  traced (the stacked layer loop) or known statically (the unrolled one: contrastive_jsd
  then compares only the layers before it)."""
  exit_config = MEASURES[variant]
  measure = build_measure(exit_config)
  context = MeasureContext(params=params, model_config=CONFIG)
  rng = np.random.RandomState(0)
  embedded = rng.randn(6, CONFIG.d_model).astype(np.float32)
  hidden = rng.randn(L, 6, CONFIG.d_model).astype(np.float32)
  points = exit_point_layers(exit_config, L)
  run_at = range(1, L + 1) if measure.needs.every_layer else points
  state = measure.init(context, jnp.asarray(embedded))
  step = jax.jit(lambda layer, h, s: measure.confidence(context, LayerInputs(
      layer=jnp.int32(layer), hidden=h, logits=jnp.asarray(_logits_jax(params, h)),
      final_top1=None, static_layer=layer if static else None), s),
                 static_argnums=(0,) if static else ())
  got = {}
  for layer in run_at:
    confidence, state = step(layer if static else jnp.int32(layer),
                             jnp.asarray(hidden[layer - 1]), state)
    got[layer] = (np.asarray(confidence), np.asarray(state.contrast))
  for row in range(6):
    layer_logits = _np_logits(params, np.concatenate([embedded[None, row], hidden[:, row]]))
    expected = _np_contrastive(exit_config, layer_logits, points)
    for layer in points:
      np.testing.assert_allclose(got[layer][0][row], expected[layer][0], atol=2e-5,
                                 err_msg=f"row {row} layer {layer}")
      contrast = expected[layer][1]
      np.testing.assert_array_equal(np.isfinite(got[layer][1][row]), np.isfinite(contrast))
      np.testing.assert_allclose(got[layer][1][row][np.isfinite(contrast)],
                                 contrast[np.isfinite(contrast)], atol=1e-4)


def _logits_jax(params, hidden):
  return exit_logits(CONFIG, params, hidden)


def test_jsd_amateur_is_the_farthest_earlier_candidate():
  # Layers 0..3 of one example; layer 3 is the current one. Layer 1 is no candidate.
  log_probs = np.log(np.array([[0.25, 0.25, 0.25, 0.25], [0.97, 0.01, 0.01, 0.01],
                               [0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4]]))[None]
  history = contrastive.LayerHistory(log_probs=jnp.asarray(log_probs, jnp.float32),
                                     contrast=jnp.zeros((1, 4)))
  candidates = np.array([True, False, True, True])
  current = jnp.asarray(log_probs[:, 3], jnp.float32)
  for static_layer in (None, 3):  # layer 3 traced, or known while tracing (a slice)
    pick = lambda by_distance, static_layer=static_layer: np.asarray(contrastive.jsd_amateur(
        history, jnp.int32(3), current, candidates, by_distance, static_layer))[0]
    np.testing.assert_allclose(pick(False), log_probs[0, 2], rtol=1e-6)  # farther than 0
    # Divided by the distance, layer 2 (distance 1) still wins over layer 0 (distance 3).
    assert (_np_jsd(log_probs[0, 3], log_probs[0, 2])
            > _np_jsd(log_probs[0, 3], log_probs[0, 0]) / 3)
    np.testing.assert_allclose(pick(True), log_probs[0, 2], rtol=1e-6)
  # Layer 1, not a candidate, is the farthest from layer 3: it is never picked.
  assert _np_jsd(log_probs[0, 3], log_probs[0, 1]) > _np_jsd(log_probs[0, 3], log_probs[0, 2])


# --- in the decoder ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def model(params, eos_batch):
  return eos_batch(CONFIG, params, decode_len=T, batch=B)


def _decode(model, exit_config):
  config, params, ids, mask, _ = model
  return jax.tree.map(np.asarray, generate(config, params, ids, mask, exit=exit_config,
                                           max_decode_len=T, return_trace=True))


def _median_threshold(model, exit_config):
  never = _decode(model, dataclasses.replace(exit_config, threshold=1.0))
  values = never.trace[never.exit_layers > 0][:, :-1]
  return float(np.median(values[np.isfinite(values)]))


@pytest.mark.parametrize("variant", sorted(MEASURES))
def test_decoder_follows_the_reference(model, variant):
  """full_compute: every state is the full model's given the emitted tokens, so each token
  replays through the reference (confidences at its exit points, exit layer, token: the
  exit head's argmax, or the contrastive argmax with contrastive_token, also at layer L)."""
  config, params, ids, mask, greedy = model
  exit_config = MEASURES[variant]
  lam = _median_threshold(model, exit_config)
  out = _decode(model, dataclasses.replace(exit_config, threshold=lam,
                                           propagation="full_compute"))
  inputs = shift_right(config, jnp.asarray(out.tokens))
  states = np.asarray(decode_teacher_forced(config, params, inputs,
                                            encode(config, params, ids, mask), mask))
  embedded = np.asarray(params["shared"]["embedding"])[np.asarray(inputs)]  # [B, T, d]
  points = exit_point_layers(exit_config, L)
  exits = []
  for b, t in zip(*np.nonzero(out.exit_layers > 0)):
    layer_logits = _np_logits(params, np.concatenate([embedded[None, b, t], states[:, b, t]]))
    expected = _np_contrastive(exit_config, layer_logits, points)
    np.testing.assert_allclose(out.trace[b, t, np.asarray(points) - 1],
                               [expected[i][0] for i in points], atol=5e-5, err_msg=f"({b}, {t})")
    exit_layer = next((i for i in points[:-1] if expected[i][0] >= np.float32(lam)), L)
    assert out.exit_layers[b, t] == exit_layer, (b, t)
    token = (np.argmax(expected[exit_layer][1]) if exit_config.contrastive_token
             else np.argmax(layer_logits[exit_layer]))
    assert out.tokens[b, t] == token, (b, t, exit_layer)
    exits.append(exit_layer)
  assert len(set(exits)) > 1 and min(exits) < L
  if exit_config.contrastive_token:
    assert np.any(out.tokens != greedy)


def test_threshold_one_is_the_full_model(model):
  out = _decode(model, ExitConfig(measure="contrastive_weighted", threshold=1.0))
  greedy = model[4]
  np.testing.assert_array_equal(out.tokens, greedy)
  np.testing.assert_array_equal(out.exit_layers, np.where(out.exit_layers > 0, L, 0))


@pytest.mark.parametrize("variant", ["weighted", "jsd"])
def test_batch_with_mixed_exits_equals_each_example_alone(model, variant,
                                                          assert_mixed_batch_equals_each_alone):
  exit_config = MEASURES[variant]
  assert_mixed_batch_equals_each_alone(model, exit_config,
                                       _median_threshold(model, exit_config), T)


@pytest.mark.parametrize("fields, message", [
    (dict(contrastive_alpha=0.0), r"ExitConfig.contrastive_alpha=0.0 must be in \(0, 1\]"),
    (dict(contrastive_alpha=1.5), r"ExitConfig.contrastive_alpha=1.5 must be in \(0, 1\]"),
    (dict(contrastive_token="yes"), "ExitConfig.contrastive_token must be true or false, "
     "got 'yes'"),
    (dict(jsd_by_distance=1), "ExitConfig.jsd_by_distance must be true or false, got 1"),
])
@pytest.mark.parametrize("measure", ["contrastive_weighted", "contrastive_jsd"])
def test_bad_options_are_rejected(measure, fields, message):
  with pytest.raises(ValueError, match=message):
    checked_measure(ExitConfig(measure=measure, **fields), CONFIG)
