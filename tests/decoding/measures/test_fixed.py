"""The analysis exits: static (always layer k, its layer checked against the model) and
oracle (the first layer whose top-1 is the final layer's)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from calm_jax.decoding.exit_rule import ExitConfig
from calm_jax.decoding.measures import MeasureContext, Needs, build_measure, checked_measure
from calm_jax.decoding.measures.fixed import OracleExit, StaticExit
from calm_jax.model.config import T5Config

CONTEXT = MeasureContext(params=None)  # these measures read only the layer and its logits


def _static(layer):
  return build_measure(ExitConfig(measure="static", static_exit_layer=layer))


def test_built_measures_and_their_declarations():
  assert _static(3) == StaticExit(layer=3)
  assert build_measure(ExitConfig(measure="oracle")) == OracleExit()
  assert not StaticExit().needs.thresholded and StaticExit().needs == Needs(thresholded=False)
  assert OracleExit().needs.final_top1 and not OracleExit().needs.thresholded
  assert OracleExit().needs == Needs(logits="full", final_top1=True, thresholded=False)


@pytest.mark.parametrize("fields, message", [
    (dict(measure="static"), r"ExitConfig.static_exit_layer=0 must be in \[1, 6\] for the "
     "'static' measure"),
    (dict(measure="static", static_exit_layer=7), r"ExitConfig.static_exit_layer=7 must be in"),
])
def test_static_exit_layer_is_checked_against_the_model(fields, message):
  with pytest.raises(ValueError, match=message):
    checked_measure(ExitConfig(**fields), T5Config(num_decoder_layers=6))


@pytest.mark.parametrize("layer", [1, 2, 3, 4])
def test_static_is_one_only_at_its_layer(random_layer_inputs, layer):
  inputs, _, _ = random_layer_inputs(layer=layer)
  confidence, _ = _static(3).confidence(CONTEXT, inputs, ())
  np.testing.assert_array_equal(confidence, np.full(5, 1.0 if layer == 3 else 0.0, np.float32))
  assert confidence.dtype == jnp.float32


def test_static_under_a_traced_layer(random_layer_inputs):
  inputs, _, _ = random_layer_inputs()
  f = jax.jit(lambda layer: StaticExit(layer=2).confidence(
      CONTEXT, inputs.replace(layer=layer), ())[0])
  np.testing.assert_array_equal([np.asarray(f(jnp.int32(i)))[0] for i in range(1, 5)],
                                [0.0, 1.0, 0.0, 0.0])


def test_oracle_is_one_where_argmax_equals_final_top1(random_layer_inputs):
  _, _, logits = random_layer_inputs(seed=3)
  argmax = logits.argmax(-1)
  final = argmax.copy()
  final[[1, 3]] = (final[[1, 3]] + 1) % logits.shape[1]
  inputs, _, _ = random_layer_inputs(seed=3, final_top1=final)
  confidence, _ = build_measure(ExitConfig(measure="oracle")).confidence(CONTEXT, inputs, ())
  np.testing.assert_array_equal(confidence, [1.0, 0.0, 1.0, 0.0, 1.0])
