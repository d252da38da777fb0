"""FREE's layer-wise distillation (calm_jax.training.distillation) on hand-made states
against NumPy: the fixed mappings, the monotone dynamic alignment (against every monotone
assignment), FREE's published uniform lists, the stop-gradient on the deep side, the
learned map, and the mapping check."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from calm_jax.training import distillation

L, B, T, D = 6, 2, 3, 4


def _states(seed=0):
  """[L, B, T, d] hand-made states and a token mask [B, T] with one padded token."""
  rng = np.random.default_rng(seed)
  states = rng.normal(size=(L, B, T, D)).astype(np.float32)
  mask = np.ones((B, T), np.float32)
  mask[1, 2] = 0
  return states, mask


def _mse(a, b, mask):
  per_token = np.mean((np.asarray(a, np.float64) - b) ** 2, axis=-1)  # [B, T]
  return (per_token * mask).sum() / mask.sum()


@pytest.mark.parametrize("shallow, mapping, pairs", [
    (2, "last", [(2, 6)]),
    (2, "uniform", [(1, 4), (2, 6)]),  # s + ceil(i (L - s) / s): 2 + 2, 2 + 4
    (4, "uniform", [(1, 5), (2, 5), (3, 6), (4, 6)]),  # 4 + ceil(i / 2)
    (1, "uniform", [(1, 6)]),
])
def test_fixed_mappings_pair_the_layers_and_average_their_mse(shallow, mapping, pairs):
  assert distillation.fixed_pairs(mapping, shallow, L) == tuple(pairs)
  states, mask = _states()
  expected = np.mean([_mse(states[i - 1], states[j - 1], mask) for i, j in pairs])
  got = distillation.distillation_loss(jnp.asarray(states), jnp.asarray(mask), shallow, mapping)
  np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def _best_monotone(costs):
  """Brute force: the non-decreasing assignment of least total cost (first on ties)."""
  num_shallow, num_deep = costs.shape
  best = min(itertools.combinations_with_replacement(range(num_shallow), num_deep),
             key=lambda path: sum(costs[i, j] for j, i in enumerate(path)))
  return list(best)


@pytest.mark.parametrize("seed", range(5))
def test_dynamic_alignment_is_the_least_cost_monotone_assignment(seed):
  costs = np.random.default_rng(seed).uniform(size=(3, 4))
  np.testing.assert_array_equal(distillation.monotone_assignment(jnp.asarray(costs)),
                                _best_monotone(costs))


def test_dynamic_mapping_uses_the_least_cost_monotone_pairs():
  states, mask = _states(1)
  shallow = 2
  costs = np.array([[_mse(states[i], states[j], mask) for j in range(shallow, L)]
                    for i in range(shallow)])  # [s, L - s]
  path = _best_monotone(costs)
  expected = np.mean([costs[i, j] for j, i in enumerate(path)])
  got = distillation.distillation_loss(jnp.asarray(states), jnp.asarray(mask), shallow,
                                       "dynamic")
  np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def test_only_the_shallow_side_gets_gradients_and_the_map_applies_first():
  states, mask = _states(2)
  kd_map = np.random.default_rng(3).normal(size=(D, D)).astype(np.float32)
  loss = lambda s: distillation.distillation_loss(s, jnp.asarray(mask), 2, "uniform",
                                                  jnp.asarray(kd_map))
  grads = np.asarray(jax.grad(loss)(jnp.asarray(states)))
  assert np.all(grads[2:] == 0) and np.any(grads[:2] != 0)
  mapped = states[:2] @ kd_map
  expected = np.mean([_mse(mapped[0], states[3], mask), _mse(mapped[1], states[5], mask)])
  np.testing.assert_allclose(float(loss(jnp.asarray(states))), expected, rtol=1e-5)


def test_unknown_mapping_is_refused():
  with pytest.raises(ValueError, match="kd_mapping='nearest'; allowed: last, uniform, "
                                       "uniform_published, dynamic"):
    distillation.check_mapping("nearest")


@pytest.mark.parametrize("num_layers, shallow, teachers", [
    (24, 4, [6, 12, 18, 24]),
    (24, 10, [3, 6, 8, 11, 13, 16, 18, 20, 22, 24]),
    (24, 12, [2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24]),
    (12, 3, [4, 8, 12]),
])
def test_published_uniform_lists_pair_shallow_layer_i_with_their_ith_teacher(
    num_layers, shallow, teachers):
  assert distillation.fixed_pairs("uniform_published", shallow, num_layers) == tuple(
      zip(range(1, shallow + 1), teachers))


def test_published_uniform_loss_reads_teachers_anywhere_behind_stop_gradient():
  """L 24, s 12: shallow layer i learns layer 2i, so layers 2..12 are students and (behind
  stop_gradient) teachers at once."""
  rng = np.random.default_rng(4)
  states = rng.normal(size=(24, 2, 3, 2)).astype(np.float32)
  mask = np.ones((2, 3), np.float32)
  loss = lambda s: distillation.distillation_loss(s, jnp.asarray(mask), 12, "uniform_published")
  expected = np.mean([_mse(states[i - 1], states[2 * i - 1], mask) for i in range(1, 13)])
  np.testing.assert_allclose(float(loss(jnp.asarray(states))), expected, rtol=1e-5)
  # Only the student side carries gradients: layer 2i - 1 (0-based) of pair i is a teacher.
  grads = np.asarray(jax.grad(loss)(jnp.asarray(states)))
  student_side = 2 * (states[:12] - states[1:24:2]) / (12 * 2 * mask.sum())  # d mean / d s
  np.testing.assert_allclose(grads[:12], student_side * mask[..., None], rtol=1e-4, atol=1e-7)
  assert np.all(grads[12:] == 0)


def test_published_uniform_without_a_list_is_refused():
  with pytest.raises(ValueError, match=r"'uniform_published' has no list for 6 decoder layers "
                                       r"with shallow exit 2; published for \(L 24, s 12\)"):
    distillation.check_mapping("uniform_published", 2, 6)
  distillation.check_mapping("uniform_published")  # L unknown yet: the name alone is fine
