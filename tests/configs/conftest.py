"""Fixtures of the config tests: load a config file as config_flags does, with or without
the main job's overrides and lock."""

import importlib.util
import os

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def config_path(name: str) -> str:
  """configs/<name>.py; `name` may carry config_flags' ':<argument>'."""
  file_name, colon, argument = name.partition(":")
  return os.path.join(ROOT, "configs", f"{file_name}.py") + colon + argument


def load(name: str) -> ml_collections.ConfigDict:
  """get_config() of configs/<name>.py (get_config(arg) for '<name>:<arg>'), loaded from its
  path as config_flags does."""
  file_name, colon, argument = name.partition(":")
  path = os.path.join(ROOT, "configs", f"{file_name}.py")
  spec = importlib.util.spec_from_file_location(f"{file_name}_config_under_test", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(argument) if colon else module.get_config()


def parse(name: str, *overrides: str) -> ml_collections.ConfigDict:
  """The config as the main job sees it: loaded by config_flags, overridden, locked."""
  argv = ["main", f"--config={config_path(name)}", *overrides]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "run config", flag_values=flag_values,
                                  lock_config=True, sys_argv=argv)
  flag_values(argv)
  return flag_values.config


def field_types(config: ml_collections.ConfigDict, prefix: str = "") -> dict:
  """{dotted path: type} of every leaf field."""
  found = {}
  for key, value in config.items():
    path = f"{prefix}{key}"
    if isinstance(value, ml_collections.ConfigDict):
      found.update(field_types(value, path + "."))
    else:
      found[path] = type(value)
  return found


def check_settings(config: ml_collections.ConfigDict) -> None:
  """Every section through the check its mode runs before any model work."""
  # pylint: disable=import-outside-toplevel
  from calm_jax.decoding.exit_rule import ExitConfig
  from calm_jax.decoding.measures import checked_measure
  from calm_jax.model.source import t5_config_from
  from calm_jax.modes import analyze, generate
  from calm_jax.modes.grid import calibration_settings
  from calm_jax.modes.training_setup import loop_settings_from, mesh_config_from, optimizer_from
  from calm_jax.training.objectives import AnytimeObjective
  from calm_jax.training.sharding import make_mesh
  model = t5_config_from(config.model)
  exit_config = ExitConfig.from_section(config.exit)
  exit_config.validate(model.num_decoder_layers)
  checked_measure(exit_config, model)
  calibration_settings(config.calibration)
  analysis = analyze.analysis_settings(config.analysis)
  assert max(analysis.after_layers) <= model.num_decoder_layers - 2
  settings = loop_settings_from(config.train, config.seed)
  settings.validate(make_mesh(mesh_config_from(config.mesh)))
  optimizer_from(config.train).validate()
  AnytimeObjective(layer_weighting=config.train.layer_weighting,
                   label_smoothing=config.train.label_smoothing,
                   z_loss=config.train.z_loss).validate()
  optimizer_from(config.train_exit).validate()
  config.generate.input_file = "-"
  generate.generate_settings(config.generate)
  assert config.data.max_input_len >= 1 and config.decode.max_decode_len >= 1


@pytest.fixture(name="check_settings")
def fixture_check_settings():
  return check_settings


@pytest.fixture(name="load_config")
def fixture_load_config():
  return load


@pytest.fixture(name="parse_config")
def fixture_parse_config():
  return parse


@pytest.fixture(name="config_field_types")
def fixture_config_field_types():
  return field_types


@pytest.fixture(name="repo_root")
def fixture_repo_root():
  return ROOT
