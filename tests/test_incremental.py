"""Incremental decoding with the KV cache against the teacher-forced forward and
transformers' greedy generation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import calm_jax
from calm_jax.decoding.greedy import greedy_decode
from calm_jax.model.incremental import decoder_step, init_decoder_cache, write_self_kv
from calm_jax.model.t5 import encode, shift_right
from hf_models import V10, V11, save_random_hf_t5


@pytest.fixture(scope="module", params=[("v1.0", V10), ("v1.1", V11)], ids=lambda p: p[0])
def imported(request, tmp_path_factory):
  directory = tmp_path_factory.mktemp(request.param[0])
  model = save_random_hf_t5(directory, seed=5, scale=1.5, **request.param[1])
  config, params = calm_jax.load_hf_t5(str(directory))
  return model, config, params


def _inputs(vocab, seed=0):
  rng = np.random.RandomState(seed)
  ids = rng.randint(2, vocab, (4, 13))
  mask = np.ones_like(ids)
  mask[2, 7:] = 0
  ids[2, 7:] = 0
  return ids, mask


def test_incremental_states_equal_teacher_forced(imported):
  _, config, params = imported
  ids, mask = _inputs(config.vocab_size)
  targets = np.random.RandomState(1).randint(2, config.vocab_size, (4, 9))
  decoder_inputs = shift_right(config, jnp.asarray(targets))
  teacher = calm_jax.forward(config, params, ids, decoder_inputs, mask).hidden_states
  cache = init_decoder_cache(config, params, encode(config, params, ids, mask), mask, 9)
  step = jax.jit(lambda cache, token, t: decoder_step(config, params, cache, token, t))
  for position in range(9):
    states, cache = step(cache, decoder_inputs[:, position], jnp.int32(position))
    assert states.shape == (config.num_decoder_layers, 4, config.d_model)
    np.testing.assert_allclose(states, teacher[:, :, position], atol=1e-4, rtol=0)


def test_greedy_equals_transformers_generate(imported):
  model, config, params = imported
  ids, mask = _inputs(config.vocab_size, seed=2)
  ours = np.asarray(greedy_decode(config, params, ids, mask, max_decode_len=10))
  with torch.no_grad():
    # use_cache=False: transformers 5.23's cache breaks when decoder and encoder depths differ.
    theirs = model.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                            max_new_tokens=10, do_sample=False, num_beams=1,
                            use_cache=False).numpy()[:, 1:]  # drop the start token
  assert len(set(ours.ravel().tolist())) >= 4, "degenerate test model: outputs do not vary"
  assert np.any(ours[:, 1:] != ours[:, :-1]), "degenerate test model: no row changes token"
  np.testing.assert_array_equal(ours[:, :theirs.shape[1]], theirs)


def test_greedy_equals_argmax_of_teacher_forced_on_its_own_output(imported):
  _, config, params = imported
  ids, mask = _inputs(config.vocab_size, seed=3)
  tokens = greedy_decode(config, params, ids, mask, max_decode_len=8)
  logits = calm_jax.forward(config, params, ids, shift_right(config, tokens), mask).logits
  predicted = np.asarray(jnp.argmax(logits, -1))
  finished = np.cumsum(np.asarray(tokens) == config.eos_token_id, axis=1) > 0
  before_eos = ~np.concatenate([np.zeros((4, 1), bool), finished[:, :-1]], axis=1)
  np.testing.assert_array_equal(predicted[before_eos], np.asarray(tokens)[before_eos])


def test_greedy_stops_each_example_at_its_eos_and_pads_after(imported):
  _, config, params = imported
  ids, mask = _inputs(config.vocab_size, seed=2)
  unused = sorted(set(range(2, config.vocab_size)) - set(np.asarray(
      greedy_decode(config, params, ids, mask, max_decode_len=10)).ravel().tolist()))[0]
  free = np.asarray(greedy_decode(config.replace(eos_token_id=unused), params, ids, mask,
                                  max_decode_len=10))
  eos = int(free[1, 1] if free[1, 1] != free[1, 0] else free[1, -1])
  stopped = np.asarray(greedy_decode(config.replace(eos_token_id=eos), params, ids, mask,
                                     max_decode_len=10))
  for row_free, row_stopped in zip(free, stopped):
    hits = np.flatnonzero(row_free == eos)
    end = hits[0] + 1 if hits.size else len(row_free)
    np.testing.assert_array_equal(row_stopped[:end], row_free[:end])
    np.testing.assert_array_equal(row_stopped[end:], config.pad_token_id)
  assert (stopped == config.pad_token_id).any(), "EOS never hit: the test checks nothing"


def test_write_self_kv_fills_one_layer_and_position(imported):
  _, config, params = imported
  ids, mask = _inputs(config.vocab_size)
  cache = init_decoder_cache(config, params, encode(config, params, ids, mask), mask, 6)
  x = jnp.ones((4, 1, config.d_model))
  written = write_self_kv(config, params, cache, jnp.int32(2), x, jnp.int32(3))
  changed = np.argwhere(np.any(np.asarray(written.self_k) != 0, axis=(1, 2, 4)))
  np.testing.assert_array_equal(changed, [[2, 3]])  # (layer, position)
  # Equals the layer's own norm + K projection applied directly.
  layer = jax.tree.map(lambda p: p[2], params["decoder"]["layers"])
  normed = x / np.sqrt(np.mean(np.square(x), -1, keepdims=True) + config.layer_norm_epsilon)
  normed = normed * np.asarray(layer["self_attn_norm"]["scale"])
  keys = np.asarray(normed[:, 0] @ np.asarray(layer["self_attn"]["k"]["kernel"]))
  keys = keys.reshape(4, config.num_heads, config.d_kv)
  np.testing.assert_allclose(written.self_k[2, :, :, 3], keys, atol=1e-5, rtol=0)


@pytest.mark.parametrize("bad, message", [
    (dict(max_decode_len=0), "max_decode_len must be a positive integer, got 0"),
    (dict(max_decode_len=2.5), "max_decode_len must be a positive integer, got 2.5"),
    (dict(input_ids=np.zeros((3,), np.int32)), r"input_ids must have shape \[batch, length\]"),
    (dict(input_ids=np.zeros((2, 3), np.float32)), "integer token ids, got dtype float32"),
])
def test_greedy_rejects_bad_arguments(bad, message):
  config = calm_jax.T5Config(**V10)
  args = dict(input_ids=np.zeros((2, 3), np.int32), max_decode_len=4)
  args.update(bad)
  with pytest.raises(ValueError, match=message):
    greedy_decode(config, {}, args["input_ids"], max_decode_len=args["max_decode_len"])
