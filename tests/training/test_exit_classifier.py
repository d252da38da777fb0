"""Exit-classifier training: labels, balanced and geometric losses against NumPy, metrics,
a frozen backbone, resuming, and bad objectives (the train/train_exit modes end to end:
tests/modes/test_train_exit.py)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from calm_jax.exit_classifiers.registry import init_classifier
from calm_jax.model.config import T5Config
from calm_jax.model.t5 import init_params
from calm_jax.training import exit_classifier as ec
from calm_jax.training.loop import LoopSettings
from calm_jax.training.objectives import Batch
from calm_jax.training.optimizers import OptimizerConfig


def test_labels_consistent_with_final_layer_or_gold():
  top1 = jnp.asarray([[[5, 7]], [[5, 8]], [[6, 8]]])  # [L=3, B=1, T=2]
  targets = jnp.asarray([[5, 8]])
  np.testing.assert_array_equal(ec.exit_labels(top1, targets, "consistent")[:, 0],
                                [[0, 0], [0, 1], [1, 1]])
  np.testing.assert_array_equal(ec.exit_labels(top1, targets, "gold")[:, 0],
                                [[1, 0], [1, 1], [0, 1]])


def _log_probs(logits):
  logits = np.asarray(logits, np.float64)
  return logits - np.log(np.exp(logits).sum(-1, keepdims=True))


def test_class_weighted_cross_entropy_matches_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 2, 3, 2))
  labels = np.array([[[1, 0, 0], [0, 0, 1]], [[1, 1, 1], [0, 1, 1]]], np.float32)
  weights = np.ones_like(labels)
  weights[0, 1, 2] = 0  # a padding token
  log_p = _log_probs(logits)
  expected_num, expected_den = 0.0, 0.0
  for layer in range(2):
    w, y = weights[layer], labels[layer]
    n, n_pos = w.sum(), (w * y).sum()
    for c, n_c in ((1, n_pos), (0, n - n_pos)):
      chosen = (y == c) & (w > 0)
      expected_num += (n / (2 * n_c)) * -log_p[layer][..., c][chosen].sum()
      expected_den += (n / (2 * n_c)) * chosen.sum()
  loss = ec._balanced_cross_entropy(jnp.asarray(log_p, jnp.float32), jnp.asarray(labels),
                                    jnp.asarray(weights), "class_weights")
  np.testing.assert_allclose(float(loss), expected_num / expected_den, rtol=1e-5)
  plain = ec._balanced_cross_entropy(jnp.asarray(log_p, jnp.float32), jnp.asarray(labels),
                                     jnp.asarray(weights), "none")
  picked = np.where(labels > 0, log_p[..., 1], log_p[..., 0])
  np.testing.assert_allclose(float(plain), -(picked * weights).sum() / weights.sum(), rtol=1e-5)


def test_logit_adjustment_adds_the_log_prior_of_each_layer():
  logits = np.array([[[[0.3, -0.2], [1.0, 0.5], [0.0, 0.0], [-1.0, 2.0]]]])  # [1, 1, 4, 2]
  labels = np.array([[[1, 1, 1, 0]]], np.float32)  # prior of layer 1: (1/4, 3/4)
  weights = np.ones_like(labels)
  adjusted = _log_probs(np.asarray(_log_probs(logits)) + np.log([0.25, 0.75]))
  picked = np.where(labels > 0, adjusted[..., 1], adjusted[..., 0])
  loss = ec._balanced_cross_entropy(jnp.asarray(_log_probs(logits), jnp.float32),
                                    jnp.asarray(labels), jnp.asarray(weights),
                                    "logit_adjustment")
  np.testing.assert_allclose(float(loss), -picked.mean(), rtol=1e-5)


def test_geometric_loss_is_minus_log_probability_of_the_oracle_exit():
  c = np.array([0.2, 0.5, 0.9, 0.3])  # exit confidences at 4 layers, one token
  logits = np.log(np.stack([1 - c, c], -1))[:, None, None, :]  # [4, 1, 1, 2]
  points = np.array([True, False, True, True])  # layer 2 is no exit point
  for labels, expected in (
      ([0, 1, 0, 1], 0.8 * 0.1),  # oracle: layer 4 (the last point exits with what is left)
      ([0, 1, 1, 1], 0.8 * 0.9),  # oracle: layer 3 (layer 2 is skipped)
      ([1, 0, 0, 1], 0.2),  # oracle: layer 1
  ):
    loss = ec._geometric_loss(jnp.asarray(logits, jnp.float32),
                              jnp.asarray(labels, jnp.float32)[:, None, None], points,
                              jnp.ones((1, 1)))
    np.testing.assert_allclose(float(loss), -np.log(expected), rtol=1e-5)


def test_layer_metrics_accuracy_and_dont_exit_f1():
  # predictions (exit = 1): [1, 0, 0, 1, 0]; labels: [1, 0, 1, 0, 0]
  logits = np.array([[0, 1], [1, 0], [1, 0], [0, 1], [1, 0]], np.float32)[None, None]
  labels = np.array([1, 0, 1, 0, 0], np.float32)[None, None]
  metrics = ec._layer_metrics(jnp.asarray(logits), jnp.asarray(labels), jnp.ones((1, 1, 5)))
  # "don't exit": predicted 0 on tokens 2, 3, 5; true 0 on tokens 2, 4, 5 -> tp 2, fp 1, fn 1
  np.testing.assert_allclose(float(metrics["layer_accuracy"][0]), 3 / 5)
  np.testing.assert_allclose(float(metrics["layer_dont_exit_f1"][0]), 4 / 6)
  np.testing.assert_allclose(float(metrics["layer_positive_rate"][0]), 2 / 5)


@pytest.mark.parametrize("name", ["meta_linear", "meta_mlp", "three_state_mlp", "lstm",
                                  "attention"])
def test_no_gradient_reaches_the_backbone(name, tiny_config, tiny_data):
  config = T5Config(**{**tiny_config.__dict__, "num_decoder_layers": 4})  # three_state_mlp: 3 + L
  backbone = init_params(config, jax.random.PRNGKey(0))
  params = init_classifier(name, config, jax.random.PRNGKey(1))
  data = tiny_data(4)
  batch = Batch(jnp.asarray(data.inputs), jnp.asarray(data.targets))
  objective = ec.ClassifierObjective(classifier=name)
  grads = jax.grad(lambda b: ec.classifier_loss(config, objective, params, b, batch)[0])(backbone)
  assert all(not np.any(np.asarray(g)) for g in jax.tree.leaves(grads))
  classifier_grads = jax.grad(
      lambda p: ec.classifier_loss(config, objective, p, backbone, batch)[0])(params)
  assert any(np.any(np.asarray(g)) for g in jax.tree.leaves(classifier_grads))


def test_training_lowers_the_loss_resumes_and_leaves_the_backbone_bit_identical(
    tmp_path, tiny_config, tiny_data):
  backbone = init_params(tiny_config, jax.random.PRNGKey(0))
  original = [np.asarray(a).copy() for a in jax.tree.leaves(backbone)]
  run = lambda stop_after=None: ec.train_classifier(
      tiny_config, backbone, init_classifier("meta_mlp", tiny_config, jax.random.PRNGKey(1)),
      tiny_data(),
      objective=ec.ClassifierObjective(), stop_after=stop_after,
      # weight decay would move any parameter that reached the optimizer, gradient or not
      optimizer=OptimizerConfig(optimizer="adamw", learning_rate=3e-2, weight_decay=0.1),
      settings=LoopSettings(steps=8, batch_size=8, log_every=4, checkpoint_every=4),
      workdir=str(tmp_path))
  first = run(stop_after=4)
  second = run()
  assert second.start_step == 4 and second.history[-1]["loss"] < first.history[0]["loss"]
  assert os.path.isdir(tmp_path / "checkpoints" / "exit_meta_mlp")
  for before, after in zip(original, jax.tree.leaves(second.frozen)):
    assert np.asarray(after).tobytes() == before.tobytes()
  assert set(second.params) == set(init_classifier("meta_mlp", tiny_config,
                                                   jax.random.PRNGKey(1)))
  # Layer L (where every token exits) is not scored.
  last = second.history[-1]
  assert last["layer_accuracy"][-1] is None and last["layer_accuracy"][0] is not None


def test_three_state_mlp_needs_three_exit_points_before_the_last_layer():
  objective = ec.ClassifierObjective(classifier="three_state_mlp", exit_points=(2, 3))
  with pytest.raises(ValueError, match=r"makes no prediction before the last layer with "
                                       r"exit points \(2, 3\) of a 3-layer decoder"):
    ec.asked_layers(objective, 3)
  asked = ec.asked_layers(ec.ClassifierObjective(classifier="three_state_mlp"), 4)
  np.testing.assert_array_equal(asked, [False, False, True, False])


def test_bad_objective_names_are_rejected():
  with pytest.raises(ValueError, match="train_exit.labels='oracle' is not known; allowed: "
                                       "consistent, gold"):
    ec.ClassifierObjective(labels="oracle").validate()
  with pytest.raises(ValueError, match="unknown exit classifier 'mlp'"):
    ec.ClassifierObjective(classifier="mlp").validate()
