"""state_saturation: the cosine of each exit point's state with the previous one's."""

import jax.numpy as jnp
import numpy as np

from calm_jax.decoding.exit_rule import ExitConfig
from calm_jax.decoding.measures import LayerInputs, MeasureContext, Needs, build_measure
from calm_jax.decoding.measures.saturation import StateSaturation

CONTEXT = MeasureContext(params=None)  # the measure reads only the layer's state


def test_state_saturation_is_cosine_with_previous_state_and_returns_new_state(
    random_layer_inputs):
  measure = build_measure(ExitConfig(measure="state_saturation"))
  assert measure == StateSaturation()
  assert measure.needs == Needs() and measure.needs.logits == "none"
  inputs, hidden, _ = random_layer_inputs(seed=2)
  embedded = np.random.RandomState(9).randn(5, 7).astype(np.float32)
  previous = measure.init(CONTEXT, jnp.asarray(embedded))
  np.testing.assert_array_equal(previous, embedded)
  confidence, state = measure.confidence(CONTEXT, inputs, previous)
  cosine = np.sum(hidden * embedded, -1) / (np.linalg.norm(hidden, axis=-1)
                                            * np.linalg.norm(embedded, axis=-1))
  np.testing.assert_allclose(confidence, cosine, atol=1e-6)
  np.testing.assert_array_equal(state, hidden)
  # The next call compares with the state returned, not the initial one.
  again, _ = measure.confidence(CONTEXT, inputs.replace(hidden=jnp.asarray(2.0 * hidden)),
                                state)
  np.testing.assert_allclose(again, np.ones(5), atol=1e-6)
  negated, _ = measure.confidence(CONTEXT, inputs.replace(hidden=jnp.asarray(-hidden)), state)
  np.testing.assert_allclose(negated, -np.ones(5), atol=1e-6)


def test_state_saturation_of_zero_state_is_finite():
  inputs = LayerInputs(layer=jnp.int32(1), hidden=jnp.zeros((2, 3)), logits=None,
                       final_top1=None)
  confidence, _ = StateSaturation().confidence(CONTEXT, inputs, jnp.ones((2, 3)))
  np.testing.assert_array_equal(confidence, [0.0, 0.0])
