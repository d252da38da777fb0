"""The training loop (calm_jax.training.loop): a non-finite loss or gradient stops the run
with the last good checkpoint intact."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from calm_jax.training.checkpoints import TrainCheckpoints
from calm_jax.training.loop import LoopSettings, NonFiniteLossError, fit
from calm_jax.training.optimizers import OptimizerConfig, make_optimizer
from calm_jax.training.sharding import DEFAULT_RULES, MeshConfig, make_mesh


@jax.custom_vjp
def _gradient_breaks_above(w):
  return w


_gradient_breaks_above.defvjp(lambda w: (w, w),
                              lambda w, g: (jnp.where(w > 2.5, jnp.nan, g),))


@pytest.mark.parametrize("broken,message", [("loss", "the loss at step 4 is nan"),
                                            ("gradient", "the grad norm at step 4 is nan")])
def test_non_finite_loss_or_gradient_stops_with_the_last_good_checkpoint_intact(
    tmp_path, broken, message, tiny_data):
  # Adam with a constant rate of 1 raises w by 1 per step; at step 4 (w = 3 > 2.5) either
  # the loss or only its gradient turns NaN.
  def loss_fn(params, frozen, batch, rng):
    del frozen, batch, rng
    w = params["w"]
    loss = jnp.where(w > 2.5, jnp.nan, -w) if broken == "loss" else -_gradient_breaks_above(w)
    return loss, {"loss": loss}
  settings = LoopSettings(steps=10, batch_size=2, log_every=1, checkpoint_every=2)
  optimizer = make_optimizer(OptimizerConfig(optimizer="adamw", learning_rate=1.0,
                                             schedule="constant", clip_norm=0.0))
  run = lambda: fit(loss_fn, {"w": np.float32(0.0)}, optimizer, tiny_data(4), settings,
                    make_mesh(MeshConfig()), DEFAULT_RULES, str(tmp_path), {"kind": "test"})
  with pytest.raises(NonFiniteLossError, match=message + ".*last good checkpoint is step 2"):
    run()
  assert sorted(os.listdir(tmp_path / "checkpoints" / "train")) == ["2"]
  checkpoints = TrainCheckpoints(str(tmp_path / "checkpoints" / "train"), save_every=2, keep=2)
  like = {"params": {"w": jnp.float32(0)},
          "opt_state": optimizer.init({"w": jnp.float32(0)})}
  restored = checkpoints.restore(2, like, {"kind": "test", "parameter_shapes": {"['w']": []},
                                           "seed": 0, "batch_size": 2})
  checkpoints.close()
  assert float(restored["params"]["w"]) == pytest.approx(2.0, abs=1e-3)


def test_a_resumed_run_says_where_it_resumes_and_that_its_length_changed(tmp_path, tiny_data,
                                                                          capsys):
  def loss_fn(params, frozen, batch, rng):
    del frozen, batch, rng
    return -params["w"], {"loss": -params["w"]}
  optimizer = make_optimizer(OptimizerConfig(optimizer="adamw", learning_rate=0.1,
                                             schedule="constant", clip_norm=0.0))
  run = lambda steps: fit(loss_fn, {"w": np.float32(0.0)}, optimizer, tiny_data(4),
                          LoopSettings(steps=steps, batch_size=2, log_every=10,
                                       checkpoint_every=2),
                          make_mesh(MeshConfig()), DEFAULT_RULES, str(tmp_path),
                          {"kind": "t", "optimizer": {"schedule": "constant"}})
  run(4)
  assert "resuming" not in capsys.readouterr().out
  run(6)
  path = os.path.join(tmp_path, "checkpoints", "train", "4")
  assert capsys.readouterr().out.splitlines()[:2] == [
      f"[train] resuming from step 4 of 6 ({path})",
      "[train] notice: the run was started with 4 steps and now has 6: its 'constant' "
      "learning-rate schedule now ends at step 6, so the steps after 4 follow a different "
      "schedule than the first run planned (use a new workdir to train from scratch)"]
  result = run(6)
  assert capsys.readouterr().out.splitlines() == [
      f"[train] resuming from step 6 of 6 ({path[:-1]}6)",
      "[train] nothing left to train: the checkpoint is at step 6, the run has 6 steps"]
  assert (result.start_step, result.last_step, result.history) == (6, 6, [])


def test_a_truncated_checkpoint_is_named_with_what_to_do(tmp_path, tiny_data):
  def loss_fn(params, frozen, batch, rng):
    del frozen, batch, rng
    loss = -jnp.sum(params["w"])
    return loss, {"loss": loss}
  optimizer = make_optimizer(OptimizerConfig(optimizer="adamw", learning_rate=0.1,
                                             schedule="constant", clip_norm=0.0))
  run = lambda steps: fit(loss_fn, {"w": np.zeros((64,), np.float32)}, optimizer,
                          tiny_data(4), LoopSettings(steps=steps, batch_size=2,
                                                     checkpoint_every=2),
                          make_mesh(MeshConfig()), DEFAULT_RULES, str(tmp_path), {"kind": "t"})
  run(2)
  step_dir = os.path.join(tmp_path, "checkpoints", "train", "2")
  for root, _, names in os.walk(step_dir):
    for name in names:
      path = os.path.join(root, name)
      with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) // 3)
  with pytest.raises(ValueError, match=f"^{step_dir}: the checkpoint cannot be read "
                     r"\(.*\); it is incomplete or corrupt: delete it \(a training run then "
                     r"resumes from an earlier checkpoint or starts over\)"):
    run(4)
