"""Collecting the studies' inputs from a model (calm_jax.analysis.collect): in chunks or in
one batch, the same arrays."""

import numpy as np

from calm_jax.analysis import collect
from calm_jax.model.source import load_model
from calm_jax.modes import analyze as analyze_mode
from calm_jax.modes.context import run_context


def test_collection_in_chunks_equals_one_batch(analyze_config):
  config = analyze_config()
  model_config, params = load_model(config.model, config.seed)
  inputs = analyze_mode.analysis_inputs(run_context(config, ""), 6)
  whole = collect.teacher_forced(model_config, params, inputs, batch_size=0)
  chunked = collect.teacher_forced(model_config, params, inputs, batch_size=3)
  assert whole.top1.shape == chunked.top1.shape == (3, 6, 5)
  for name in ("top1", "final_rank", "targets", "mask"):
    np.testing.assert_array_equal(getattr(chunked, name), getattr(whole, name), err_msg=name)
  for name in ("top1_prob", "final_prob", "similarity"):
    np.testing.assert_allclose(getattr(chunked, name), getattr(whole, name), rtol=1e-5,
                               err_msg=name)
  assert list(collect._chunks(7, 3)) == [slice(0, 3), slice(3, 6), slice(6, 7)]
  assert list(collect._chunks(7, 0)) == [slice(0, 7)]
