"""The evaluate and all modes: calibrated thresholds, scores recomputed independently, the
report's files, and settings checked before any work."""

import json
import os

import numpy as np
import pytest

from calm_jax import calibration, consistency, evaluate_mode, run
from calm_jax.data.tasks import get_task
from calm_jax.data.vocabulary import BYTE
from calm_jax.decoding.exit_rule import ExitConfig
from calm_jax.decoding.generate import generate
from calm_jax.decoding.greedy import greedy_decode
from calm_jax.decoding.threshold_grid import decode_threshold_grid
from calm_jax.model.source import load_model
from calm_jax.run_data import encode_split
from test_run import demo_config


def evaluate_config(**evaluate):
  config = demo_config()
  config.unlock()
  config.mode = "evaluate"
  config.decode.max_decode_len = 6
  # The recomputation below scores token agreement, whatever the demo calibrates with.
  config.calibration.update(num_examples=8, thresholds=(1.0, 0.5, 0.2), deltas=(0.1, 0.5),
                            num_splits=2, similarity="token_agreement")
  config.evaluate.update({**dict(measures=("softmax_diff",), num_examples=6,
                                 static_layers=(1,), oracle=True, timing_repeats=1),
                          **evaluate})
  config.lock()
  return config


def test_evaluate_mode_reports_what_an_independent_recomputation_gives(tmp_path):
  config = evaluate_config()
  path = run.run(config, str(tmp_path))
  report = json.load(open(path, encoding="utf-8"))
  for name in ("report.md", "report_quality_speedup.png", "report_exit_layers.png",
               "report_delta_loss.png"):
    assert os.path.getsize(tmp_path / name) > 0
  assert [r["measure"] for r in report["rows"]] == [
      "full model", "softmax_diff", "softmax_diff", "static layer 1", "oracle"]
  model_config, params = load_model(config.model, config.seed)
  calib = encode_split(config, "validation", 8, BYTE)
  test = encode_split(config, "test", 6, BYTE)
  grid = decode_threshold_grid(model_config, params, calib.input_ids, calib.attention_mask,
                               thresholds=(1.0, 0.5, 0.2), exit=ExitConfig(), max_decode_len=6)
  losses = consistency.consistency_losses("textual", *grid.generated_ids(),
                                          similarity="token_agreement")
  full = np.asarray(greedy_decode(model_config, params, test.input_ids, test.attention_mask,
                                  max_decode_len=6))
  task = get_task("generated")
  for row in report["rows"][1:3]:
    chosen = calibration.calibrate(losses, (1.0, 0.5, 0.2), row["delta"], 0.1,
                                   "ltt_hoeffding_bentkus")
    assert row["threshold"] == chosen.threshold
    out = generate(model_config, params, test.input_ids, test.attention_mask,
                   exit=ExitConfig(threshold=chosen.threshold), max_decode_len=6)
    layers = np.asarray(out.exit_layers)
    assert row["mean_exit_layer"] == pytest.approx(layers[layers > 0].mean())
    ids = [t[l > 0].tolist() for t, l in zip(np.asarray(out.tokens), layers)]
    full_ids = [r[:r.index(1) + 1] if 1 in r else r for r in full.tolist()]
    loss = consistency.consistency_losses("textual", [ids], full_ids,
                                          similarity="token_agreement").mean()
    assert row["test_loss"] == pytest.approx(loss)
    assert row["violation"] == (loss > row["delta"])
    assert row["quality"] == task.evaluate([BYTE.decode(i) for i in ids], test.examples)
  assert report["rows"][0]["quality"] == task.evaluate([BYTE.decode(r) for r in full],
                                                       test.examples)
  assert report["rows"][3]["mean_exit_layer"] == 1.0


@pytest.mark.parametrize("field, value, message", [
    ("measures", ("softmax_dif",), "unknown confidence measure 'softmax_dif'"),
    ("measures", ("static",), "evaluate.measures has 'static', which is not calibrated"),
    ("measures", ("meta_mlp",), "the learned measure 'meta_mlp', but .* does not exist; run "
                                "the train_exit mode"),
    ("rule", "ltt", "evaluate.rule='ltt'; allowed: "),
    ("num_examples", 0, "evaluate.num_examples must be >= 1, got 0"),
])
def test_evaluate_settings_are_checked_before_the_model_loads(tmp_path, monkeypatch, field,
                                                              value, message):
  def no_model(*args):
    raise AssertionError("the model was loaded before the settings were checked")
  monkeypatch.setattr(evaluate_mode, "load_model", no_model)
  with pytest.raises(ValueError, match=message):
    run.run(evaluate_config(**{field: value}), str(tmp_path))
  assert os.listdir(tmp_path) == []


def test_all_mode_checks_every_step_before_training(tmp_path):
  config = evaluate_config()
  with config.unlocked():
    config.mode = "all"
    config.train_exit.loss = "hinge"
  with pytest.raises(ValueError, match="train_exit.loss='hinge' is not known"):
    run.run(config, str(tmp_path))
  assert not os.path.exists(tmp_path / "checkpoints")
