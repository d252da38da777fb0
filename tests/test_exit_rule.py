"""The exit rule (exit points, decaying threshold, config checks), the confidence measures
and token selection, each against a NumPy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from calm_jax.decoding import measures
from calm_jax.decoding.exit_rule import ExitConfig, is_exit_point, threshold_at
from calm_jax.decoding.measures import MeasureInputs, get_measure
from calm_jax.decoding.sampling import SamplingConfig, select_tokens


# --- threshold_at -----------------------------------------------------------------------

def _paper(lam, tau, t, n):
  return np.clip(0.9 * lam + 0.1 * np.exp(-tau * t / n), 0.0, 1.0)


def _code(lam, tau, t, n):
  return lam * (0.9 + 0.1 * np.exp(-tau * t / n))


@pytest.mark.parametrize("decay, reference", [("paper", _paper), ("code", _code)])
@pytest.mark.parametrize("lam, tau, n", [
    (0.5, 1.0, 10), (0.8, 4.0, 16), (0.05, 2.5, 7), (0.95, 0.3, 64), (1.5, 2.0, 12),
    (0.0, 3.0, 5),
])
def test_threshold_at_matches_numpy(decay, reference, lam, tau, n):
  positions = np.arange(n)
  ours = np.asarray(threshold_at(lam, tau, jnp.asarray(positions), n, decay))
  np.testing.assert_allclose(ours, reference(lam, tau, positions, n), atol=1e-6, rtol=0)
  assert ours.dtype == np.float32


def test_threshold_at_decays_monotonically_towards_its_floor():
  positions = jnp.arange(40)
  paper = np.asarray(threshold_at(0.6, 5.0, positions, 40, "paper"))
  code = np.asarray(threshold_at(0.6, 5.0, positions, 40, "code"))
  assert np.all(np.diff(paper) < 0) and np.all(np.diff(code) < 0)
  assert paper[-1] > 0.9 * 0.6 and code[-1] > 0.9 * 0.6
  # The two forms differ for lambda < 1: the paper decays towards 0.9 lam + 0.1 e^(-tau).
  assert not np.allclose(paper, code)


@pytest.mark.parametrize("decay", ["paper", "code"])
@pytest.mark.parametrize("lam", [0.0, 0.3, 0.77, 1.0, 1.5])
def test_threshold_at_with_tau_zero_is_lambda_exactly(decay, lam):
  ours = np.asarray(threshold_at(lam, 0.0, jnp.arange(9), 9, decay))
  np.testing.assert_array_equal(ours, np.full(9, lam, np.float32))


def test_threshold_at_traces_lambda_and_tau():
  """lambda and tau are runtime values: one compiled function serves every value."""
  f = jax.jit(lambda lam, tau, t: threshold_at(lam, tau, t, 10, "paper"))
  for lam, tau in [(0.2, 0.0), (0.2, 3.0), (0.9, 1.0)]:
    np.testing.assert_allclose(f(lam, tau, jnp.arange(10)),
                               _paper(lam, tau, np.arange(10), 10) if tau else np.full(10, lam),
                               atol=1e-6)
  assert f._cache_size() == 1


# --- exit points ------------------------------------------------------------------------

@pytest.mark.parametrize("num_layers, min_exit, interval, expected", [
    (8, 1, 1, [1, 2, 3, 4, 5, 6, 7, 8]),
    (8, 3, 2, [3, 5, 7, 8]),
    (8, 3, 1, [3, 4, 5, 6, 7, 8]),
    (8, 1, 3, [1, 4, 7, 8]),
    (8, 2, 3, [2, 5, 8]),
    (8, 8, 1, [8]),
    (8, 5, 10, [5, 8]),
    (6, 2, 2, [2, 4, 6]),
])
def test_is_exit_point(num_layers, min_exit, interval, expected):
  config = ExitConfig(min_exit_layer=min_exit, exit_interval=interval)
  config.validate(num_layers)
  layers = np.arange(1, num_layers + 1)
  as_python = [int(i) for i in layers if bool(is_exit_point(int(i), config, num_layers))]
  assert as_python == expected
  traced = np.asarray(jax.jit(lambda i: is_exit_point(i, config, num_layers))(jnp.asarray(layers)))
  np.testing.assert_array_equal(layers[traced], expected)


# --- ExitConfig.validate ----------------------------------------------------------------

@pytest.mark.parametrize("fields, message", [
    (dict(measure="bogus"), "unknown confidence measure 'bogus'; registered: attention, .*, "
     "monotone_heuristic, oracle, softmax_diff, softmax_max, .*, state_saturation, static, "
     "three_state_mlp$"),
    (dict(threshold=-0.1), r"ExitConfig.threshold \(lambda\) must be >= 0, got -0.1"),
    (dict(threshold=float("nan")), r"ExitConfig.threshold \(lambda\) must be >= 0, got nan"),
    (dict(tau=-1.0), "ExitConfig.tau must be >= 0, got -1.0"),
    (dict(decay="fast"), "ExitConfig.decay='fast'; allowed: paper, code"),
    (dict(propagation="x"), "ExitConfig.propagation='x'; allowed: copy_state, full_compute"),
    (dict(min_exit_layer=0), r"ExitConfig.min_exit_layer=0 must be in \[1, 6\] \(the decoder "
     r"has 6 layers\)"),
    (dict(min_exit_layer=7), r"ExitConfig.min_exit_layer=7 must be in \[1, 6\]"),
    (dict(exit_interval=0), "ExitConfig.exit_interval must be a positive integer, got 0"),
    (dict(exit_interval=1.5), "ExitConfig.exit_interval must be a positive integer, got 1.5"),
    (dict(measure="static"), r"ExitConfig.static_exit_layer=0 must be in \[1, 6\] for the "
     "'static' measure"),
    (dict(measure="static", static_exit_layer=7), r"ExitConfig.static_exit_layer=7 must be in"),
])
def test_exit_config_validate_rejects(fields, message):
  with pytest.raises(ValueError, match=message):
    ExitConfig(**fields).validate(6)


@pytest.mark.parametrize("fields", [
    dict(), dict(threshold=0.0), dict(threshold=1.5, tau=4.0, decay="code"),
    dict(min_exit_layer=6, exit_interval=3), dict(measure="static", static_exit_layer=6),
    dict(measure="oracle", propagation="full_compute"),
    # A static layer is only checked for the static measure.
    dict(measure="softmax_max", static_exit_layer=99),
])
def test_exit_config_validate_accepts(fields):
  ExitConfig(**fields).validate(6)


@pytest.mark.parametrize("fields", [
    dict(threshold=np.float32(0.5)), dict(threshold=np.int64(1)), dict(tau=np.float32(2.0)),
    dict(min_exit_layer=np.int64(2)),
])
def test_exit_config_validate_accepts_numpy_scalars(fields):
  ExitConfig(**fields).validate(6)


def test_compiled_part_drops_only_runtime_values():
  config = ExitConfig(measure="softmax_max", threshold=0.4, tau=2.0, decay="code",
                      min_exit_layer=2, exit_interval=2, propagation="full_compute")
  other = ExitConfig(measure="softmax_max", threshold=0.9, tau=0.0, decay="code",
                     min_exit_layer=2, exit_interval=2, propagation="full_compute")
  assert config.compiled_part() == other.compiled_part()
  assert hash(config.compiled_part()) == hash(other.compiled_part())
  assert config.compiled_part() != ExitConfig(measure="softmax_max").compiled_part()


# --- measures ---------------------------------------------------------------------------

def _inputs(layer=2, batch=5, width=7, vocab=11, seed=0, final_top1=None, static_exit_layer=0):
  rng = np.random.RandomState(seed)
  hidden = rng.randn(batch, width).astype(np.float32)
  logits = (2.0 * rng.randn(batch, vocab)).astype(np.float32)
  return MeasureInputs(layer=jnp.int32(layer), hidden=jnp.asarray(hidden),
                       logits=jnp.asarray(logits),
                       final_top1=None if final_top1 is None else jnp.asarray(final_top1, jnp.int32),
                       static_exit_layer=static_exit_layer), hidden, logits


def _softmax(logits):
  z = np.exp(logits - logits.max(-1, keepdims=True))
  return z / z.sum(-1, keepdims=True)


def test_registry_names_and_flags():
  assert sorted(measures.MEASURES) == [
      "attention", "contrastive_jsd", "contrastive_weighted", "lstm", "meta_linear",
      "meta_mlp", "monotone_heuristic", "oracle", "softmax_diff", "softmax_max",
      "softmax_pruned", "softmax_topk", "state_saturation", "static", "three_state_mlp"]
  assert get_measure("monotone_heuristic").stateful
  assert not any(get_measure(m).stateful for m in ["softmax_diff", "softmax_max", "oracle"])
  assert get_measure("softmax_diff").uses_logits and get_measure("softmax_max").uses_logits
  assert not get_measure("state_saturation").uses_logits
  assert get_measure("oracle").needs_final_top1 and not get_measure("oracle").thresholded
  assert not get_measure("static").thresholded
  with pytest.raises(ValueError, match="a measure named 'softmax_max' is already registered"):
    measures.register(measures.Measure("softmax_max", measures.softmax_max))


def test_softmax_diff_is_top1_minus_top2_probability():
  inputs, _, logits = _inputs()
  state = ("untouched",)
  confidence, new_state = get_measure("softmax_diff").confidence(inputs, state)
  top = np.sort(_softmax(logits.astype(np.float64)), -1)[:, ::-1]
  np.testing.assert_allclose(confidence, top[:, 0] - top[:, 1], atol=1e-6)
  assert new_state is state
  assert confidence.shape == (5,) and confidence.dtype == jnp.float32


def test_softmax_diff_of_a_tie_is_zero_and_of_a_certain_token_is_one():
  logits = jnp.asarray([[3.0, 3.0, -1.0], [60.0, 0.0, 0.0]])
  inputs = MeasureInputs(layer=jnp.int32(1), hidden=jnp.zeros((2, 4)), logits=logits,
                         final_top1=None)
  confidence, _ = measures.softmax_diff(inputs, ())
  np.testing.assert_allclose(confidence, [0.0, 1.0], atol=1e-6)


def test_softmax_max_is_top1_probability():
  inputs, _, logits = _inputs(seed=1)
  confidence, _ = get_measure("softmax_max").confidence(inputs, ())
  np.testing.assert_allclose(confidence, _softmax(logits.astype(np.float64)).max(-1), atol=1e-6)


def test_state_saturation_is_cosine_with_previous_state_and_returns_new_state():
  measure = get_measure("state_saturation")
  inputs, hidden, _ = _inputs(seed=2)
  embedded = np.random.RandomState(9).randn(5, 7).astype(np.float32)
  previous = measure.init_state(jnp.asarray(embedded))
  np.testing.assert_array_equal(previous, embedded)
  confidence, state = measure.confidence(inputs, previous)
  cosine = np.sum(hidden * embedded, -1) / (np.linalg.norm(hidden, axis=-1)
                                            * np.linalg.norm(embedded, axis=-1))
  np.testing.assert_allclose(confidence, cosine, atol=1e-6)
  np.testing.assert_array_equal(state, hidden)
  # The next call compares with the state returned, not the initial one.
  again, _ = measure.confidence(inputs.replace(hidden=jnp.asarray(2.0 * hidden)), state)
  np.testing.assert_allclose(again, np.ones(5), atol=1e-6)
  negated, _ = measure.confidence(inputs.replace(hidden=jnp.asarray(-hidden)), state)
  np.testing.assert_allclose(negated, -np.ones(5), atol=1e-6)


def test_monotone_heuristic_against_a_numpy_reference():
  measure = get_measure("monotone_heuristic")
  rng = np.random.RandomState(4)
  steps = [rng.randn(6, 9).astype(np.float32) * scale for scale in (0.5, 1.0, 2.0, 0.2, 3.0)]
  state = measure.init_state(jnp.zeros((6, 3)))
  assert state.shape == (6, 2) and np.isnan(np.asarray(state)).all()
  history, seen = [], []  # NumPy reference: top-1 probability per exit point
  for logits in steps:
    inputs = MeasureInputs(layer=jnp.int32(1), hidden=jnp.zeros((6, 3)),
                           logits=jnp.asarray(logits), final_top1=None)
    confidence, state = measure.confidence(inputs, state)
    history.append(_softmax(logits.astype(np.float64)).max(-1))
    if len(history) < 3:
      expected = np.zeros(6)
    else:
      a, b, c = history[-3:]
      expected = np.where((a < b) & (b < c), c, 0.0)
    np.testing.assert_allclose(confidence, expected, atol=1e-6)
    np.testing.assert_allclose(state[:, 1], history[-1], atol=1e-6)
    seen.append(np.asarray(confidence))
  seen = np.concatenate(seen[2:])
  assert (seen > 0).any() and (seen == 0).any()  # both outcomes after the warm-up


def test_state_saturation_of_zero_state_is_finite():
  inputs = MeasureInputs(layer=jnp.int32(1), hidden=jnp.zeros((2, 3)), logits=None,
                         final_top1=None)
  confidence, _ = measures.state_saturation(inputs, jnp.ones((2, 3)))
  np.testing.assert_array_equal(confidence, [0.0, 0.0])


@pytest.mark.parametrize("layer", [1, 2, 3, 4])
def test_static_is_one_only_at_its_layer(layer):
  inputs, _, _ = _inputs(layer=layer, static_exit_layer=3)
  confidence, _ = get_measure("static").confidence(inputs, ())
  np.testing.assert_array_equal(confidence, np.full(5, 1.0 if layer == 3 else 0.0, np.float32))
  assert confidence.dtype == jnp.float32


def test_static_under_a_traced_layer():
  inputs, _, _ = _inputs(static_exit_layer=2)
  f = jax.jit(lambda layer: measures.static_exit(inputs.replace(layer=layer), ())[0])
  np.testing.assert_array_equal([np.asarray(f(jnp.int32(i)))[0] for i in range(1, 5)],
                                [0.0, 1.0, 0.0, 0.0])


def test_oracle_is_one_where_argmax_equals_final_top1():
  _, _, logits = _inputs(seed=3)
  argmax = logits.argmax(-1)
  final = argmax.copy()
  final[[1, 3]] = (final[[1, 3]] + 1) % logits.shape[1]
  inputs, _, _ = _inputs(seed=3, final_top1=final)
  confidence, _ = get_measure("oracle").confidence(inputs, ())
  np.testing.assert_array_equal(confidence, [1.0, 0.0, 1.0, 0.0, 1.0])


# --- token selection --------------------------------------------------------------------

def _logits_with_probabilities(probabilities, rows):
  return jnp.asarray(np.tile(np.log(np.asarray(probabilities, np.float64)), (rows, 1)),
                     jnp.float32)


def _support(tokens):
  return sorted(set(np.asarray(tokens).ravel().tolist()))


def test_greedy_is_argmax():
  logits = jnp.asarray(np.random.RandomState(0).randn(6, 13), jnp.float32)
  for seed in range(3):
    tokens = select_tokens(logits, jax.random.PRNGKey(seed), SamplingConfig())
    np.testing.assert_array_equal(tokens, np.argmax(np.asarray(logits), -1))
    assert tokens.dtype == jnp.int32


def test_top_k_one_is_argmax_whatever_the_key():
  logits = jnp.asarray(np.random.RandomState(1).randn(50, 13), jnp.float32)
  for seed in range(5):
    tokens = select_tokens(logits, jax.random.PRNGKey(seed),
                           SamplingConfig(temperature=2.0, top_k=1))
    np.testing.assert_array_equal(tokens, np.argmax(np.asarray(logits), -1))


# Probabilities in order of token ids 0..5 (not sorted, so the filter must sort).
PROBABILITIES = [0.1, 0.4, 0.05, 0.3, 0.15, 0.0001]  # sums to ~1; renormalised by softmax


@pytest.mark.parametrize("top_p, support", [
    (0.3, [1]),  # 0.4 alone reaches 0.3
    (0.35, [1]),
    (0.5, [1, 3]),  # 0.4 + 0.3
    (0.69, [1, 3]),
    (0.72, [1, 3, 4]),  # 0.4 + 0.3 + 0.15 = 0.85
    (0.9, [0, 1, 3, 4]),  # + 0.1 = 0.95
    (0.99, [0, 1, 2, 3, 4]),
    (1.0, [0, 1, 2, 3, 4, 5]),  # off
])
def test_top_p_keeps_the_smallest_prefix_reaching_p(top_p, support):
  rows = 4000
  logits = _logits_with_probabilities(PROBABILITIES, rows)
  tokens = select_tokens(logits, jax.random.PRNGKey(7), SamplingConfig(temperature=1.0,
                                                                       top_p=top_p))
  if top_p < 1.0:
    assert _support(tokens) == support
  else:  # 1e-4 of 4000 rows is seldom sampled; everything else must be.
    assert set(support[:-1]) <= set(_support(tokens)) <= set(support)


def test_top_p_sampling_frequencies_are_renormalised():
  rows = 20000
  logits = _logits_with_probabilities(PROBABILITIES, rows)
  tokens = np.asarray(select_tokens(logits, jax.random.PRNGKey(3),
                                    SamplingConfig(temperature=1.0, top_p=0.72)))
  kept = np.asarray(PROBABILITIES)[[1, 3, 4]]
  frequencies = np.bincount(tokens, minlength=6)[[1, 3, 4]] / rows
  np.testing.assert_allclose(frequencies, kept / kept.sum(), atol=0.015)


@pytest.mark.parametrize("top_k, support", [(2, [1, 3]), (3, [1, 3, 4]), (4, [0, 1, 3, 4])])
def test_top_k_keeps_the_k_most_probable(top_k, support):
  logits = _logits_with_probabilities(PROBABILITIES, 4000)
  tokens = select_tokens(logits, jax.random.PRNGKey(11), SamplingConfig(temperature=1.0,
                                                                        top_k=top_k))
  assert _support(tokens) == support


def test_top_k_and_top_p_together():
  logits = _logits_with_probabilities(PROBABILITIES, 4000)
  # top_k=3 leaves [0.4, 0.3, 0.15]/0.85; top_p=0.8 then needs 0.47 + 0.35 = 0.82: tokens 1, 3.
  tokens = select_tokens(logits, jax.random.PRNGKey(2),
                         SamplingConfig(temperature=1.0, top_k=3, top_p=0.8))
  assert _support(tokens) == [1, 3]


def test_low_temperature_concentrates_on_argmax():
  logits = _logits_with_probabilities(PROBABILITIES, 2000)
  tokens = select_tokens(logits, jax.random.PRNGKey(4), SamplingConfig(temperature=0.01))
  assert _support(tokens) == [1]


def test_same_key_same_tokens_and_different_keys_differ():
  logits = jnp.asarray(np.random.RandomState(5).randn(64, 20), jnp.float32)
  sampling = SamplingConfig(temperature=1.0, top_k=10, top_p=0.9)
  first = select_tokens(logits, jax.random.PRNGKey(42), sampling)
  np.testing.assert_array_equal(first, select_tokens(logits, jax.random.PRNGKey(42), sampling))
  assert np.any(np.asarray(first) != np.asarray(select_tokens(logits, jax.random.PRNGKey(43),
                                                              sampling)))
  assert first.dtype == jnp.int32 and first.shape == (64,)


@pytest.mark.parametrize("fields, message", [
    (dict(temperature=-0.5), r"temperature must be >= 0 \(0 = greedy\), got -0.5"),
    (dict(temperature="hot"), r"temperature must be >= 0 \(0 = greedy\), got 'hot'"),
    (dict(top_k=-1), r"top_k must be an integer in \[0, 20\] \(0 = off\), got -1"),
    (dict(top_k=21), r"top_k must be an integer in \[0, 20\] \(0 = off\), got 21"),
    (dict(top_k=2.0), r"top_k must be an integer in \[0, 20\] \(0 = off\), got 2.0"),
    (dict(top_p=0.0), r"top_p must be in \(0, 1\] \(1 = off\), got 0.0"),
    (dict(top_p=1.5), r"top_p must be in \(0, 1\] \(1 = off\), got 1.5"),
])
def test_sampling_config_validate_rejects(fields, message):
  with pytest.raises(ValueError, match=message):
    SamplingConfig(**fields).validate(20)


def test_sampling_config_validate_accepts_and_greedy_flag():
  for fields in [dict(), dict(temperature=0.7, top_k=20, top_p=1.0), dict(top_k=0, top_p=0.01)]:
    SamplingConfig(**fields).validate(20)
  assert SamplingConfig().greedy and not SamplingConfig(temperature=0.1).greedy
