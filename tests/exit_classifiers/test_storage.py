"""Saving and loading exit classifiers (`exit_classifiers.storage`): the round trip, the
parameters of a run config's classifier_path, clear errors for bad files, and a saved
classifier used by the decode mode."""

import json
import os
import re

import jax
import numpy as np
import pytest

from calm_jax.decoding.exit_rule import ExitConfig
from calm_jax.decoding.generate import generate
from calm_jax.exit_classifiers.registry import init_classifier
from calm_jax.exit_classifiers.storage import (classifier_params_for, load_classifier,
                                               save_classifier)

T = 8  # classifier_model's output positions
NAMES = ["attention", "lstm", "meta_linear", "meta_mlp", "three_state_mlp"]


@pytest.fixture(scope="module")
def model(classifier_model):
  """conftest's classifier_model: the tiny T5, its batch and one random head per
  classifier."""
  return classifier_model


def test_save_and_load_round_trip(model, tmp_path):
  config, options = model.base_config, model.options
  for name in NAMES:
    directory = str(tmp_path / name)
    assert save_classifier(directory, name, model.heads[name]) == directory
    assert sorted(os.listdir(directory)) == ["classifier.json", "params.msgpack"]
    loaded = load_classifier(directory, config, expected_name=name)
    assert (loaded.name, loaded.options, loaded.input_width) == (name, options[name], 16)
    jax.tree.map(np.testing.assert_array_equal, loaded.params,
                 jax.tree.map(np.asarray, model.heads[name]))
  # From a run config: ExitConfig.classifier_path; None for measures that are not learned.
  exit_config = ExitConfig(measure="lstm", threshold=0.5, classifier_path=str(tmp_path / "lstm"))
  params = classifier_params_for(exit_config, config)
  out = generate(model.config, model.params, model.ids, model.mask, exit=exit_config,
                 max_decode_len=T, classifier_params=params)
  again = generate(model.config, model.params, model.ids, model.mask, exit=exit_config,
                   max_decode_len=T, classifier_params=model.heads["lstm"])
  np.testing.assert_array_equal(np.asarray(out.exit_layers), np.asarray(again.exit_layers))
  assert classifier_params_for(ExitConfig(), config) is None


def test_loading_bad_files_is_a_clear_error(model, tmp_path):
  config = model.base_config
  directory = str(tmp_path / "head")
  save_classifier(directory, "meta_mlp", model.heads["meta_mlp"])
  info_path = os.path.join(directory, "classifier.json")
  info = json.load(open(info_path, encoding="utf-8"))

  def rewrite(**changes):
    with open(info_path, "w", encoding="utf-8") as f:
      json.dump({**info, **changes}, f)

  with pytest.raises(ValueError, match="no saved exit classifier at '.*missing': "
                     "classifier.json is missing"):
    load_classifier(str(tmp_path / "missing"))
  with pytest.raises(ValueError, match="is 'meta_mlp', but the measure is 'lstm'"):
    load_classifier(directory, expected_name="lstm")
  with pytest.raises(ValueError, match="reads states of width 16, but the model's d_model is 32"):
    load_classifier(directory, config.replace(d_model=32))
  rewrite(name="bogus")
  with pytest.raises(ValueError, match="unknown exit classifier 'bogus'; registered: attention, "
                     "lstm, meta_linear, meta_mlp, three_state_mlp"):
    load_classifier(directory)
  rewrite(options={"hidden_width": 3})
  with pytest.raises(ValueError, match=r"has options \{'hidden_width': 12\}, but classifier.json "
                     r"records \{'hidden_width': 3\}"):
    load_classifier(directory)
  rewrite(params_sha256="0" * 64)
  with pytest.raises(ValueError, match="does not match the checksum in classifier.json "
                     r"\(changed or partly written\): train it again \(the train_exit mode"):
    load_classifier(directory)
  with open(info_path, "w", encoding="utf-8") as f:
    f.write(json.dumps(info, indent=2)[:40])  # cut short
  with pytest.raises(ValueError, match=f"^{re.escape(info_path)} line \\d+: not valid JSON "
                     r"\(.*\); the saved classifier is incomplete or corrupt: train it again"):
    load_classifier(directory)
  rewrite()
  os.remove(os.path.join(directory, "params.msgpack"))
  with pytest.raises(ValueError, match="params.msgpack is missing"):
    load_classifier(directory)
  with pytest.raises(ValueError, match="measure 'lstm' is a learned exit classifier: set "
                     "exit.classifier_path"):
    classifier_params_for(ExitConfig(measure="lstm"), config)


def test_a_saved_classifier_is_used_from_the_run_config(tmp_path):
  """The demo's decode mode with measure = a learned classifier and its classifier_path."""
  import sys  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__)))))  # the repository root, for configs/
  from calm_jax import modes  # pylint: disable=import-outside-toplevel
  from calm_jax.model.source import load_model  # pylint: disable=import-outside-toplevel
  from configs import demo  # pylint: disable=import-outside-toplevel
  config = demo.get_config()
  config.mode = "decode"
  config.data.num_examples, config.decode.max_decode_len = 2, 4
  config.model.num_decoder_layers = 3
  config.exit.measure, config.exit.threshold = "meta_linear", 0.5
  model_config, _ = load_model(config.model, config.seed)
  head = init_classifier("meta_linear", model_config, jax.random.PRNGKey(0))
  config.exit.classifier_path = save_classifier(str(tmp_path / "head"), "meta_linear", head)
  path = modes.run(config, str(tmp_path / "work"))
  records = [json.loads(line) for line in open(path, encoding="utf-8")]
  assert len(records) == 2 and all(r["exit_layers"] for r in records)
  config.exit.classifier_path = str(tmp_path / "nothing")
  with pytest.raises(ValueError, match="no saved exit classifier at .*nothing"):
    modes.run(config, str(tmp_path / "work"))
