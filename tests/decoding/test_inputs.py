"""Host-side argument checks of the decoding entry points (calm_jax.decoding.inputs): an
attention mask holds only 0 and 1, a threshold must be a number (TypeError), and NumPy
integers serve as lengths."""

import jax
import numpy as np
import pytest

from calm_jax.decoding import generate as generate_module
from calm_jax.decoding.exit_rule import ExitConfig
from calm_jax.decoding.generate import generate, generate_grid
from calm_jax.decoding.greedy import greedy_decode
from calm_jax.decoding.inputs import check_mask_values, prepare_inputs
from calm_jax.model.config import T5Config
from calm_jax.model.t5 import init_params

CONFIG = T5Config(vocab_size=53, d_model=16, d_kv=4, d_ff=24, num_layers=1,
                  num_decoder_layers=2, num_heads=2, feed_forward_proj="gated-gelu",
                  tie_word_embeddings=False)
IDS = np.array([[5, 6, 7, 1], [8, 9, 1, 0]], np.int32)
MASK = (IDS != 0).astype(np.int32)


@pytest.mark.parametrize("mask, message", [
    (np.where(MASK == 1, 2, 0), r"attention_mask\[0, 0\] = 2"),
    (np.where(MASK == 1, 0.5, 0.0), r"attention_mask\[0, 0\] = 0.5"),
    (np.array([[1, 1, 1, 1], [1, 1, 1, -1]]), r"attention_mask\[1, 3\] = -1"),
    (np.full((2, 4), "1"), "attention_mask must hold 0 and 1, got dtype <U1"),
])
def test_a_mask_other_than_zero_and_one_is_refused_before_compiling(mask, message):
  params = init_params(CONFIG, jax.random.PRNGKey(0))
  before = generate_module._generate_jit._cache_size()
  with pytest.raises(ValueError, match=message):
    generate(CONFIG, params, IDS, mask, max_decode_len=3)
  assert generate_module._generate_jit._cache_size() == before


def test_zero_one_masks_of_any_dtype_pass():
  for mask in (MASK, MASK.astype(bool), MASK.astype(np.float32)):
    check_mask_values(mask)
    _, prepared = prepare_inputs(CONFIG, IDS, mask, None)
    np.testing.assert_array_equal(np.asarray(prepared), MASK)


@pytest.mark.parametrize("field", ["threshold", "tau"])
def test_a_threshold_that_is_no_number_is_a_type_error(field):
  params = init_params(CONFIG, jax.random.PRNGKey(0))
  with pytest.raises(TypeError, match=f"ExitConfig.{field} must be a real number, got str "
                     "'0.5'"):
    generate(CONFIG, params, IDS, MASK, exit=ExitConfig(**{field: "0.5"}), max_decode_len=3)


def test_numpy_integer_lengths_decode_as_python_ones():
  params = init_params(CONFIG, jax.random.PRNGKey(1))
  expected = generate(CONFIG, params, IDS, MASK, exit=ExitConfig(threshold=0.5),
                      max_decode_len=3, max_input_len=3)
  got = generate(CONFIG, params, IDS, MASK, exit=ExitConfig(threshold=0.5),
                 max_decode_len=np.int64(3), max_input_len=np.int32(3))
  np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(expected.tokens))
  np.testing.assert_array_equal(np.asarray(got.exit_layers), np.asarray(expected.exit_layers))
  tokens = greedy_decode(CONFIG, params, IDS, MASK, max_decode_len=np.int64(3))
  assert np.asarray(tokens).shape == (2, 3)
  for bad in (np.bool_(True), 2.0, "3"):
    with pytest.raises(ValueError, match="max_decode_len must be a positive integer"):
      generate(CONFIG, params, IDS, MASK, max_decode_len=bad)


def test_a_threshold_grid_of_strings_is_a_type_error_not_converted():
  params = init_params(CONFIG, jax.random.PRNGKey(0))
  for thresholds in (["0.5", "0.2"], [0.5, None]):
    with pytest.raises(TypeError, match="thresholds must be real numbers"):
      generate_grid(CONFIG, params, IDS, MASK, thresholds=thresholds, max_decode_len=3)
