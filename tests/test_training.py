"""CALM training: the anytime objective against NumPy, schedules, the loop's resume and
failure behaviour, exports, and the train mode."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from calm_jax.data import byte_vocab
from calm_jax.model.config import T5Config
from calm_jax.model.t5 import exit_logits, forward, init_params, shift_right
from calm_jax.training import objectives
from calm_jax.training.calm import train_calm
from calm_jax.training.checkpoints import (CheckpointMismatchError, TrainCheckpoints,
                                           export_params, load_exported)
from calm_jax.training.data import EncodedExamples, device_batch, global_rows
from calm_jax.training.loop import LoopSettings, NonFiniteLossError, fit, read_metrics
from calm_jax.training.optimizers import OptimizerConfig, make_optimizer, make_schedule
from calm_jax.training.sharding import DEFAULT_RULES, MeshConfig, make_mesh

TINY = T5Config(vocab_size=byte_vocab.VOCAB_SIZE, d_model=16, d_kv=4, d_ff=32, num_layers=1,
                num_decoder_layers=3, num_heads=4, feed_forward_proj="gated-gelu",
                tie_word_embeddings=False, scale_decoder_outputs=False, dropout_rate=0.0)


def tiny_data(count=16, seed=0):
  rng = np.random.default_rng(seed)
  words = ["".join(rng.choice(list("abcdef"), rng.integers(2, 6))) for _ in range(count)]
  inputs, _ = byte_vocab.encode_batch([f"copy: {w}" for w in words], 12)
  targets, _ = byte_vocab.encode_batch(words, 7)
  return EncodedExamples(inputs=inputs, targets=targets)


def numpy_log_softmax(logits):
  logits = np.asarray(logits, np.float64)
  shifted = logits - logits.max(-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


@pytest.mark.parametrize("weighting,expected", [
    ("calm", [1 / 6, 2 / 6, 3 / 6]),
    ("uniform", [1 / 3, 1 / 3, 1 / 3]),
    ("geometric", [2 / 14, 4 / 14, 8 / 14]),
    ("last", [0, 0, 1]),
])
def test_layer_weights(weighting, expected):
  np.testing.assert_allclose(objectives.layer_weights(weighting, 3), expected, rtol=1e-12)


def test_token_losses_match_numpy_with_label_smoothing_and_z_loss():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 3, 7)).astype(np.float32) * 3
  targets = rng.integers(0, 7, size=(2, 3))
  smoothing, z = 0.1, 1e-2
  nll, z_term = objectives.token_losses(jnp.asarray(logits), jnp.asarray(targets),
                                        smoothing, z)
  log_p = numpy_log_softmax(logits)
  q = np.full(logits.shape, smoothing / 6)
  np.put_along_axis(q, targets[..., None], 1 - smoothing, axis=-1)
  np.testing.assert_allclose(nll, -(q * log_p).sum(-1), rtol=1e-5)
  log_z = np.log(np.exp(np.asarray(logits, np.float64)).sum(-1))
  np.testing.assert_allclose(z_term, z * log_z ** 2, rtol=1e-5)
  plain, _ = objectives.token_losses(jnp.asarray(logits), jnp.asarray(targets), 0.0, 0.0)
  np.testing.assert_allclose(plain, -np.take_along_axis(log_p, targets[..., None], -1)[..., 0],
                             rtol=1e-5)


@pytest.mark.parametrize("weighting,smoothing", [("calm", 0.0), ("geometric", 0.0),
                                                 ("last", 0.0), ("uniform", 0.2)])
def test_anytime_loss_is_the_weighted_sum_of_every_layers_masked_nll(weighting, smoothing):
  params = init_params(TINY, jax.random.PRNGKey(1))
  data = tiny_data(4)
  batch = objectives.Batch(inputs=jnp.asarray(data.inputs), targets=jnp.asarray(data.targets))
  loss, metrics = objectives.anytime_loss(
      TINY, objectives.AnytimeObjective(layer_weighting=weighting, label_smoothing=smoothing),
      params, batch)
  out = forward(TINY, params, batch.inputs, shift_right(TINY, batch.targets),
                (batch.inputs != 0).astype(jnp.int32))
  mask = data.targets != 0
  weights = objectives.layer_weights(weighting, 3)
  expected, per_layer = 0.0, []
  for layer in range(3):
    log_p = numpy_log_softmax(exit_logits(TINY, params, out.hidden_states[layer]))
    q = np.full(log_p.shape, smoothing / (log_p.shape[-1] - 1))
    np.put_along_axis(q, data.targets[..., None], 1 - smoothing, axis=-1)
    nll = -np.take_along_axis(log_p, data.targets[..., None], -1)[..., 0]
    per_layer.append(nll[mask].mean())  # the logged loss: plain NLL
    expected += weights[layer] * (-(q * log_p).sum(-1))[mask].mean()
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  used = weights > 0
  np.testing.assert_allclose(np.asarray(metrics["layer_loss"])[used],
                             np.asarray(per_layer)[used], rtol=1e-5)
  assert np.isnan(np.asarray(metrics["layer_loss"])[~used]).all()
  # The last layer through the exit head is forward()'s logits.
  accuracy = (np.argmax(out.logits, -1) == data.targets)[mask].mean()
  np.testing.assert_allclose(float(metrics["layer_accuracy"][-1]), accuracy, rtol=1e-6)


def test_schedules_with_warmup():
  rsqrt = make_schedule(OptimizerConfig(learning_rate=1.0, schedule="rsqrt", warmup_steps=4))
  np.testing.assert_allclose([float(rsqrt(s)) for s in (0, 2, 4, 16)],
                             [0.0, 0.5, 1.0, 0.5], rtol=1e-6)
  cosine = make_schedule(OptimizerConfig(learning_rate=2.0, schedule="cosine", warmup_steps=2,
                                         total_steps=12))
  np.testing.assert_allclose([float(cosine(s)) for s in (1, 2, 7, 12)], [1.0, 2.0, 1.0, 0.0],
                             atol=1e-6)
  constant = make_schedule(OptimizerConfig(learning_rate=0.3, schedule="constant"))
  assert float(constant(0)) == pytest.approx(0.3) and float(constant(1000)) == pytest.approx(0.3)


@pytest.mark.parametrize("field,value,message", [
    ("optimizer", "sgd", "optimizer='sgd' is not known; allowed: adafactor, adamw"),
    ("schedule", "linear", "schedule='linear' is not known; allowed: rsqrt, cosine, constant"),
    ("learning_rate", 0.0, "learning_rate must be > 0"),
    ("clip_norm", -1.0, "clip_norm must be >= 0"),
])
def test_optimizer_settings_are_checked(field, value, message):
  with pytest.raises(ValueError, match=message.replace("(", r"\(")):
    make_optimizer(OptimizerConfig(**{field: value}))


def test_objective_settings_are_checked():
  with pytest.raises(ValueError, match="layer_weighting='linear' is not known"):
    objectives.AnytimeObjective(layer_weighting="linear").validate()
  with pytest.raises(ValueError, match="label_smoothing must be in"):
    objectives.AnytimeObjective(label_smoothing=1.0).validate()


def test_batches_depend_only_on_seed_and_step_and_cover_each_epoch():
  first_epoch = np.concatenate([global_rows(s, 10, 5, seed=3) for s in range(2)])
  assert sorted(first_epoch.tolist()) == list(range(10))
  np.testing.assert_array_equal(global_rows(7, 10, 4, seed=3), global_rows(7, 10, 4, seed=3))
  # A batch straddling two epochs takes the end of one permutation and the start of the next.
  straddling = global_rows(2, 10, 4, seed=3)  # stream positions 8..11
  np.testing.assert_array_equal(straddling[:2], first_epoch[8:])
  data = tiny_data(10)
  batch = device_batch(data, 2, 4, 3, jax.sharding.SingleDeviceSharding(jax.devices()[0]))
  np.testing.assert_array_equal(batch.inputs, data.inputs[straddling])
  np.testing.assert_array_equal(batch.targets, data.targets[straddling])


def _train(workdir, steps=4, stop_after=None, config=TINY, **objective):
  return train_calm(
      config, init_params(config, jax.random.PRNGKey(0)), tiny_data(),
      objective=objectives.AnytimeObjective(**objective),
      optimizer=OptimizerConfig(optimizer="adamw", learning_rate=1e-2, warmup_steps=1),
      settings=LoopSettings(steps=steps, batch_size=4, log_every=2, checkpoint_every=2,
                            keep_checkpoints=2),
      workdir=str(workdir), stop_after=stop_after)


def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(tmp_path):
  with_dropout = T5Config(**{**TINY.__dict__, "dropout_rate": 0.2})
  whole = _train(tmp_path / "whole", steps=5, config=with_dropout)
  # Preempted after step 3: the last checkpoint is step 2, so step 3 is done again.
  first = _train(tmp_path / "resumed", steps=5, stop_after=3, config=with_dropout)
  assert first.last_step == 3 and len(first.history) == 3
  second = _train(tmp_path / "resumed", steps=5, config=with_dropout)
  assert second.start_step == 2 and [r["step"] for r in second.history] == [3, 4, 5]
  for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(second.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  logged = read_metrics(str(tmp_path / "resumed"))
  assert [r["step"] for r in logged] == [1, 2, 3, 4, 5]
  assert logged == read_metrics(str(tmp_path / "whole"))
  assert whole.history[-1]["loss"] < whole.history[0]["loss"]
  # Dropout is on: the same step with another key gives another loss.
  assert _train(tmp_path / "other", steps=1, config=T5Config(
      **{**with_dropout.__dict__, "dropout_rate": 0.5})).history[0]["loss"] != logged[0]["loss"]
  assert os.listdir(tmp_path / "whole" / "tensorboard" / "train")


def test_resuming_with_a_different_model_says_what_differs(tmp_path):
  _train(tmp_path, steps=2)
  wider = T5Config(**{**TINY.__dict__, "d_ff": 48})
  with pytest.raises(CheckpointMismatchError, match=r"d_ff: checkpoint 32, this run 48"):
    _train(tmp_path, steps=4, config=wider)
  with pytest.raises(CheckpointMismatchError, match="layer_weighting: checkpoint 'calm', this run 'uniform'"):
    _train(tmp_path, steps=4, layer_weighting="uniform")


@jax.custom_vjp
def _gradient_breaks_above(w):
  return w


_gradient_breaks_above.defvjp(lambda w: (w, w),
                              lambda w, g: (jnp.where(w > 2.5, jnp.nan, g),))


@pytest.mark.parametrize("broken,message", [("loss", "the loss at step 4 is nan"),
                                            ("gradient", "the grad norm at step 4 is nan")])
def test_non_finite_loss_or_gradient_stops_with_the_last_good_checkpoint_intact(
    tmp_path, broken, message):
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


def test_export_round_trip_and_model_source(tmp_path):
  import ml_collections  # pylint: disable=import-outside-toplevel
  from calm_jax.model.source import load_model  # pylint: disable=import-outside-toplevel
  params = init_params(TINY, jax.random.PRNGKey(2))
  export_params(str(tmp_path / "model"), TINY, params)
  config, loaded = load_exported(str(tmp_path / "model"))
  assert config == TINY
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  section = ml_collections.ConfigDict({"hf_path": "", "checkpoint": str(tmp_path / "model")})
  assert load_model(section, seed=0)[0] == TINY
  with pytest.raises(ValueError, match="is not a calm_jax params export"):
    load_model(ml_collections.ConfigDict({"hf_path": "", "checkpoint": str(tmp_path)}), 0)
  with pytest.raises(ValueError, match="are both set; name one model source"):
    load_model(ml_collections.ConfigDict({"hf_path": "x", "checkpoint": "y"}), 0)
