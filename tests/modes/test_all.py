"""The all mode: every step's check before the first step runs, then train -> train_exit
(per learned measure) -> calibrate -> evaluate on the trained model."""

import os

import pytest

from calm_jax import modes
from calm_jax.modes import calibrate, evaluate, train, train_exit


def test_all_mode_checks_every_step_before_training(tmp_path, evaluate_config):
  config = evaluate_config()
  with config.unlocked():
    config.mode = "all"
    config.train_exit.loss = "hinge"
  with pytest.raises(ValueError, match="train_exit.loss='hinge' is not known"):
    modes.run(config, str(tmp_path))
  assert not os.path.exists(tmp_path / "checkpoints")


def test_all_mode_runs_every_check_then_every_step(tmp_path, monkeypatch, evaluate_config):
  calls = []

  def record(name, kind, result=None):
    def call(config, workdir):
      assert workdir == str(tmp_path)
      calls.append((kind, name, config))
      return result
    return call

  export = str(tmp_path / "model")
  for name, module in [("train", train), ("train_exit", train_exit),
                       ("calibrate", calibrate), ("evaluate", evaluate)]:
    monkeypatch.setattr(module, "check", record(name, "check"))
    monkeypatch.setattr(module, "run", record(name, "run", export if name == "train" else
                                              f"{name} output"))
  config = evaluate_config(measures=("softmax_diff", "meta_mlp", "lstm"))
  with config.unlocked():
    config.mode = "all"
  assert modes.run(config, str(tmp_path)) == "evaluate output"
  assert [(kind, name) for kind, name, _ in calls] == [
      ("check", "train"), ("check", "train_exit"), ("check", "calibrate"),
      ("check", "evaluate"), ("run", "train"), ("run", "train_exit"), ("run", "train_exit"),
      ("run", "calibrate"), ("run", "evaluate")]
  checked_evaluate = calls[3][2]
  assert tuple(checked_evaluate.evaluate.measures) == ("softmax_diff",)
  assert [c.train_exit.classifier for _, name, c in calls if name == "train_exit"][1:] == [
      "meta_mlp", "lstm"]
  assert all(c.model.checkpoint == export and c.model.hf_path == ""
             for kind, name, c in calls if kind == "run" and name != "train")
