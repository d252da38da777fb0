"""Params exports (calm_jax.training.checkpoints): the round trip, and an export as a model
source."""

import jax
import numpy as np
import pytest

from calm_jax.model.t5 import init_params
from calm_jax.training.checkpoints import export_params, load_exported


def test_export_round_trip_and_model_source(tmp_path, tiny_config):
  import ml_collections  # pylint: disable=import-outside-toplevel
  from calm_jax.model.source import load_model  # pylint: disable=import-outside-toplevel
  params = init_params(tiny_config, jax.random.PRNGKey(2))
  export_params(str(tmp_path / "model"), tiny_config, params)
  config, loaded = load_exported(str(tmp_path / "model"))
  assert config == tiny_config
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  section = ml_collections.ConfigDict({"hf_path": "", "checkpoint": str(tmp_path / "model")})
  assert load_model(section, seed=0)[0] == tiny_config
  with pytest.raises(ValueError, match="is not a calm_jax params export"):
    load_model(ml_collections.ConfigDict({"hf_path": "", "checkpoint": str(tmp_path)}), 0)
  with pytest.raises(ValueError, match="are both set; name one model source"):
    load_model(ml_collections.ConfigDict({"hf_path": "x", "checkpoint": "y"}), 0)
