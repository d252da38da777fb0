"""Params exports (calm_jax.training.checkpoints): the round trip, an export as a model
source, and a corrupt export named with what to do."""

import os
import re

import jax
import numpy as np
import pytest

from calm_jax.model.t5 import init_params
from calm_jax.training.checkpoints import (export_kd_map, export_params, load_exported,
                                          load_kd_map)


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


def test_a_corrupt_export_names_the_file_and_what_to_do(tmp_path, tiny_config):
  from calm_jax.model.source import source_config  # pylint: disable=import-outside-toplevel
  import ml_collections  # pylint: disable=import-outside-toplevel
  directory = str(tmp_path / "model")
  export_params(directory, tiny_config, init_params(tiny_config, jax.random.PRNGKey(0)))
  section = ml_collections.ConfigDict({"hf_path": "", "checkpoint": directory})
  assert source_config(section) == tiny_config  # read without the parameters
  config_path = os.path.join(directory, "config.json")
  text = open(config_path, encoding="utf-8").read()
  with open(config_path, "w", encoding="utf-8") as f:
    f.write(text[:len(text) // 2])
  with pytest.raises(ValueError, match=f"^{re.escape(config_path)} line \\d+: not valid JSON "
                     r"\(.*\); the export is incomplete or corrupt: export it again"):
    source_config(section)
  with open(config_path, "w", encoding="utf-8") as f:
    f.write(text)
  # Truncate every data file of the Orbax parameters.
  for root, _, names in os.walk(os.path.join(directory, "params")):
    for name in names:
      path = os.path.join(root, name)
      if os.path.getsize(path) > 64 and not name.endswith(".json"):
        with open(path, "r+b") as f:
          f.truncate(os.path.getsize(path) // 3)
  with pytest.raises(ValueError, match=f"^{re.escape(os.path.join(directory, 'params'))}: the "
                     r"exported parameters cannot be read \(.*\); it is incomplete or corrupt: "
                     "delete it .* or export it again$") as error:
    load_exported(directory)
  assert "\n" not in str(error.value)


def test_a_learned_kd_map_is_saved_with_the_export_and_removed_by_one_without(tmp_path):
  directory = str(tmp_path / "model")
  os.makedirs(directory)
  assert load_kd_map(directory) is None
  kd_map = np.arange(9, dtype=np.float32).reshape(3, 3)
  export_kd_map(directory, jax.numpy.asarray(kd_map))
  np.testing.assert_array_equal(load_kd_map(directory), kd_map)
  assert sorted(os.listdir(directory)) == ["kd_map.npy"]  # no temporary file left
  export_kd_map(directory, None)  # an export trained without a map holds none
  assert load_kd_map(directory) is None
