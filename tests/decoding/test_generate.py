"""The public entry points (`generate`, `generate_with_thresholds`, `generate_grid`): every
bad argument is rejected before anything is compiled (their outputs: test_early_exit.py);
`decode_fixed_part` against the model's own encoder and cross-attention K/V."""

import types

import jax
import numpy as np
import pytest

from calm_jax.decoding import generate as generate_module
from calm_jax.decoding.exit_rule import ExitConfig
from calm_jax.decoding.generate import (decode_fixed_part, generate, generate_grid,
                                        generate_with_thresholds)
from calm_jax.decoding.sampling import SamplingConfig
from calm_jax.exit_classifiers.registry import init_classifier
from calm_jax.model.config import T5Config
from calm_jax.model.t5 import cross_kv_all_layers, encode, init_params

# test_early_exit.py's model (T5 v1.1 style, six decoder layers) and its padded batch of 8;
# nothing here decodes, so random parameters do.
SPEC = dict(vocab_size=53, d_model=16, d_kv=4, d_ff=24, num_layers=2, num_decoder_layers=6,
            num_heads=4, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
            relative_attention_num_buckets=8, relative_attention_max_distance=16)
L = SPEC["num_decoder_layers"]
T = 10  # max_decode_len of every call
LENGTHS = [9, 4, 6, 9, 6, 4, 9, 6]  # unpadded input lengths of the batch (padded to 9)


@pytest.fixture(scope="module")
def model():
  config = T5Config(**SPEC)
  rng = np.random.RandomState(0)
  ids = rng.randint(2, config.vocab_size, (len(LENGTHS), max(LENGTHS)))
  mask = np.ones_like(ids)
  for row, length in enumerate(LENGTHS):
    ids[row, length:] = 0
    mask[row, length:] = 0
  return types.SimpleNamespace(config=config, params=init_params(config, jax.random.PRNGKey(5)),
                               ids=ids, mask=mask)


def test_sampling_without_rng_is_rejected(model):
  with pytest.raises(ValueError, match=r"sampling \(temperature > 0\) needs an explicit rng key"):
    generate(model.config, model.params, model.ids, model.mask, max_decode_len=T,
             sampling=SamplingConfig(temperature=1.0))


# --- 10. bad input ----------------------------------------------------------------------

@pytest.mark.parametrize("change, message", [
    (dict(exit=ExitConfig(measure="bogus")), "unknown confidence measure 'bogus'; registered: "
     "attention, .*, monotone_heuristic, oracle, softmax_diff, softmax_max, .*, "
     "state_saturation, static, three_state_mlp$"),
    (dict(exit=ExitConfig(threshold=-0.1)), r"threshold \(lambda\) must be >= 0, got -0.1"),
    (dict(exit=ExitConfig(tau=-1)), "ExitConfig.tau must be >= 0, got -1"),
    (dict(exit=ExitConfig(min_exit_layer=L + 1)), r"min_exit_layer=7 must be in \[1, 6\]"),
    (dict(input_ids=np.zeros((0, 5), np.int32)),
     r"input_ids must have shape \[batch, length\] with both >= 1, got \(0, 5\)"),
    (dict(input_ids=np.zeros((2, 0), np.int32)),
     r"input_ids must have shape \[batch, length\] with both >= 1, got \(2, 0\)"),
    (dict(input_ids=np.zeros((5,), np.int32)), r"input_ids must have shape \[batch, length\]"),
    (dict(input_ids=np.zeros((2, 3), np.float32)), "integer token ids, got dtype float32"),
    (dict(max_decode_len=0), "max_decode_len must be a positive integer, got 0"),
    (dict(input_ids=np.full((2, 3), 53)), r"input_ids must lie in \[0, 53\), got values in "
     r"\[53, 53\]"),
    (dict(input_ids=np.full((2, 3), -1)), r"input_ids must lie in \[0, 53\)"),
    (dict(attention_mask=np.ones((8, 8), np.int32)),
     r"attention_mask shape \(8, 8\) differs from input_ids shape \(8, 9\)"),
    (dict(max_input_len=0), "max_input_len must be >= 1, got 0"),
    (dict(sampling=SamplingConfig(top_p=0.0), rng=jax.random.PRNGKey(0)), r"top_p must be in"),
])
def test_bad_arguments_are_rejected_before_compiling(model, change, message):
  args = dict(input_ids=model.ids, attention_mask=model.mask, exit=ExitConfig(),
              max_decode_len=T)
  args.update(change)
  before = (generate_module._generate_jit._cache_size(),
            generate_module._generate_grid_jit._cache_size())
  input_ids, attention_mask = args.pop("input_ids"), args.pop("attention_mask")
  with pytest.raises(ValueError, match=message):
    generate(model.config, model.params, input_ids, attention_mask, **args)
  with pytest.raises(ValueError, match=message):
    generate_grid(model.config, model.params, input_ids, attention_mask, thresholds=[0.5],
                  **args)
  assert (generate_module._generate_jit._cache_size(),
          generate_module._generate_grid_jit._cache_size()) == before


@pytest.mark.parametrize("thresholds, message", [
    ([], r"non-empty 1-D list, got shape \(0,\)"), ([[0.5]], r"non-empty 1-D list"),
    ([0.5, -0.1], r"finite and >= 0; thresholds\[1\] = -0.1"),
    ([float("nan")], r"finite and >= 0; thresholds\[0\] = nan")])
def test_generate_grid_rejects_bad_thresholds(model, thresholds, message):
  with pytest.raises(ValueError, match=message):
    generate_grid(model.config, model.params, model.ids, model.mask, thresholds=thresholds,
                  max_decode_len=T)


@pytest.mark.parametrize("measure, head, message", [
    ("lstm", None, "measure 'lstm' is a learned exit classifier and needs its parameters"),
    ("meta_mlp", "lstm", "parameters do not look like an exit classifier 'meta_mlp'"),
    ("meta_linear", "meta_linear32", r"parameter \['norm'\]\['scale'\] has shape \(32,\), "
     r"expected \(16,\)"),
    ("softmax_diff", "lstm", "classifier_params given, but measure 'softmax_diff' is not a "
     "learned exit classifier"),
])
def test_decoding_with_bad_classifier_params_fails_before_compiling(classifier_model, measure,
                                                                    head, message):
  model = classifier_model
  heads = dict(model.heads, meta_linear32=init_classifier(
      "meta_linear", model.base_config.replace(d_model=32), jax.random.PRNGKey(0)))
  params = None if head is None else heads[head]
  before = generate_module._generate_jit._cache_size()
  with pytest.raises(ValueError, match=message):
    generate(model.config, model.params, model.ids, model.mask,
             exit=ExitConfig(measure=measure, threshold=0.5),
             max_decode_len=model.max_decode_len, classifier_params=params)
  with pytest.raises(ValueError, match=message):
    generate_with_thresholds(model.config, model.params, model.ids, model.mask,
                             thresholds=[0.5] * len(model.ids),
                             exit=ExitConfig(measure=measure),
                             max_decode_len=model.max_decode_len, classifier_params=params)
  assert generate_module._generate_jit._cache_size() == before


@pytest.mark.parametrize("layout", ["stacked", "per_layer"])
def test_decode_fixed_part_computes_every_layers_cross_kv(model, layout):
  # What every decode starts with, on its own: per row, the sum of its cross-attention K/V
  # over all layers, as the model's own encoder and projections give it.
  out = decode_fixed_part(model.config, model.params, model.ids, model.mask,
                          max_decode_len=T, layer_layout=layout)
  encoded = encode(model.config, model.params, model.ids, model.mask)
  cross_k, cross_v = cross_kv_all_layers(model.config, model.params, encoded)  # [L, B, ...]
  expected = (np.asarray(cross_k, np.float64).sum(axis=(0, 2, 3, 4))
              + np.asarray(cross_v, np.float64).sum(axis=(0, 2, 3, 4)))  # [B]
  assert out.shape == (len(LENGTHS),)
  np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-4, atol=1e-3)
  with pytest.raises(ValueError, match=r"input_ids must have shape \[batch, length\]"):
    decode_fixed_part(model.config, model.params, model.ids[0], max_decode_len=T)
