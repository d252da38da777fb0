"""Checks shared by the measure test files."""

import dataclasses

import jax
import numpy as np

from calm_jax.decoding.generate import generate, generate_with_thresholds


def assert_mixed_batch_equals_each_alone(model, exit_config, lam: float, max_decode_len: int):
  """A batch whose rows use thresholds around `lam` (so their exit layers differ) decodes
  every row exactly as that row alone: tokens, exit layers and the confidence trace."""
  config, params, ids, mask, _ = model
  thresholds = [lam, 0.7 * lam, 1.0, 1.3 * lam]
  both = jax.tree.map(np.asarray, generate_with_thresholds(
      config, params, ids, mask, thresholds=thresholds, exit=exit_config,
      max_decode_len=max_decode_len, return_trace=True))
  generated = both.exit_layers > 0
  assert any(len(np.unique(both.exit_layers[generated[:, t], t])) > 1
             for t in range(max_decode_len))
  for row, threshold in enumerate(thresholds):
    alone = jax.tree.map(np.asarray, generate(
        config, params, ids[row:row + 1], mask[row:row + 1],
        exit=dataclasses.replace(exit_config, threshold=threshold),
        max_decode_len=max_decode_len, return_trace=True))
    np.testing.assert_array_equal(alone.tokens[0], both.tokens[row], err_msg=f"row {row}")
    np.testing.assert_array_equal(alone.exit_layers[0], both.exit_layers[row])
    np.testing.assert_allclose(alone.trace[0], both.trace[row], atol=1e-5)
