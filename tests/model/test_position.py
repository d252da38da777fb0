"""Relative position buckets against transformers' implementation and hand-checked values."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers.models.t5.modeling_t5 import T5Attention

from calm_jax.model.position import relative_position_bias, relative_position_bucket


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets, max_distance", [(32, 128), (8, 20), (10, 16)])
def test_buckets_match_transformers(bidirectional, num_buckets, max_distance):
  relative = np.arange(-300, 301)
  ours = relative_position_bucket(jnp.asarray(relative), bidirectional=bidirectional,
                                  num_buckets=num_buckets, max_distance=max_distance)
  theirs = T5Attention._relative_position_bucket(  # pylint: disable=protected-access
      torch.tensor(relative), bidirectional=bidirectional, num_buckets=num_buckets,
      max_distance=max_distance)
  np.testing.assert_array_equal(ours, theirs.numpy())


def test_causal_buckets_by_hand():
  # 32 causal buckets: distances 0..15 exact, then log-spaced up to 128, then saturated.
  relative = jnp.asarray([0, -1, -15, -16, -127, -128, -500, 5])
  buckets = relative_position_bucket(relative, bidirectional=False, num_buckets=32,
                                     max_distance=128)
  np.testing.assert_array_equal(buckets, [0, 1, 15, 16, 31, 31, 31, 0])


def test_bias_row_at_offset_equals_row_of_full_bias():
  table = jnp.asarray(np.random.RandomState(0).randn(8, 3), jnp.float32)
  full = relative_position_bias(table, 12, 12, bidirectional=False, max_distance=20)
  row = relative_position_bias(table, 1, 12, bidirectional=False, max_distance=20,
                               query_offset=7)
  assert full.shape == (3, 12, 12) and row.shape == (3, 1, 12)
  np.testing.assert_array_equal(row[:, 0], full[:, 7])
