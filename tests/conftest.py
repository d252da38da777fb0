import os
import sys

import pytest

# Tests never reach the network: Hub lookups fail fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True, scope="module")
def _drop_compiled_programs_after_each_module():
  """Frees JAX's compiled programs after every test module: the suite compiles thousands of
  programs, and a single long process that keeps them all once crashed inside XLA's
  compiler late in the run."""
  yield
  jax = sys.modules.get("jax")  # only if a test imported it (some must run without JAX)
  if jax is not None:
    jax.clear_caches()


@pytest.fixture
def demo_config():
  """Makes the demo config of the mode tests, locked: decode mode, 3 examples, 5 output
  positions, a 3-layer decoder, exit threshold `threshold`."""
  def make(threshold=0.9):
    from configs import demo  # pylint: disable=import-outside-toplevel
    config = demo.get_config()
    config.mode = "decode"
    config.data.num_examples = 3
    config.decode.max_decode_len = 5
    config.model.num_decoder_layers = 3
    config.exit.threshold = threshold
    config.lock()
    return config
  return make


@pytest.fixture
def evaluate_config(demo_config):
  """Makes the demo config in evaluate mode, locked: 8 calibration examples under 3
  thresholds (token agreement), 6 test examples, 6 output positions, `evaluate` fields
  replaced."""
  def make(**evaluate):
    config = demo_config()
    config.unlock()
    config.mode = "evaluate"
    config.decode.max_decode_len = 6
    # The recomputation in the evaluate test scores token agreement, whatever the demo
    # calibrates with.
    config.calibration.update(num_examples=8, thresholds=(1.0, 0.5, 0.2), deltas=(0.1, 0.5),
                              num_splits=2, similarity="token_agreement")
    config.evaluate.update({**dict(measures=("softmax_diff",), num_examples=6,
                                   static_layers=(1,), oracle=True, timing_repeats=1),
                            **evaluate})
    config.lock()
    return config
  return make


@pytest.fixture
def random_layer_inputs():
  """Makes one layer's `LayerInputs` for a measure, from random states [batch, width] and
  logits [batch, vocab] (2 x standard normal): returns (inputs, hidden, logits), the last
  two as NumPy float32."""
  def make(layer=2, batch=5, width=7, vocab=11, seed=0, final_top1=None):
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel
    from calm_jax.decoding.measures import LayerInputs  # pylint: disable=import-outside-toplevel
    rng = np.random.RandomState(seed)
    hidden = rng.randn(batch, width).astype(np.float32)
    logits = (2.0 * rng.randn(batch, vocab)).astype(np.float32)
    inputs = LayerInputs(
        layer=jnp.int32(layer), hidden=jnp.asarray(hidden), logits=jnp.asarray(logits),
        final_top1=None if final_top1 is None else jnp.asarray(final_top1, jnp.int32))
    return inputs, hidden, logits
  return make


@pytest.fixture
def assert_mixed_batch_equals_each_alone():
  """Checks that a batch whose rows use thresholds around `lam` (so their exit layers
  differ) decodes every row exactly as that row alone: tokens, exit layers and the
  confidence trace. Called as check(model, exit_config, lam, max_decode_len) with model =
  (config, params, ids, mask, greedy tokens)."""
  def check(model, exit_config, lam: float, max_decode_len: int):
    import dataclasses  # pylint: disable=import-outside-toplevel
    import jax  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel
    from calm_jax.decoding.generate import (  # pylint: disable=import-outside-toplevel
        generate, generate_with_thresholds)
    config, params, ids, mask, _ = model
    thresholds = [lam, 0.7 * lam, 1.0, 1.3 * lam]
    both = jax.tree.map(np.asarray, generate_with_thresholds(
        config, params, ids, mask, thresholds=thresholds, exit=exit_config,
        max_decode_len=max_decode_len, return_trace=True))
    generated = both.exit_layers > 0
    assert any(len(np.unique(both.exit_layers[generated[:, t], t])) > 1
               for t in range(max_decode_len))
    for row, threshold in enumerate(thresholds):
      alone = jax.tree.map(np.asarray, generate(
          config, params, ids[row:row + 1], mask[row:row + 1],
          exit=dataclasses.replace(exit_config, threshold=threshold),
          max_decode_len=max_decode_len, return_trace=True))
      np.testing.assert_array_equal(alone.tokens[0], both.tokens[row], err_msg=f"row {row}")
      np.testing.assert_array_equal(alone.exit_layers[0], both.exit_layers[row])
      np.testing.assert_allclose(alone.trace[0], both.trace[row], atol=1e-5)
  return check
