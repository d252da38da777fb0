"""The anytime objective (calm_jax.training.objectives) against NumPy: layer weights, token
losses with label smoothing and z-loss, the weighted sum over layers, and its settings
checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from calm_jax.model.t5 import exit_logits, forward, init_params, shift_right
from calm_jax.training import objectives


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
def test_anytime_loss_is_the_weighted_sum_of_every_layers_masked_nll(weighting, smoothing,
                                                                   tiny_config, tiny_data):
  config = tiny_config
  params = init_params(config, jax.random.PRNGKey(1))
  data = tiny_data(4)
  batch = objectives.Batch(inputs=jnp.asarray(data.inputs), targets=jnp.asarray(data.targets))
  loss, metrics = objectives.anytime_loss(
      config, objectives.AnytimeObjective(layer_weighting=weighting, label_smoothing=smoothing),
      params, batch)
  out = forward(config, params, batch.inputs, shift_right(config, batch.targets),
                (batch.inputs != 0).astype(jnp.int32))
  mask = data.targets != 0
  weights = objectives.layer_weights(weighting, 3)
  expected, per_layer = 0.0, []
  for layer in range(3):
    log_p = numpy_log_softmax(exit_logits(config, params, out.hidden_states[layer]))
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


def test_objective_settings_are_checked():
  with pytest.raises(ValueError, match="layer_weighting='linear' is not known"):
    objectives.AnytimeObjective(layer_weighting="linear").validate()
  with pytest.raises(ValueError, match="label_smoothing must be in"):
    objectives.AnytimeObjective(label_smoothing=1.0).validate()


@pytest.mark.parametrize("mapping, with_map", [("last", False), ("uniform", False),
                                               ("last", True)])
def test_shallow_deep_loss_is_the_weighted_two_exit_nll_plus_kd(mapping, with_map,
                                                                tiny_config, tiny_data):
  config = tiny_config  # three decoder layers; the shallow exit at layer 1
  params = init_params(config, jax.random.PRNGKey(1))
  data = tiny_data(4)
  batch = objectives.Batch(inputs=jnp.asarray(data.inputs), targets=jnp.asarray(data.targets))
  objective = objectives.ShallowDeepObjective(shallow_exit_layer=1, kd_weight=0.5,
                                              kd_mapping=mapping)
  kd_map = (np.random.default_rng(2).normal(size=(config.d_model, config.d_model))
            .astype(np.float32) if with_map else None)  # the learned linear map [d, d]
  loss, metrics = objectives.shallow_deep_loss(
      config, objective, params, batch, kd_map=None if kd_map is None else jnp.asarray(kd_map))
  states = np.asarray(forward(config, params, batch.inputs, shift_right(config, batch.targets),
                              (batch.inputs != 0).astype(jnp.int32)).hidden_states)
  mask = data.targets != 0
  nll = []
  for layer in (0, 2):
    log_p = numpy_log_softmax(exit_logits(config, params, states[layer]))
    nll.append(-np.take_along_axis(log_p, data.targets[..., None], -1)[..., 0][mask].mean())
  deep = 3 if mapping == "last" else 1 + int(np.ceil(1 * 2 / 1))  # both give layer 3
  student = states[0] if kd_map is None else states[0].astype(np.float64) @ kd_map
  kd = np.mean((student - states[deep - 1]) ** 2, axis=-1)[mask].mean()
  expected = (1 * nll[0] + 3 * nll[1]) / (1 + 3) + 0.5 * kd
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["kd"]), kd, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(metrics["layer_loss"])[[0, 2]], nll, rtol=1e-5)
  assert np.isnan(float(metrics["layer_loss"][1]))


@pytest.mark.parametrize("change, message", [
    (dict(shallow_exit_layer=3), r"shallow_exit_layer=3 must be in \[1, 2\]"),
    (dict(shallow_exit_layer=0), r"shallow_exit_layer=0 must be in \[1, 2\]"),
    (dict(kd_mapping="nearest"),
     "kd_mapping='nearest'; allowed: last, uniform, uniform_published, dynamic"),
    (dict(kd_mapping="uniform_published"), "'uniform_published' has no list for 3 decoder"),
    (dict(kd_linear_map=1), "kd_linear_map must be True or False, got 1"),
    (dict(kd_weight=-1.0), "kd_weight must be >= 0, got -1.0"),
])
def test_shallow_deep_settings_are_checked(change, message):
  with pytest.raises(ValueError, match=message):
    objectives.ShallowDeepObjective(**change).validate(3)
