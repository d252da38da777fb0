"""The conversion cache: one conversion per (arrays, key), host trees only when asked, trees
already converted not kept."""

import jax.numpy as jnp
import numpy as np

from calm_jax.utils.conversion_cache import ConversionCache


def test_same_arrays_and_key_convert_once():
  calls = []
  cache = ConversionCache(lambda tree, key: calls.append(key) or {"x": tree["x"] * key},
                          keep=2)
  tree = {"x": jnp.ones(3)}
  first = cache.get(tree, 2)
  assert cache.get(tree, 2) is first and calls == [2]
  assert cache.get({"x": jnp.ones(3)}, 2) is not first  # other arrays: converted again
  cache.get(tree, 3)
  cache.get(tree, 4)  # keep=2: the oldest entry (key 2) goes
  cache.get(tree, 2)
  assert calls == [2, 2, 3, 4, 2]


def test_host_arrays_are_kept_only_when_asked():
  host = {"x": np.ones(3)}
  for arrays_only, conversions in ((True, 2), (False, 1)):
    calls = []
    cache = ConversionCache(lambda tree, key: calls.append(key) or dict(tree),
                            arrays_only=arrays_only)
    cache.get(host, "k")
    cache.get(host, "k")
    assert len(calls) == conversions


def test_a_tree_already_converted_is_not_kept_and_evicts_nothing():
  calls = []
  # Converts {'x'} to {'y'}; a tree already holding 'y' comes back as itself.
  convert = lambda tree, key: tree if "y" in tree else calls.append(key) or {"y": tree["x"]}
  cache = ConversionCache(convert, keep=1)
  original = {"x": jnp.ones(3)}
  converted = cache.get(original, "k")
  other = {"y": jnp.zeros(3)}  # e.g. another device's copy, already converted
  assert cache.get(other, "k") is other
  assert cache.get(original, "k") is converted and calls == ["k"]
