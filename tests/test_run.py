"""The main job's library entry, its demo config and the main module's flag handling."""

import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from calm_jax import calibrate_mode, calibration, consistency, files, run
from calm_jax.data import byte_vocab
from calm_jax.data.arithmetic_preview import sample_examples
from calm_jax.run_data import split_examples
from calm_jax.decoding.exit_rule import ExitConfig
from calm_jax.decoding.generate import generate, generate_grid
from calm_jax.decoding.greedy import greedy_decode
from calm_jax.model.source import load_model, t5_config_from

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def demo_config(threshold=0.9):
  sys.path.insert(0, ROOT)
  from configs import demo  # pylint: disable=import-outside-toplevel
  config = demo.get_config()
  config.mode = "decode"
  config.data.num_examples = 3
  config.decode.max_decode_len = 5
  config.model.num_decoder_layers = 3
  config.exit.threshold = threshold
  config.lock()
  return config


def _decoded(tmp_path, config):
  path = run.run(config, str(tmp_path))
  assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]
  return [json.loads(line) for line in open(path, encoding="utf-8")]


def test_demo_decode_writes_the_early_exit_outputs(tmp_path):
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


def test_demo_with_threshold_one_is_the_full_greedy_model(tmp_path):
  config = demo_config(threshold=1.0)
  records = _decoded(tmp_path, config)
  model_config, params = load_model(config.model, config.seed)
  examples = split_examples(config, "test", 3)
  ids, mask = byte_vocab.encode_batch([e.inputs for e in examples], config.data.max_input_len)
  full = np.asarray(greedy_decode(model_config, params, ids, mask, max_decode_len=5))
  assert [r["output_ids"] for r in records] == full.tolist()
  assert all(set(r["exit_layers"]) == {3} for r in records)


def test_unknown_mode_and_missing_workdir_fail_clearly(tmp_path):
  config = demo_config()
  with config.unlocked():
    config.mode = "fly"
  with pytest.raises(ValueError, match="config.mode='fly' is not a mode; allowed: decode"):
    run.run(config, str(tmp_path))
  with pytest.raises(ValueError, match="--workdir is required"):
    run.run(demo_config(), "")


def test_model_section_rejects_unknown_fields():
  model = ml_collections.ConfigDict(dict(demo_config().model))
  model.d_modle = 3
  with pytest.raises(ValueError, match=r"unknown T5Config fields \['d_modle'\]"):
    t5_config_from(model)


def test_atomic_write_leaves_nothing_behind_on_failure(tmp_path):
  target = tmp_path / "out.jsonl"
  target.write_text("old\n")
  with pytest.raises(TypeError):
    files.write_jsonl_atomically(str(target), [{"ok": 1}, {"bad": object()}])
  assert target.read_text() == "old\n"
  assert os.listdir(tmp_path) == ["out.jsonl"]


def test_byte_vocab_round_trip_and_padding():
  ids, mask = byte_vocab.encode_batch(["ab", "é"], 4)
  np.testing.assert_array_equal(ids, [[100, 101, 1, 0], [198, 172, 1, 0]])
  np.testing.assert_array_equal(mask, [[1, 1, 1, 0], [1, 1, 1, 0]])
  assert byte_vocab.decode([100, 101, 1, 102]) == "ab"
  assert byte_vocab.decode(ids[1]) == "é"


def test_generated_examples_are_deterministic_and_correct():
  first, again = sample_examples(20, seed=7), sample_examples(20, seed=7)
  assert first == again
  assert first != sample_examples(20, seed=8)
  for example in first:
    kind, payload = example.inputs.split(": ")
    if kind == "add":
      a, b = payload.split("+")
      assert example.targets == str(int(a) + int(b))
    else:
      assert example.targets == (payload if kind == "copy" else payload[::-1])


def test_main_flags_override_and_reject_bad_values(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  command = [sys.executable, "-m", "calm_jax.main", "--config=configs/demo.py",
             f"--workdir={tmp_path}", "--config.mode=decode", "--config.data.num_examples=2",
             "--config.decode.max_decode_len=3", "--config.model.num_decoder_layers=1"]
  done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  assert len(open(tmp_path / "decode.jsonl", encoding="utf-8").readlines()) == 2
  bad = subprocess.run(command[:-1] + ["--config.model.num_decoder_layers=two"], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=300)
  assert bad.returncode != 0
  assert "num_decoder_layers" in bad.stderr
  unknown = subprocess.run(command + ["--config.model.widht=3"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
  assert unknown.returncode != 0 and "widht" in unknown.stderr


def calibrate_config(**calibration):
  config = demo_config()
  config.unlock()
  config.mode = "calibrate"
  config.calibration.update({**dict(num_examples=12, thresholds=(1.0, 0.6, 0.3, 0.1),
                                    deltas=(0.1, 0.4), num_splits=4, calibration_fraction=0.75),
                             **calibration})
  config.lock()
  return config


@pytest.mark.parametrize("objective, similarity", [("textual", "token_agreement"),
                                                   ("risk", "chrf")])
def test_calibrate_mode_chooses_what_ltt_chooses_on_the_decoded_grid(tmp_path, objective,
                                                                     similarity):
  config = calibrate_config(objective=objective, similarity=similarity)
  path = run.run(config, str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == ["calibration.json", "validity.json", "validity.md",
                                          "validity.png"]
  summary = json.load(open(path, encoding="utf-8"))
  # Decode the grid independently (vmapped decoder) and recompute the losses.
  examples = split_examples(config, "validation", 12)
  model_config, params = load_model(config.model, config.seed)
  ids, mask = byte_vocab.encode_batch([e.inputs for e in examples], config.data.max_input_len)
  thresholds = list(config.calibration.thresholds)
  grid = generate_grid(model_config, params, ids, mask, thresholds=thresholds,
                       exit=run.exit_config_from(config), max_decode_len=5)
  full = greedy_decode(model_config, params, ids, mask, max_decode_len=5)
  if similarity == "token_agreement":
    ids_of = lambda row: [int(t) for t in row[:list(row).index(1) + 1]] if 1 in row else [
        int(t) for t in row]
    early = [[ids_of(list(np.asarray(r))) for r in tokens] for tokens in grid.tokens]
    reference = [ids_of(list(np.asarray(r))) for r in full]
  else:
    early = [[byte_vocab.decode(r) for r in tokens] for tokens in np.asarray(grid.tokens)]
    reference = [byte_vocab.decode(r) for r in np.asarray(full)]
  losses = consistency.consistency_losses(objective, early, reference,
                                          [[e.targets] for e in examples], similarity)
  np.testing.assert_allclose(summary["mean_loss"], losses.mean(0), atol=1e-12)
  assert len(summary["choices"]) == 2 * len(config.calibration.rules)
  for choice in summary["choices"]:
    expected = calibration.calibrate(losses, thresholds, choice["delta"], 0.1, choice["rule"])
    assert choice["threshold"] == expected.threshold
    assert choice["result"] == expected.to_dict()
  report = json.load(open(tmp_path / "validity.json", encoding="utf-8"))
  assert [(s["delta"], s["rule"]) for s in report["summaries"]] == [
      (d, r) for d in (0.1, 0.4) for r in config.calibration.rules]


@pytest.mark.parametrize("field, value, message", [
    ("deltas", (0.1, 1.5), r"calibration.deltas must lie strictly between 0 and 1; got 1.5"),
    ("rules", ("ltt_hoefding",), r"calibration.rules has 'ltt_hoefding'; allowed: naive"),
    ("thresholds", (0.5, 0.9), r"strictly decreasing"),
    ("objective", "bleu", r"calibration.objective='bleu'; allowed: textual, risk"),
    ("similarity", "bleurt", r"calibration.similarity='bleurt' is not allowed"),
    ("num_splits", 0, r"calibration settings: num_splits must be a positive integer, got 0"),
    ("calibration_fraction", 1.0, r"calibration_fraction must lie strictly between 0 and 1"),
    ("num_examples", 2, r"2 examples cannot be split 75% / 25% with both parts non-empty"),
    ("epsilon", 0.0, r"calibration.epsilon must lie strictly between 0 and 1; got 0.0"),
    ("batch_size", -1, r"calibration.batch_size must be an integer >= 0"),
])
def test_calibrate_mode_rejects_bad_settings_before_decoding(tmp_path, monkeypatch, field,
                                                             value, message):
  def no_model(*args):
    raise AssertionError("the model was loaded before the settings were checked")
  monkeypatch.setattr(calibrate_mode, "load_model", no_model)
  config = calibrate_config(**{field: value})
  with pytest.raises(ValueError, match=message):
    run.run(config, str(tmp_path))
  assert os.listdir(tmp_path) == []
