"""The run configs: every file loads with demo.py's structure, passes the modes' setting
checks, names a known task, and `--config.x=y` overrides are typed and locked."""

import ast
import dataclasses
import glob
import importlib.util
import os
import subprocess
import sys

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

from calm_jax import analyze_mode, calibrate_mode, generate_mode
from calm_jax.data import tasks
from calm_jax.decoding.exit_rule import ExitConfig
from calm_jax.model.source import t5_config_from
from calm_jax.train_mode import loop_settings_from, mesh_config_from, optimizer_from
from calm_jax.training.objectives import AnytimeObjective
from calm_jax.training.sharding import make_mesh
from configs import base

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATASETS = ("cnndm", "xsum", "samsum", "squad", "wmt15_enfr", "wmt14_ende", "iwslt2017",
            "multi_news", "big_patent")
# The calibration / oracle similarity each dataset is scored by (CALM's choices).
SIMILARITY = {"cnndm": "rouge_l", "xsum": "rouge_l", "samsum": "rouge_l",
              "multi_news": "rouge_l", "big_patent": "rouge_l", "squad": "token_f1",
              "wmt15_enfr": "bleu", "wmt14_ende": "bleu", "iwslt2017": "bleu"}


def config_path(name):
  return os.path.join(ROOT, "configs", f"{name}.py")


def load(name) -> ml_collections.ConfigDict:
  """get_config() of configs/<name>.py, loaded from its path as config_flags does."""
  spec = importlib.util.spec_from_file_location(f"{name}_config_under_test", config_path(name))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def parse(name, *overrides) -> ml_collections.ConfigDict:
  """The config as the main job sees it: loaded by config_flags, overridden, locked."""
  argv = ["main", f"--config={config_path(name)}", *overrides]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "run config", flag_values=flag_values,
                                  lock_config=True, sys_argv=argv)
  flag_values(argv)
  return flag_values.config


def field_types(config, prefix=""):
  """{dotted path: type} of every leaf field."""
  found = {}
  for key, value in config.items():
    path = f"{prefix}{key}"
    if isinstance(value, ml_collections.ConfigDict):
      found.update(field_types(value, path + "."))
    else:
      found[path] = type(value)
  return found


def seqio_task_names():
  """The seqio task names (from the module when seqio is installed, else from the table
  in its docstring, which names every registration)."""
  try:
    from calm_jax.data import seqio_tasks  # pylint: disable=import-outside-toplevel
    return set(seqio_tasks.TASK_NAMES)
  except ImportError:
    source = open(os.path.join(ROOT, "calm_jax", "data", "seqio_tasks.py"),
                  encoding="utf-8").read()
    table = ast.get_docstring(ast.parse(source))
    return {line.split()[0] for line in table.splitlines() if line.startswith("  calm_")}


# ----------------------------------------------------------------------------- files

def test_every_dataset_has_a_config_file():
  names = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))}
  assert names == set(DATASETS) | {"demo", "base", "__init__"}


@pytest.mark.parametrize("name", DATASETS)
def test_dataset_config_has_the_demo_structure(name):
  assert field_types(load(name)) == field_types(load("demo"))


@pytest.mark.parametrize("name", ("demo",) + DATASETS)
def test_config_passes_the_setting_checks(name):
  config = load(name)
  model = t5_config_from(config.model)
  exit_config = ExitConfig.from_section(config.exit)
  exit_config.validate(model.num_decoder_layers, model.vocab_size)
  calibrate_mode.settings_from(config.calibration)
  analysis = analyze_mode.settings_from(config.analysis)
  assert max(analysis.after_layers) <= model.num_decoder_layers - 2
  settings = loop_settings_from(config.train, config.seed)
  settings.validate(make_mesh(mesh_config_from(config.mesh)))
  optimizer_from(config.train).validate()
  AnytimeObjective(layer_weighting=config.train.layer_weighting,
                   label_smoothing=config.train.label_smoothing,
                   z_loss=config.train.z_loss).validate()
  optimizer_from(config.train_exit).validate()
  config.generate.input_file = "-"
  generate_mode.settings_from(config.generate)
  assert config.data.max_input_len >= 1 and config.decode.max_decode_len >= 1


@pytest.mark.parametrize("name", DATASETS)
def test_dataset_task_and_studies_defaults(name):
  config = load(name)
  task = config.data.task
  if task in tasks.task_names():
    registered = tasks.get_task(task)
    assert config.generate.input_prefix == registered.input_prefix
  else:
    assert task in seqio_task_names(), f"{name}: task {task!r} is registered nowhere"
  assert config.calibration.objective == "textual"
  assert config.calibration.similarity == config.analysis.similarity == SIMILARITY[name]
  assert config.exit.measure == "softmax_diff"
  if name in ("cnndm", "wmt15_enfr", "wmt14_ende"):
    assert config.exit.tau == 4.0  # CALM's decaying threshold on CNN/DM and WMT
  assert t5_config_from(config.model) == t5_config_from(base.model_section("calm_t5_8l"))


# ----------------------------------------------------------------------------- base pieces

def test_calm_preset_is_the_papers_model():
  model = t5_config_from(base.model_section("calm_t5_8l"))
  assert (model.num_layers, model.num_decoder_layers, model.d_model) == (8, 8, 512)
  assert (model.num_heads, model.d_kv, model.d_ff) == (6, 64, 1024)
  assert model.feed_forward_proj == "gated-gelu" and not model.tie_word_embeddings
  assert not model.scale_decoder_outputs and model.vocab_size == 32128


@pytest.mark.parametrize("preset,sizes,version", [
    ("t5_small", (512, 2048, 6, 8), "1.0"), ("t5_base", (768, 3072, 12, 12), "1.0"),
    ("t5_large", (1024, 4096, 24, 16), "1.0"), ("flan_t5_small", (512, 1024, 8, 6), "1.1"),
    ("flan_t5_base", (768, 2048, 12, 12), "1.1"), ("flan_t5_large", (1024, 2816, 24, 16), "1.1"),
])
def test_public_presets(preset, sizes, version):
  section = base.model_section(preset)
  assert set(section) == set(load("demo").model)
  model = t5_config_from(section)
  assert (model.d_model, model.d_ff, model.num_layers, model.num_heads) == sizes
  assert model.num_decoder_layers == model.num_layers and model.d_kv == 64
  v1 = version == "1.0"
  assert (model.feed_forward_proj == "relu") == v1
  assert model.tie_word_embeddings == model.scale_decoder_outputs == v1
  assert base.MODEL_PRESETS[preset].hub_name


def test_unknown_preset_and_bad_grid_fail_clearly():
  with pytest.raises(ValueError, match="model preset 't5_huge' is unknown; allowed: calm_t5_8l"):
    base.model_section("t5_huge")
  with pytest.raises(ValueError, match="step must lie strictly between 0 and 1, got 0"):
    base.threshold_grid(0)


def test_exit_section_has_every_exit_option():
  section = base.exit_section()
  assert set(section) == {field.name for field in dataclasses.fields(ExitConfig)}
  defaults = ExitConfig()
  changed = {"threshold", "top_k"}  # 0.9 rather than 1.0; top_k as given
  for name in set(section) - changed:
    assert section[name] == getattr(defaults, name), name


def test_threshold_grid():
  assert base.threshold_grid(0.05) == tuple(round(1.0 - 0.05 * i, 2) for i in range(20))
  grid = base.threshold_grid(0.025)
  assert len(grid) == 40 and grid[0] == 1.0 and grid[-1] == 0.025
  assert all(a > b for a, b in zip(grid, grid[1:]))


def test_override_refuses_fields_the_section_lacks():
  section = base.mesh_section()
  base.override(section, data=2)
  assert section.data == 2
  with pytest.raises(ValueError, match=r"no field\(s\) \['dat'\]; known: data, model, rules"):
    base.override(section, dat=2)


# ----------------------------------------------------------------------------- overrides

@pytest.mark.filterwarnings(r"ignore:the load_module\(\) method is deprecated")
def test_overrides_are_typed_and_the_config_is_locked():
  config = parse("cnndm", "--config.exit.tau=2", "--config.data.max_input_len=64",
                 "--config.calibration.deltas=(0.1,)")
  assert config.is_locked and config.exit.tau == 2.0 and config.data.max_input_len == 64
  assert config.calibration.deltas == (0.1,)
  with pytest.raises(AttributeError, match="tua"):
    config.exit.tua = 1.0
  with pytest.raises(TypeError, match="Could not override field 'tau'"):
    config.exit.tau = "four"


def run_main(*overrides):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  command = [sys.executable, "-m", "calm_jax.main", "--config=configs/cnndm.py",
             "--workdir=/nonexistent/never-created", *overrides]
  return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=300)


def test_main_rejects_a_wrong_type_clearly():
  done = run_main("--config.exit.threshold=abc")
  assert done.returncode != 0
  assert ("flag --config.exit.threshold=abc: could not convert string to float: 'abc'"
          in done.stderr)


def test_main_rejects_an_unknown_field_clearly():
  done = run_main("--config.exit.threshhold=0.5")
  assert done.returncode != 0
  last = done.stderr.strip().splitlines()[-1]
  assert last == ("FATAL Flags parsing error: --config.exit.threshhold: the config has no "
                  "field 'threshhold'; Did you mean \"threshold\" instead of \"threshhold\"?")
  assert "Traceback" not in done.stderr
