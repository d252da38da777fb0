"""CALM fine-tuning as a library call (calm_jax.training.calm): an interrupted and resumed
run equals an uninterrupted one, and resuming with another model or objective says what
differs; a bad shallow-deep objective fails before any work."""

import os

import jax
import numpy as np
import pytest

from calm_jax.model.config import T5Config
from calm_jax.model.t5 import init_params
from calm_jax.training import objectives
from calm_jax.training.calm import train_calm
from calm_jax.training.checkpoints import CheckpointMismatchError
from calm_jax.training.loop import LoopSettings, read_metrics
from calm_jax.training.optimizers import OptimizerConfig


@pytest.fixture
def train(tiny_config, tiny_data):
  """Runs train_calm on the tiny model and copy task: `steps` steps of 4 examples, a
  checkpoint every 2 steps (2 kept), stopping after `stop_after` steps if set."""
  def run(workdir, steps=4, stop_after=None, config=tiny_config, **objective):
    return train_calm(
        config, init_params(config, jax.random.PRNGKey(0)), tiny_data(),
        objective=objectives.AnytimeObjective(**objective),
        optimizer=OptimizerConfig(optimizer="adamw", learning_rate=1e-2, warmup_steps=1),
        settings=LoopSettings(steps=steps, batch_size=4, log_every=2, checkpoint_every=2,
                              keep_checkpoints=2),
        workdir=str(workdir), stop_after=stop_after)
  return run


def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(tmp_path, tiny_config,
                                                                  train):
  with_dropout = T5Config(**{**tiny_config.__dict__, "dropout_rate": 0.2})
  whole = train(tmp_path / "whole", steps=5, config=with_dropout)
  # Preempted after step 3: the last checkpoint is step 2, so step 3 is done again.
  first = train(tmp_path / "resumed", steps=5, stop_after=3, config=with_dropout)
  assert first.last_step == 3 and len(first.history) == 3
  second = train(tmp_path / "resumed", steps=5, config=with_dropout)
  assert second.start_step == 2 and [r["step"] for r in second.history] == [3, 4, 5]
  for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(second.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  logged = read_metrics(str(tmp_path / "resumed"))
  assert [r["step"] for r in logged] == [1, 2, 3, 4, 5]
  assert logged == read_metrics(str(tmp_path / "whole"))
  assert whole.history[-1]["loss"] < whole.history[0]["loss"]
  # Dropout is on: the same step with another key gives another loss.
  assert train(tmp_path / "other", steps=1, config=T5Config(
      **{**with_dropout.__dict__, "dropout_rate": 0.5})).history[0]["loss"] != logged[0]["loss"]
  assert os.listdir(tmp_path / "whole" / "tensorboard" / "train")


def test_resuming_with_a_different_model_says_what_differs(tmp_path, tiny_config, train):
  train(tmp_path, steps=2)
  wider = T5Config(**{**tiny_config.__dict__, "d_ff": 48})
  with pytest.raises(CheckpointMismatchError, match=r"d_ff: checkpoint 32, this run 48"):
    train(tmp_path, steps=4, config=wider)
  with pytest.raises(CheckpointMismatchError, match="layer_weighting: checkpoint 'calm', this run 'uniform'"):
    train(tmp_path, steps=4, layer_weighting="uniform")


def test_shallow_deep_objective_with_a_bad_shallow_layer_fails_before_any_work(tmp_path,
                                                                              tiny_config):
  with pytest.raises(ValueError, match=r"shallow_exit_layer=3 must be in \[1, 2\]"):
    train_calm(tiny_config, None, None,  # never read: the check comes first
               objective=objectives.ShallowDeepObjective(shallow_exit_layer=3),
               optimizer=OptimizerConfig(), settings=LoopSettings(steps=1, batch_size=4),
               workdir=str(tmp_path / "bad"))
  assert not (tmp_path / "bad").exists()


def test_learned_kd_map_trains_beside_the_model(tmp_path, tiny_config, tiny_data):
  """kd_linear_map: the map starts as the identity (so the first step's loss is the plain
  KD's), trains with the model, and comes back apart from the model's parameters."""
  def run(workdir, kd_linear_map):
    objective = objectives.ShallowDeepObjective(shallow_exit_layer=1, kd_weight=1.0,
                                                kd_linear_map=kd_linear_map)
    return train_calm(
        tiny_config, init_params(tiny_config, jax.random.PRNGKey(0)), tiny_data(),
        objective=objective,
        optimizer=OptimizerConfig(optimizer="adamw", learning_rate=1e-2, warmup_steps=1),
        settings=LoopSettings(steps=2, batch_size=4, log_every=1, checkpoint_every=2),
        workdir=str(workdir))
  plain, mapped = run(tmp_path / "plain", False), run(tmp_path / "mapped", True)
  assert plain.extra is None
  assert mapped.history[0]["loss"] == pytest.approx(plain.history[0]["loss"], rel=1e-6)
  assert mapped.history[0]["kd"] == pytest.approx(plain.history[0]["kd"], rel=1e-6)
  kd_map = np.asarray(mapped.extra)
  assert kd_map.shape == (tiny_config.d_model,) * 2
  assert not np.allclose(kd_map, np.eye(tiny_config.d_model))  # trained
  model_tree = jax.tree.structure(init_params(tiny_config, jax.random.PRNGKey(0)))
  assert jax.tree.structure(mapped.params) == model_tree
