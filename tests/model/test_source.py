"""Where a run's model comes from (calm_jax.model.source): the `model` section's fields."""

import ml_collections
import pytest

from calm_jax.model.source import t5_config_from


def test_model_section_rejects_unknown_fields(demo_config):
  model = ml_collections.ConfigDict(dict(demo_config().model))
  model.d_modle = 3
  with pytest.raises(ValueError, match=r"unknown T5Config fields \['d_modle'\]"):
    t5_config_from(model)


def test_the_source_is_described_as_loaded():
  # pylint: disable=import-outside-toplevel
  from calm_jax.model.source import describe_source, is_random
  export = ml_collections.ConfigDict({"hf_path": "", "checkpoint": "/w/model"})
  hf = ml_collections.ConfigDict({"hf_path": "/models/t5", "checkpoint": ""})
  fresh = ml_collections.ConfigDict({"hf_path": "", "checkpoint": ""})
  assert describe_source(export, 0) == "calm_jax export /w/model"
  assert describe_source(hf, 0) == "Hugging Face checkpoint /models/t5"
  assert describe_source(fresh, 3) == "fresh random initialisation (seed 3, untrained)"
  assert [is_random(s) for s in (export, hf, fresh)] == [False, False, True]
