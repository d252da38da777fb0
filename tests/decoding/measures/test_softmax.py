"""softmax_diff, softmax_max and monotone_heuristic against NumPy references."""

import jax.numpy as jnp
import numpy as np

from calm_jax.decoding.exit_rule import ExitConfig
from calm_jax.decoding.measures import LayerInputs, MeasureContext, Needs, build_measure
from calm_jax.decoding.measures.softmax import MonotoneHeuristic, SoftmaxDiff, SoftmaxMax

CONTEXT = MeasureContext(params=None)  # these measures read only the layer's logits


def _softmax(logits):
  z = np.exp(logits - logits.max(-1, keepdims=True))
  return z / z.sum(-1, keepdims=True)


def test_built_measures_and_their_declarations():
  assert build_measure(ExitConfig(measure="softmax_diff")) == SoftmaxDiff()
  assert build_measure(ExitConfig(measure="softmax_max")) == SoftmaxMax()
  assert build_measure(ExitConfig(measure="monotone_heuristic")) == MonotoneHeuristic()
  assert SoftmaxDiff().needs == SoftmaxMax().needs == Needs(logits="full")
  assert MonotoneHeuristic().needs == Needs(logits="full", every_exit_point=True)


def test_softmax_diff_is_top1_minus_top2_probability(random_layer_inputs):
  inputs, _, logits = random_layer_inputs()
  state = ("untouched",)
  confidence, new_state = SoftmaxDiff().confidence(CONTEXT, inputs, state)
  top = np.sort(_softmax(logits.astype(np.float64)), -1)[:, ::-1]
  np.testing.assert_allclose(confidence, top[:, 0] - top[:, 1], atol=1e-6)
  assert new_state is state
  assert confidence.shape == (5,) and confidence.dtype == jnp.float32


def test_softmax_diff_of_a_tie_is_zero_and_of_a_certain_token_is_one():
  logits = jnp.asarray([[3.0, 3.0, -1.0], [60.0, 0.0, 0.0]])
  inputs = LayerInputs(layer=jnp.int32(1), hidden=jnp.zeros((2, 4)), logits=logits,
                       final_top1=None)
  confidence, _ = SoftmaxDiff().confidence(CONTEXT, inputs, ())
  np.testing.assert_allclose(confidence, [0.0, 1.0], atol=1e-6)


def test_softmax_max_is_top1_probability(random_layer_inputs):
  inputs, _, logits = random_layer_inputs(seed=1)
  confidence, _ = SoftmaxMax().confidence(CONTEXT, inputs, ())
  np.testing.assert_allclose(confidence, _softmax(logits.astype(np.float64)).max(-1), atol=1e-6)


def test_monotone_heuristic_against_a_numpy_reference():
  measure = build_measure(ExitConfig(measure="monotone_heuristic"))
  rng = np.random.RandomState(4)
  steps = [rng.randn(6, 9).astype(np.float32) * scale for scale in (0.5, 1.0, 2.0, 0.2, 3.0)]
  state = measure.init(CONTEXT, jnp.zeros((6, 3)))
  assert state.shape == (6, 2) and np.isnan(np.asarray(state)).all()
  history, seen = [], []  # NumPy reference: top-1 probability per exit point
  for logits in steps:
    inputs = LayerInputs(layer=jnp.int32(1), hidden=jnp.zeros((6, 3)),
                         logits=jnp.asarray(logits), final_top1=None)
    confidence, state = measure.confidence(CONTEXT, inputs, state)
    history.append(_softmax(logits.astype(np.float64)).max(-1))
    if len(history) < 3:
      expected = np.zeros(6)
    else:
      a, b, c = history[-3:]
      expected = np.where((a < b) & (b < c), c, 0.0)
    np.testing.assert_allclose(confidence, expected, atol=1e-6)
    np.testing.assert_allclose(state[:, 1], history[-1], atol=1e-6)
    seen.append(np.asarray(confidence))
  seen = np.concatenate(seen[2:])
  assert (seen > 0).any() and (seen == 0).any()  # both outcomes after the warm-up
