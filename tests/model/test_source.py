"""Where a run's model comes from (calm_jax.model.source): the `model` section's fields."""

import ml_collections
import pytest

from calm_jax.model.source import t5_config_from


def test_model_section_rejects_unknown_fields(demo_config):
  model = ml_collections.ConfigDict(dict(demo_config().model))
  model.d_modle = 3
  with pytest.raises(ValueError, match=r"unknown T5Config fields \['d_modle'\]"):
    t5_config_from(model)
