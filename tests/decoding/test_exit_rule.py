"""The exit rule: exit points, the decaying threshold against a NumPy reference, and the
checks of ExitConfig's generic fields (a measure's own options: tests/decoding/measures/)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from calm_jax.decoding.exit_rule import ExitConfig, is_exit_point, threshold_at


# --- threshold_at -----------------------------------------------------------------------

def _paper(lam, tau, t, n):
  return np.clip(0.9 * lam + 0.1 * np.exp(-tau * t / n), 0.0, 1.0)


def _code(lam, tau, t, n):
  return lam * (0.9 + 0.1 * np.exp(-tau * t / n))


@pytest.mark.parametrize("decay, reference", [("paper", _paper), ("code", _code)])
@pytest.mark.parametrize("lam, tau, n", [
    (0.5, 1.0, 10), (0.8, 4.0, 16), (0.05, 2.5, 7), (0.95, 0.3, 64), (1.5, 2.0, 12),
    (0.0, 3.0, 5),
])
def test_threshold_at_matches_numpy(decay, reference, lam, tau, n):
  positions = np.arange(n)
  ours = np.asarray(threshold_at(lam, tau, jnp.asarray(positions), n, decay))
  np.testing.assert_allclose(ours, reference(lam, tau, positions, n), atol=1e-6, rtol=0)
  assert ours.dtype == np.float32


def test_threshold_at_decays_monotonically_towards_its_floor():
  positions = jnp.arange(40)
  paper = np.asarray(threshold_at(0.6, 5.0, positions, 40, "paper"))
  code = np.asarray(threshold_at(0.6, 5.0, positions, 40, "code"))
  assert np.all(np.diff(paper) < 0) and np.all(np.diff(code) < 0)
  assert paper[-1] > 0.9 * 0.6 and code[-1] > 0.9 * 0.6
  # The two forms differ for lambda < 1: the paper decays towards 0.9 lam + 0.1 e^(-tau).
  assert not np.allclose(paper, code)


@pytest.mark.parametrize("decay", ["paper", "code"])
@pytest.mark.parametrize("lam", [0.0, 0.3, 0.77, 1.0, 1.5])
def test_threshold_at_with_tau_zero_is_lambda_exactly(decay, lam):
  ours = np.asarray(threshold_at(lam, 0.0, jnp.arange(9), 9, decay))
  np.testing.assert_array_equal(ours, np.full(9, lam, np.float32))


def test_threshold_at_traces_lambda_and_tau():
  """lambda and tau are runtime values: one compiled function serves every value."""
  f = jax.jit(lambda lam, tau, t: threshold_at(lam, tau, t, 10, "paper"))
  for lam, tau in [(0.2, 0.0), (0.2, 3.0), (0.9, 1.0)]:
    np.testing.assert_allclose(f(lam, tau, jnp.arange(10)),
                               _paper(lam, tau, np.arange(10), 10) if tau else np.full(10, lam),
                               atol=1e-6)
  assert f._cache_size() == 1


# --- exit points ------------------------------------------------------------------------

@pytest.mark.parametrize("num_layers, min_exit, interval, expected", [
    (8, 1, 1, [1, 2, 3, 4, 5, 6, 7, 8]),
    (8, 3, 2, [3, 5, 7, 8]),
    (8, 3, 1, [3, 4, 5, 6, 7, 8]),
    (8, 1, 3, [1, 4, 7, 8]),
    (8, 2, 3, [2, 5, 8]),
    (8, 8, 1, [8]),
    (8, 5, 10, [5, 8]),
    (6, 2, 2, [2, 4, 6]),
])
def test_is_exit_point(num_layers, min_exit, interval, expected):
  config = ExitConfig(min_exit_layer=min_exit, exit_interval=interval)
  config.validate(num_layers)
  layers = np.arange(1, num_layers + 1)
  as_python = [int(i) for i in layers if bool(is_exit_point(int(i), config, num_layers))]
  assert as_python == expected
  traced = np.asarray(jax.jit(lambda i: is_exit_point(i, config, num_layers))(jnp.asarray(layers)))
  np.testing.assert_array_equal(layers[traced], expected)


# --- ExitConfig.validate ----------------------------------------------------------------

# The unknown measure name and the static layer are checked by the measures
# (test_measures.py, measures/test_fixed.py).
@pytest.mark.parametrize("fields, message", [
    (dict(threshold=-0.1), r"ExitConfig.threshold \(lambda\) must be >= 0, got -0.1"),
    (dict(threshold=float("nan")), r"ExitConfig.threshold \(lambda\) must be >= 0, got nan"),
    (dict(tau=-1.0), "ExitConfig.tau must be >= 0, got -1.0"),
    (dict(decay="fast"), "ExitConfig.decay='fast'; allowed: paper, code"),
    (dict(propagation="x"), "ExitConfig.propagation='x'; allowed: copy_state, full_compute"),
    (dict(min_exit_layer=0), r"ExitConfig.min_exit_layer=0 must be in \[1, 6\] \(the decoder "
     r"has 6 layers\)"),
    (dict(min_exit_layer=7), r"ExitConfig.min_exit_layer=7 must be in \[1, 6\]"),
    (dict(exit_interval=0), "ExitConfig.exit_interval must be a positive integer, got 0"),
    (dict(exit_interval=1.5), "ExitConfig.exit_interval must be a positive integer, got 1.5"),
    # The switches are checked whichever measure runs.
    (dict(jsd_by_distance=1), "ExitConfig.jsd_by_distance must be true or false, got 1"),
    (dict(measure="softmax_max", contrastive_token="yes"),
     "ExitConfig.contrastive_token must be true or false, got 'yes'"),
    (dict(adaptive_target=1.0), r"ExitConfig.adaptive_target must be in \(0, 1\), got 1.0"),
    (dict(adaptive_max_refits=-1),
     "ExitConfig.adaptive_max_refits must be an integer >= 0, got -1"),
])
def test_exit_config_validate_rejects(fields, message):
  with pytest.raises(ValueError, match=message):
    ExitConfig(**fields).validate(6)


@pytest.mark.parametrize("fields", [
    dict(), dict(threshold=0.0), dict(threshold=1.5, tau=4.0, decay="code"),
    dict(min_exit_layer=6, exit_interval=3), dict(measure="static", static_exit_layer=6),
    dict(measure="oracle", propagation="full_compute"),
    # A static layer is only checked for the static measure.
    dict(measure="softmax_max", static_exit_layer=99),
])
def test_exit_config_validate_accepts(fields):
  ExitConfig(**fields).validate(6)


@pytest.mark.parametrize("fields", [
    dict(threshold=np.float32(0.5)), dict(threshold=np.int64(1)), dict(tau=np.float32(2.0)),
    dict(min_exit_layer=np.int64(2)),
])
def test_exit_config_validate_accepts_numpy_scalars(fields):
  ExitConfig(**fields).validate(6)


def test_compiled_part_drops_only_runtime_values():
  config = ExitConfig(measure="softmax_max", threshold=0.4, tau=2.0, decay="code",
                      min_exit_layer=2, exit_interval=2, propagation="full_compute")
  other = ExitConfig(measure="softmax_max", threshold=0.9, tau=0.0, decay="code",
                     min_exit_layer=2, exit_interval=2, propagation="full_compute")
  assert config.compiled_part() == other.compiled_part()
  assert hash(config.compiled_part()) == hash(other.compiled_part())
  assert config.compiled_part() != ExitConfig(measure="softmax_max").compiled_part()


def test_compiled_part_drops_the_host_side_adaptive_settings():
  fixed = ExitConfig(decoding="synchronized", threshold=0.3)
  adaptive = ExitConfig(decoding="synchronized", threshold=0.5, adaptive_threshold="beta_mixture",
                        adaptive_target=0.8, adaptive_max_refits=3)
  assert adaptive.compiled_part() == fixed.compiled_part()


def test_unknown_exit_option_in_a_config_section():
  with pytest.raises(ValueError, match=r"unknown exit option\(s\) \['topk'\]; allowed: "
                     "measure, threshold"):
    ExitConfig.from_section({"measure": "softmax_topk", "topk": 5})
