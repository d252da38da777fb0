"""The learned exit classifiers one position at a time (`exit_classifiers.steps`): the
attention classifier's copy-free step against the module's plain attention."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from calm_jax.exit_classifiers import steps
from calm_jax.exit_classifiers.modules import PositionAttention


@pytest.mark.parametrize("position", [0, 3, 7])
def test_attention_step_equals_attention_with_the_entry_written(position):
  """The decoder's copy-free step (own entry attended beside the store) gives what the
  module's plain attention gives over a store holding that entry at `position`."""
  width, heads, d, T, rows = 16, 4, 12, 8, 3
  module = PositionAttention(width=width, num_heads=heads)
  params = module.init(jax.random.PRNGKey(0), jnp.ones((1, T, d)),
                       method=PositionAttention.init_all)["params"]
  keys_rng, values_rng, state_rng = jax.random.split(jax.random.PRNGKey(1), 3)
  keys = jax.random.normal(keys_rng, (rows, T, heads, width // heads))
  values = jax.random.normal(values_rng, (rows, T, heads, width // heads))
  hidden = jax.random.normal(state_rng, (rows, d))
  apply = functools.partial(module.apply, {"params": params})
  embedded = apply(hidden[:, None], method=PositionAttention.embed)
  own_k, own_v = apply(embedded, method=PositionAttention.keys_values)
  written_k = keys.at[:, position].set(own_k[:, 0])
  written_v = values.at[:, position].set(own_v[:, 0])
  visible = jnp.broadcast_to(jnp.arange(T) <= position, (rows, 1, T))
  expected = apply(embedded, written_k, written_v, visible)[:, 0]
  stored = lambda x: jnp.swapaxes(x, 1, 2)  # the decoder's store layout [R, H, T, dh]
  got = steps.attention_step_logits(params, hidden, stored(keys), stored(values),
                                          jnp.int32(position))
  np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-5, rtol=1e-5)
  # Entries at `position` and later in the store are never read.
  noisy = steps.attention_step_logits(params, hidden,
                                            stored(keys.at[:, position:].set(9.0)),
                                            stored(values.at[:, position:].set(-9.0)),
                                            jnp.int32(position))
  np.testing.assert_array_equal(np.asarray(noisy), np.asarray(got))
