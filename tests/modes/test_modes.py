"""The registry of run modes (calm_jax.modes): the nine modes, the errors for an unknown
mode and an empty workdir, and every mode's check failing before any model work."""

import os

import pytest

from calm_jax import modes


def test_the_registry_lists_the_nine_modes():
  assert sorted(modes.MODES) == sorted(["decode", "generate", "train", "train_exit",
                                        "calibrate", "evaluate", "analyze", "all",
                                        "export_hf"])
  for mode in modes.MODES.values():
    assert callable(mode.check) and callable(mode.run)


def test_unknown_mode_and_missing_workdir_fail_clearly(tmp_path, demo_config):
  config = demo_config()
  with config.unlocked():
    config.mode = "fly"
  with pytest.raises(ValueError, match="config.mode='fly' is not a mode; allowed: decode"):
    modes.run(config, str(tmp_path))
  with pytest.raises(ValueError, match="--workdir is required"):
    modes.run(demo_config(), "")


# A bad value of each mode's own section, and the error naming it.
BAD_VALUES = {
    "decode": ("data", "max_input_len", 0, "data.max_input_len must be >= 1, got 0"),
    "generate": ("generate", "batch_size", -1, "generate.batch_size must be an integer >= 0"),
    "train": ("train", "num_examples", 0, "train.num_examples must be >= 1, got 0"),
    "train_exit": ("train_exit", "loss", "hinge", "train_exit.loss='hinge' is not known"),
    "calibrate": ("calibration", "epsilon", 1.0, "calibration.epsilon must lie strictly"),
    "evaluate": ("evaluate", "rule", "ltt", "evaluate.rule='ltt'; allowed: "),
    "analyze": ("analysis", "num_examples", 0, "analysis.num_examples must be an integer"),
    "all": ("train", "num_examples", 0, "train.num_examples must be >= 1, got 0"),
    "export_hf": ("exit", "classifier_path", "/no/such/classifier",
                  "exit.classifier_path='/no/such/classifier' is not a saved exit classifier"),
}


@pytest.mark.parametrize("mode", sorted(BAD_VALUES))
def test_every_check_names_a_bad_value_before_any_model_work(tmp_path, no_model_loading,
                                                             demo_config, mode):
  section, field, value, message = BAD_VALUES[mode]
  config = demo_config()
  with config.unlocked():
    config.mode = mode
    config.generate.input_file = "-"
    config[section][field] = value
  assert sorted(BAD_VALUES) == sorted(modes.MODES)
  with pytest.raises(ValueError, match=message):
    modes.check(config, str(tmp_path))
  with pytest.raises(ValueError, match=message):
    modes.run(config, str(tmp_path))
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("mode", ["calibrate", "evaluate", "analyze", "all"])
def test_beta_mixture_threshold_is_refused_where_lambda_is_calibrated_or_given(
    tmp_path, no_model_loading, demo_config, mode):
  config = demo_config()
  with config.unlocked():
    config.mode = mode
    config.exit.decoding = "synchronized"
    config.exit.adaptive_threshold = "beta_mixture"
  message = (f"exit.adaptive_threshold='beta_mixture' refits lambda between the decode calls "
             f"of the decode and generate modes; mode '{mode}' decodes at the lambda")
  with pytest.raises(ValueError, match=message):
    modes.check(config, str(tmp_path))
  with pytest.raises(ValueError, match=message):
    modes.run(config, str(tmp_path / "work"))
  assert not (tmp_path / "work").exists()
