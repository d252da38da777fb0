"""The train mode's check: every training setting and the model source named before the
model loads (the run itself is tested end to end with train_exit, in test_train_exit.py)."""

import os

import ml_collections
import pytest

from calm_jax import modes
from calm_jax.modes import train
from calm_jax.training.objectives import ShallowDeepObjective


@pytest.mark.parametrize("section, field, value, message", [
    ("train", "layer_weighting", "squared", "squared"),
    ("train", "objective", "free", "train.objective='free'; allowed: anytime, shallow_deep"),
    ("train", "optimizer", "sgdd", "optimizer='sgdd' is not known"),
    ("train", "num_examples", 0, "train.num_examples must be >= 1, got 0"),
    ("mesh", "rules", (("embed", "tensor"),), "mesh.rules maps 'embed' to 'tensor'"),
    ("model", "checkpoint", "/nonexistent/export", "is not a calm_jax params export"),
])
def test_check_names_a_bad_value_before_the_model_loads(tmp_path, no_model_loading,
                                                        demo_config, section, field, value,
                                                        message):
  config = demo_config()
  with config.unlocked():
    config.mode = "train"
    config[section][field] = value
  with pytest.raises(ValueError, match=message):
    train.check(config, str(tmp_path))
  with pytest.raises(ValueError, match=message):
    modes.run(config, str(tmp_path))
  assert os.listdir(tmp_path) == []


def test_check_returns_the_checked_training_settings(tmp_path, demo_config):
  settings = train.check(demo_config(), str(tmp_path))
  config = demo_config()
  assert settings.setup.loop.steps == config.train.steps
  assert settings.setup.optimizer.optimizer == config.train.optimizer
  assert settings.objective.layer_weighting == config.train.layer_weighting
  assert settings.context.vocabulary.name == config.data.vocabulary


@pytest.mark.parametrize("field, value, message", [
    ("exit.shallow_exit_layer", 3, r"shallow_exit_layer=3 must be in \[1, 2\]"),
    ("train.kd_mapping", "nearest",
     "kd_mapping='nearest'; allowed: last, uniform, uniform_published, dynamic"),
    ("train.kd_mapping", "uniform_published",
     "'uniform_published' has no list for 3 decoder layers with shallow exit 1"),
    ("train.kd_linear_map", "yes", "kd_linear_map must be True or False, got 'yes'"),
    ("train.kd_weight", -0.5, "kd_weight must be >= 0"),
])
def test_shallow_deep_settings_are_checked_before_the_model_loads(
    tmp_path, no_model_loading, demo_config, field, value, message):
  config = demo_config()  # three decoder layers, initialised fresh
  with config.unlocked():
    config.mode = "train"
    config.train.objective = "shallow_deep"
    section, name = field.split(".")
    # Rebuilt, so that a value of another type than the default's (kd_linear_map='yes')
    # reaches the check instead of ConfigDict's own type check.
    config[section] = ml_collections.ConfigDict({**config[section].to_dict(), name: value})
  with pytest.raises(ValueError, match=message):
    train.check(config, str(tmp_path))
  assert os.listdir(tmp_path) == []


def test_shallow_deep_objective_takes_the_exit_sections_shallow_layer(tmp_path, demo_config):
  config = demo_config()
  with config.unlocked():
    config.train.objective = "shallow_deep"
    config.train.kd_mapping = "dynamic"
    config.exit.shallow_exit_layer = 2
  objective = train.check(config, str(tmp_path)).objective
  assert objective == ShallowDeepObjective(shallow_exit_layer=2, kd_weight=1.0,
                                           kd_mapping="dynamic")


def test_shallow_deep_objective_reads_the_learned_kd_map_switch(tmp_path, demo_config):
  config = demo_config()
  with config.unlocked():
    config.train.objective = "shallow_deep"
    config.train.kd_linear_map = True
  assert train.check(config, str(tmp_path)).objective.kd_linear_map
