"""The calibrate mode: the thresholds Learn-then-Test chooses on the decoded grid, its
files, and the `calibration` section checked before any decoding."""

import json
import os

import numpy as np
import pytest

from calm_jax import modes
from calm_jax.calibration import consistency, ltt
from calm_jax.data import byte_vocab
from calm_jax.decoding.exit_rule import ExitConfig
from calm_jax.decoding.generate import generate_grid
from calm_jax.decoding.greedy import greedy_decode
from calm_jax.model.source import load_model
from calm_jax.modes.context import split_examples


@pytest.fixture
def calibrate_config(demo_config):
  """Makes the demo config in calibrate mode with `calibration` fields replaced."""
  def make(**calibration):
    config = demo_config()
    config.unlock()
    config.mode = "calibrate"
    config.calibration.update({**dict(num_examples=12, thresholds=(1.0, 0.6, 0.3, 0.1),
                                      deltas=(0.1, 0.4), num_splits=4,
                                      calibration_fraction=0.75),
                               **calibration})
    config.lock()
    return config
  return make


@pytest.mark.parametrize("objective, similarity", [("textual", "token_agreement"),
                                                   ("risk", "chrf")])
def test_calibrate_mode_chooses_what_ltt_chooses_on_the_decoded_grid(tmp_path, calibrate_config,
                                                                     objective, similarity):
  config = calibrate_config(objective=objective, similarity=similarity)
  path = modes.run(config, str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == ["calibration.json", "run_record.json",
                                          "validity.json", "validity.md", "validity.png"]
  summary = json.load(open(path, encoding="utf-8"))
  # Decode the grid independently (vmapped decoder) and recompute the losses.
  examples = split_examples(config, "validation", 12)
  model_config, params = load_model(config.model, config.seed)
  ids, mask = byte_vocab.encode_batch([e.inputs for e in examples], config.data.max_input_len)
  thresholds = list(config.calibration.thresholds)
  grid = generate_grid(model_config, params, ids, mask, thresholds=thresholds,
                       exit=ExitConfig.from_section(config.exit), max_decode_len=5)
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
    expected = ltt.calibrate(losses, thresholds, choice["delta"], 0.1, choice["rule"])
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
def test_calibrate_mode_rejects_bad_settings_before_decoding(tmp_path, no_model_loading,
                                                             calibrate_config, field, value,
                                                             message):
  config = calibrate_config(**{field: value})
  with pytest.raises(ValueError, match=message):
    modes.run(config, str(tmp_path))
  assert os.listdir(tmp_path) == []
