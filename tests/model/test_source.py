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


def test_a_missing_hf_path_is_named_with_its_key(demo_config, tmp_path):
  # pylint: disable=import-outside-toplevel
  from calm_jax.model.source import source_config
  model = ml_collections.ConfigDict(dict(demo_config().model))
  model.hf_path = str(tmp_path / "nowhere")
  with pytest.raises(ValueError, match=r"model.hf_path='.*nowhere': no such directory"):
    source_config(model)


def test_an_unknown_measure_is_named_with_its_key(demo_config):
  # pylint: disable=import-outside-toplevel
  from calm_jax.decoding.exit_rule import ExitConfig
  from calm_jax.modes.context import check_exit
  config = t5_config_from(demo_config().model)
  with pytest.raises(ValueError, match=r"^exit.measure: unknown confidence measure 'nope'"):
    check_exit(ExitConfig(measure="nope"), config)
