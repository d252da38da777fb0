"""Hand-made study inputs with known answers, shared by the analysis tests (no model
involved). Each fixture is a function that makes fresh arrays."""

import numpy as np
import pytest

from calm_jax.analysis import oracle


@pytest.fixture
def layered():
  """Per-token layer values [N][L] -> [L, 1, N] with an all-true [1, N] mask."""
  def make(rows):
    values = np.asarray(rows).T[:, None, :]
    return values, np.ones(values.shape[1:], bool)
  return make


@pytest.fixture
def saturation_example():
  """Four sequences of up to two tokens over three layers: [L=3, B=4, T=2] and the mask."""
  def make():
    tokens = [[[0.9, 0.95, 1.0], [0.7, 0.85, 1.0]],  # score .85 (most saturated)
              [[0.5, 0.6, 1.0], [0.99, 0.99, 1.0]],  # score .55; its second token is padding
              [[0.2, 0.1, 1.0], [0.3, 0.5, 1.0]],  # score .275 (least saturated)
              [[0.6, 0.9, 1.0], [0.8, 0.7, 1.0]]]  # score .75
    mask = np.array([[True, True], [True, False], [True, True], [True, True]])
    return np.asarray(tokens).transpose(2, 0, 1), mask
  return make


@pytest.fixture
def decodes():
  """Two examples decoded by a 4-layer model: the full decode, the oracle with copied
  states and the oracle with every layer computed (the full decode's tokens)."""
  def make():
    full = oracle.DecodedOutputs("full", np.array([[10, 11, 1, 0], [12, 1, 0, 0]]),
                                 np.array([[4, 4, 4, 0], [4, 4, 0, 0]]), ["ab", "c"])
    copy = oracle.DecodedOutputs("oracle_copy_state", np.array([[10, 13, 1, 0], [12, 1, 0, 0]]),
                                 np.array([[1, 2, 3, 0], [2, 2, 0, 0]]), ["ad", "c"])
    true_cache = oracle.DecodedOutputs("oracle_full_compute", full.tokens,
                                       np.array([[1, 1, 4, 0], [3, 1, 0, 0]]), ["ab", "c"])
    return full, copy, true_cache
  return make
