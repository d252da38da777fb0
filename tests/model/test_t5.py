"""Our Flax T5 against transformers' PyTorch T5 on the same random weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import calm_jax
from calm_jax.model.t5 import decode_teacher_forced, encode, shift_right

TOL = 1e-4


def _inputs(vocab, seed=0, batch=3, length=19, target_length=14):
  rng = np.random.RandomState(seed)
  ids = rng.randint(2, vocab, (batch, length))
  mask = np.ones_like(ids)
  mask[1, 11:] = 0  # a padded example
  ids[1, 11:] = 0
  decoder_ids = rng.randint(2, vocab, (batch, target_length))
  decoder_ids[:, 0] = 0
  return ids, mask, decoder_ids


def _hf_outputs(model, ids, mask, decoder_ids):
  with torch.no_grad():
    return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                 decoder_input_ids=torch.tensor(decoder_ids), output_hidden_states=True)


def _hf_head(model, hidden):
  """transformers' own final norm, scaling and LM head on a decoder layer's state."""
  with torch.no_grad():
    normed = model.decoder.final_layer_norm(hidden)
    if model.config.scale_decoder_outputs:
      normed = normed * model.config.d_model ** -0.5
    return model.lm_head(normed).numpy()


@pytest.fixture(scope="module", params=["v1.0", "v1.1"])
def imported(request, tmp_path_factory, t5_versions, save_random_hf_t5):
  directory = tmp_path_factory.mktemp(request.param)
  model = save_random_hf_t5(directory, seed=3, **t5_versions[request.param])
  config, params = calm_jax.load_hf_t5(str(directory))
  return model, config, params


def test_final_logits_match_transformers(imported):
  model, config, params = imported
  ids, mask, decoder_ids = _inputs(config.vocab_size)
  ours = calm_jax.forward(config, params, ids, decoder_ids, mask)
  theirs = _hf_outputs(model, ids, mask, decoder_ids)
  assert ours.logits.shape == (3, 14, config.vocab_size)
  np.testing.assert_allclose(ours.logits, theirs.logits.numpy(), atol=TOL, rtol=0)
  np.testing.assert_allclose(ours.encoded, theirs.encoder_last_hidden_state.numpy(), atol=TOL,
                             rtol=0)


def test_intermediate_layers_through_shared_head_match_transformers(imported):
  model, config, params = imported
  ids, mask, decoder_ids = _inputs(config.vocab_size, seed=1)
  ours = calm_jax.forward(config, params, ids, decoder_ids, mask)
  theirs = _hf_outputs(model, ids, mask, decoder_ids)
  assert ours.hidden_states.shape == (config.num_decoder_layers, 3, 14, config.d_model)
  # transformers' hidden_states: embeddings, then layers 1..L-1, then the normed last layer.
  for layer in range(1, config.num_decoder_layers):
    hf_state = theirs.decoder_hidden_states[layer]
    np.testing.assert_allclose(ours.hidden_states[layer - 1], hf_state.numpy(), atol=TOL, rtol=0)
    ours_logits = calm_jax.exit_logits(config, params, ours.hidden_states[layer - 1])
    np.testing.assert_allclose(ours_logits, _hf_head(model, hf_state), atol=TOL, rtol=0)
  # The last layer through the shared head is the model's own output.
  np.testing.assert_allclose(calm_jax.exit_logits(config, params, ours.hidden_states[-1]),
                             ours.logits, atol=1e-6, rtol=0)


def test_head_scaling_follows_version(imported):
  _, config, _ = imported
  assert config.scale_decoder_outputs == (config.feed_forward_proj == "relu")
  assert config.num_decoder_layers != config.num_layers
  assert config.inner_dim != config.d_model


def test_padding_does_not_change_unpadded_positions(imported):
  _, config, params = imported
  ids, mask, decoder_ids = _inputs(config.vocab_size, seed=2)
  full = calm_jax.forward(config, params, ids, decoder_ids, mask).logits[1]
  trimmed = calm_jax.forward(config, params, ids[1:2, :11], decoder_ids[1:2]).logits[0]
  np.testing.assert_allclose(full, trimmed, atol=TOL, rtol=0)


def test_dropout_only_when_not_deterministic(t5_v11):
  config = calm_jax.T5Config(**{k: v for k, v in t5_v11.items()}, dropout_rate=0.3)
  params = calm_jax.init_params(config, jax.random.PRNGKey(0))
  ids, mask, decoder_ids = _inputs(config.vocab_size)
  a = calm_jax.forward(config, params, ids, decoder_ids, mask).logits
  b = calm_jax.forward(config, params, ids, decoder_ids, mask).logits
  np.testing.assert_array_equal(a, b)
  rng = jax.random.PRNGKey(1)
  c = calm_jax.forward(config, params, ids, decoder_ids, mask, deterministic=False, rng=rng).logits
  d = calm_jax.forward(config, params, ids, decoder_ids, mask, deterministic=False, rng=rng).logits
  e = calm_jax.forward(config, params, ids, decoder_ids, mask, deterministic=False,
                       rng=jax.random.PRNGKey(2)).logits
  np.testing.assert_array_equal(c, d)  # same key, same mask
  assert np.abs(np.asarray(c) - np.asarray(a)).max() > 1e-3
  assert np.abs(np.asarray(c) - np.asarray(e)).max() > 1e-3


def test_bfloat16_is_close_to_float32(imported):
  _, config, params = imported
  ids, mask, decoder_ids = _inputs(config.vocab_size)
  reference = calm_jax.forward(config, params, ids, decoder_ids, mask).logits
  bf16 = config.replace(dtype="bfloat16", param_dtype="bfloat16")
  bf16_params = jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), params)
  out = calm_jax.forward(bf16, bf16_params, ids, decoder_ids, mask)
  assert out.hidden_states.dtype == jnp.bfloat16
  assert out.logits.dtype == jnp.float32
  reference, logits = np.asarray(reference), np.asarray(out.logits)
  assert np.mean(np.abs(logits - reference)) < 0.06 * np.mean(np.abs(reference))
  assert np.mean(logits.argmax(-1) == reference.argmax(-1)) > 0.8


def test_init_params_shapes_are_stacked_by_layer(t5_v10, t5_v11):
  config = calm_jax.T5Config(**t5_v11)
  params = calm_jax.init_params(config, jax.random.PRNGKey(0))
  layers = params["decoder"]["layers"]
  assert layers["self_attn"]["q"]["kernel"].shape == (4, 20, 16)
  assert layers["ffn"]["wi_0"]["kernel"].shape == (4, 20, 24)
  assert params["encoder"]["layers"]["ffn"]["wo"]["kernel"].shape == (3, 24, 20)
  assert params["lm_head"]["kernel"].shape == (20, 67)
  # Independent layers, not copies of one.
  assert not np.allclose(layers["self_attn"]["q"]["kernel"][0], layers["self_attn"]["q"]["kernel"][1])
  tied = calm_jax.init_params(calm_jax.T5Config(**t5_v10), jax.random.PRNGKey(0))
  assert "lm_head" not in tied


def test_shift_right_prepends_start_token(t5_v10):
  config = calm_jax.T5Config(**t5_v10)
  shifted = shift_right(config, jnp.array([[5, 6, 7, 1]]))
  np.testing.assert_array_equal(shifted, [[0, 5, 6, 7]])


def test_encode_and_decode_compose_to_forward(imported):
  _, config, params = imported
  ids, mask, decoder_ids = _inputs(config.vocab_size)
  encoded = encode(config, params, ids, mask)
  states = decode_teacher_forced(config, params, decoder_ids, encoded, mask)
  np.testing.assert_allclose(states, calm_jax.forward(config, params, ids, decoder_ids, mask)
                             .hidden_states, atol=1e-6, rtol=0)


def test_init_params_has_the_imported_tree(imported):
  _, config, params = imported
  fresh = calm_jax.init_params(config, jax.random.PRNGKey(0))
  shapes = lambda tree: jax.tree.map(lambda x: (tuple(x.shape), str(x.dtype)), tree)
  assert shapes(fresh) == shapes(params)
