"""The decode mode: greedy early-exit decoding of the test split into decode.jsonl."""

import json
import os

import numpy as np
import pytest

from calm_jax import modes
from calm_jax.data import byte_vocab
from calm_jax.decoding.exit_rule import ExitConfig
from calm_jax.decoding.generate import generate
from calm_jax.decoding.greedy import greedy_decode
from calm_jax.model.source import load_model
from calm_jax.modes import decode
from calm_jax.modes.context import split_examples


def _decoded(tmp_path, config):
  path = modes.run(config, str(tmp_path))
  assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]
  return [json.loads(line) for line in open(path, encoding="utf-8")]


def test_demo_decode_writes_the_early_exit_outputs(tmp_path, demo_config):
  config = demo_config()
  records = _decoded(tmp_path, config)
  examples = split_examples(config, "test", 3)
  assert [r["inputs"] for r in records] == [e.inputs for e in examples]
  model_config, params = load_model(config.model, config.seed)
  ids, mask = byte_vocab.encode_batch([e.inputs for e in examples], config.data.max_input_len)
  expected = generate(model_config, params, ids, mask, max_decode_len=5,
                      exit=ExitConfig(measure="softmax_diff", threshold=0.9))
  assert [r["output_ids"] for r in records] == np.asarray(expected.tokens).tolist()
  assert [r["output"] for r in records] == [byte_vocab.decode(row) for row in expected.tokens]
  layers = np.asarray(expected.exit_layers)
  assert [r["exit_layers"] for r in records] == [row[row > 0].tolist() for row in layers]


def _full_greedy_ids(config):
  """The full model's greedy ids of the decode mode's three test examples (5 positions)."""
  model_config, params = load_model(config.model, config.seed)
  examples = split_examples(config, "test", 3)
  ids, mask = byte_vocab.encode_batch([e.inputs for e in examples], config.data.max_input_len)
  return np.asarray(greedy_decode(model_config, params, ids, mask, max_decode_len=5)).tolist()


def test_demo_with_threshold_one_is_the_full_greedy_model(tmp_path, demo_config):
  config = demo_config(threshold=1.0)
  records = _decoded(tmp_path, config)
  assert [r["output_ids"] for r in records] == _full_greedy_ids(config)
  assert all(set(r["exit_layers"]) == {3} for r in records)


@pytest.mark.parametrize("section, field, value, message", [
    ("exit", "treshold", 0.5, r"unknown exit option\(s\) \['treshold'\]"),
    ("data", "task", "nope", "task 'nope' is not registered"),
    ("data", "max_input_len", 0, "data.max_input_len must be >= 1, got 0"),
    ("model", "checkpoint", "/nonexistent/export", "is not a calm_jax params export"),
])
def test_check_names_a_bad_value_before_the_model_loads(tmp_path, no_model_loading,
                                                        demo_config, section, field, value,
                                                        message):
  config = demo_config()
  with config.unlocked():
    config[section][field] = value
  with pytest.raises(ValueError, match=message):
    decode.check(config, str(tmp_path))
  assert os.listdir(tmp_path) == []


def test_beta_mixture_decodes_one_example_per_call_and_refits_between(tmp_path, demo_config,
                                                                     capsys):
  """FREE verified with the adaptive threshold: the output is the full model's whatever
  lambda the refits choose, and the run says how lambda moved."""
  config = demo_config(threshold=0.0)
  with config.unlocked():
    config.exit.update(decoding="synchronized", verify=True, max_pending=2,
                       adaptive_threshold="beta_mixture", adaptive_max_refits=1)
  records = _decoded(tmp_path, config)
  assert [r["output_ids"] for r in records] == _full_greedy_ids(config)
  assert "[decode] beta_mixture threshold: lambda 0 -> " in capsys.readouterr().out
