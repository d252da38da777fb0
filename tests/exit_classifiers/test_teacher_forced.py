"""The classifiers' teacher-forced logits (`exit_classifiers.teacher_forced`): jittable and
differentiable for every classifier, and the layers each defines."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from calm_jax.exit_classifiers.teacher_forced import (classifier_logits_teacher_forced,
                                                      defined_layers)

L = 5  # classifier_model's decoder layers
NAMES = ["attention", "lstm", "meta_linear", "meta_mlp", "three_state_mlp"]


@pytest.fixture(scope="module")
def model(classifier_model):
  """conftest's classifier_model: the tiny T5, its batch and one random head per
  classifier."""
  return classifier_model


@pytest.mark.parametrize("name", NAMES)
def test_teacher_forced_logits_are_jittable_and_differentiable(model, name):
  states = jax.random.normal(jax.random.PRNGKey(0), (L, 2, 3, model.base_config.d_model))
  mask = np.array([[1, 1, 1], [1, 1, 0]], np.int32)
  points = (2, 3, 5)

  def loss(params, states):
    logits = classifier_logits_teacher_forced(name, params, states, mask, points)
    weight = jnp.asarray(defined_layers(name, L, points))[:, None, None]  # [L, 1, 1]
    return jnp.sum(weight * jax.nn.log_softmax(logits)[..., 1])

  value, (grads, state_grads) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(
      model.heads[name], states)
  assert np.isfinite(value)
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  assert all(np.abs(g).max() > 0 for g in jax.tree.leaves(grads)), "a parameter gets no gradient"
  assert np.abs(state_grads).max() > 0


def test_defined_layers():
  assert defined_layers("meta_linear", 5).tolist() == [True] * 5
  assert defined_layers("lstm", 5, (2, 4)).tolist() == [False, True, False, True, True]
  assert defined_layers("three_state_mlp", 5).tolist() == [False, False, True, True, True]
  assert defined_layers("three_state_mlp", 5, (2, 4)).tolist() == [False] * 4 + [True]
  with pytest.raises(ValueError, match=r"exit_points must lie in \[1, 5\], got \[0, 2\]"):
    defined_layers("lstm", 5, (0, 2))
