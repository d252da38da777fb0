"""The evaluate mode: calibrated thresholds, scores recomputed independently, the report's
files, and settings checked before any work."""

import json
import os

import numpy as np
import pytest

from calm_jax import modes
from calm_jax.calibration import consistency, ltt
from calm_jax.data.tasks import get_task
from calm_jax.data.vocabulary import BYTE
from calm_jax.decoding.exit_rule import ExitConfig
from calm_jax.decoding.generate import generate
from calm_jax.decoding.greedy import greedy_decode
from calm_jax.decoding.threshold_grid import decode_threshold_grid
from calm_jax.model.source import load_model
from calm_jax.modes.context import encode_split


def test_evaluate_mode_reports_what_an_independent_recomputation_gives(tmp_path,
                                                                       evaluate_config):
  config = evaluate_config()
  path = modes.run(config, str(tmp_path))
  report = json.load(open(path, encoding="utf-8"))
  for name in ("report.md", "report_quality_speedup.png", "report_exit_layers.png",
               "report_delta_loss.png"):
    assert os.path.getsize(tmp_path / name) > 0
  assert [r["measure"] for r in report["rows"]] == [
      "greedy (full model)", "softmax_diff lambda=1", "softmax_diff", "softmax_diff",
      "static layer 3 (never exits)", "static layer 1", "oracle"]
  assert [r["reference"] for r in report["rows"]] == (
      ["softmax_diff lambda=1"] * 4 + ["static layer 3 (never exits)"] * 3)
  for row in report["rows"]:
    for clock in ("wall_clock", "latency"):
      low, high = row[f"{clock}_spread"]
      assert low <= row[f"{clock}_speedup"] <= high
      assert row[f"{clock}_realized"] == pytest.approx(
          row[f"{clock}_speedup"] / row[f"{clock}_ideal_speedup"])
    if row["kind"] == "reference":  # timed against itself: exactly 1 in every round
      assert row["wall_clock_spread"] == [1.0, 1.0] and row["wall_clock_ideal_speedup"] == 1.0
  assert report["timing_rounds"] == 5 and report["latency_examples"] == 2
  static_1, oracle = report["rows"][5], report["rows"][6]
  assert static_1["wall_clock_ideal_speedup"] > 1.5  # 1 of 3 layers, plus propagated K/V
  assert oracle["wall_clock_ideal_speedup"] < 1.0  # a full pass first, then the exit
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
  for row in report["rows"][2:4]:
    chosen = ltt.calibrate(losses, (1.0, 0.5, 0.2), row["delta"], 0.1,
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
  assert report["rows"][1]["quality"] == report["rows"][0]["quality"]  # lambda = 1 is greedy
  assert report["rows"][1]["test_loss"] == 0.0
  assert static_1["mean_exit_layer"] == 1.0


@pytest.mark.parametrize("field, value, message", [
    ("measures", ("softmax_dif",), "unknown confidence measure 'softmax_dif'"),
    ("measures", ("static",), "evaluate.measures has 'static', which is not calibrated"),
    ("measures", ("meta_mlp",), "the learned measure 'meta_mlp', but .* does not exist; run "
                                "the train_exit mode"),
    ("rule", "ltt", "evaluate.rule='ltt'; allowed: "),
    ("num_examples", 0, "evaluate.num_examples must be >= 1, got 0"),
    ("timing_rounds", 3, "evaluate.timing_rounds must be >= 5, got 3"),
    ("latency_examples", 0, "evaluate.latency_examples must be >= 1, got 0"),
])
def test_evaluate_settings_are_checked_before_the_model_loads(tmp_path, no_model_loading,
                                                              evaluate_config, field, value,
                                                              message):
  with pytest.raises(ValueError, match=message):
    modes.run(evaluate_config(**{field: value}), str(tmp_path))
  assert os.listdir(tmp_path) == []
