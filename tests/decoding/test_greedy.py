"""Greedy decoding (calm_jax.decoding.greedy) against transformers' greedy generation and
the teacher-forced forward on its own output; EOS handling and argument checks."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import calm_jax
from calm_jax.decoding.greedy import greedy_decode
from calm_jax.model.t5 import shift_right


def test_greedy_equals_transformers_generate(imported_t5, padded_inputs):
  model, config, params = imported_t5
  ids, mask = padded_inputs(config.vocab_size, seed=2)
  ours = np.asarray(greedy_decode(config, params, ids, mask, max_decode_len=10))
  with torch.no_grad():
    # use_cache=False: transformers 5.23's cache breaks when decoder and encoder depths differ.
    theirs = model.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                            max_new_tokens=10, do_sample=False, num_beams=1,
                            use_cache=False).numpy()[:, 1:]  # drop the start token
  assert len(set(ours.ravel().tolist())) >= 4, "degenerate test model: outputs do not vary"
  assert np.any(ours[:, 1:] != ours[:, :-1]), "degenerate test model: no row changes token"
  np.testing.assert_array_equal(ours[:, :theirs.shape[1]], theirs)


def test_greedy_equals_argmax_of_teacher_forced_on_its_own_output(imported_t5, padded_inputs):
  _, config, params = imported_t5
  ids, mask = padded_inputs(config.vocab_size, seed=3)
  tokens = greedy_decode(config, params, ids, mask, max_decode_len=8)
  logits = calm_jax.forward(config, params, ids, shift_right(config, tokens), mask).logits
  predicted = np.asarray(jnp.argmax(logits, -1))
  finished = np.cumsum(np.asarray(tokens) == config.eos_token_id, axis=1) > 0
  before_eos = ~np.concatenate([np.zeros((4, 1), bool), finished[:, :-1]], axis=1)
  np.testing.assert_array_equal(predicted[before_eos], np.asarray(tokens)[before_eos])


def test_greedy_stops_each_example_at_its_eos_and_pads_after(imported_t5, padded_inputs):
  _, config, params = imported_t5
  ids, mask = padded_inputs(config.vocab_size, seed=2)
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


@pytest.mark.parametrize("bad, message", [
    (dict(max_decode_len=0), "max_decode_len must be a positive integer, got 0"),
    (dict(max_decode_len=2.5), "max_decode_len must be a positive integer, got 2.5"),
    (dict(input_ids=np.zeros((3,), np.int32)), r"input_ids must have shape \[batch, length\]"),
    (dict(input_ids=np.zeros((2, 3), np.float32)), "integer token ids, got dtype float32"),
])
def test_greedy_rejects_bad_arguments(bad, message, t5_v10):
  config = calm_jax.T5Config(**t5_v10)
  args = dict(input_ids=np.zeros((2, 3), np.int32), max_decode_len=4)
  args.update(bad)
  with pytest.raises(ValueError, match=message):
    greedy_decode(config, {}, args["input_ids"], max_decode_len=args["max_decode_len"])
