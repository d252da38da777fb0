"""The byte vocabulary (calm_jax.data.byte_vocab): ids, padding and decoding."""

import numpy as np

from calm_jax.data import byte_vocab


def test_byte_vocab_round_trip_and_padding():
  ids, mask = byte_vocab.encode_batch(["ab", "é"], 4)
  np.testing.assert_array_equal(ids, [[100, 101, 1, 0], [198, 172, 1, 0]])
  np.testing.assert_array_equal(mask, [[1, 1, 1, 0], [1, 1, 1, 0]])
  assert byte_vocab.decode([100, 101, 1, 102]) == "ab"
  assert byte_vocab.decode(ids[1]) == "é"
