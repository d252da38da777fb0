"""Token selection (greedy, temperature, top-k, top-p) against exact supports and
frequencies, and SamplingConfig's checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from calm_jax.decoding.sampling import (SamplingConfig, row_keys, select_row_tokens,
                                        select_tokens)


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


def test_row_tokens_depend_only_on_the_row():
  # Choosing for a subset of rows (a layer bucket) gives those rows what choosing for the
  # whole batch gives them; each row samples with its own key.
  logits = jnp.asarray(np.random.RandomState(1).randn(6, 40), jnp.float32)
  keys = row_keys(jax.random.PRNGKey(3), 6)
  sampling = SamplingConfig(temperature=1.0, top_k=10, top_p=0.9)
  every = np.asarray(select_row_tokens(logits, keys, sampling))
  rows = jnp.asarray([4, 1, 5])
  np.testing.assert_array_equal(select_row_tokens(logits[rows], keys[rows], sampling),
                                every[np.asarray(rows)])
  for row in range(6):  # each row is a draw of select_tokens with its own key
    np.testing.assert_array_equal(select_tokens(logits[row:row + 1], keys[row], sampling),
                                  every[row:row + 1])
  assert len(set(every.tolist())) > 1
  np.testing.assert_array_equal(select_row_tokens(logits, None, SamplingConfig()),
                                np.argmax(np.asarray(logits), -1))


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
