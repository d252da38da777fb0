"""The per-layer decoding layout (`incremental.with_layer_list`): the decoder dispatches
layers by `lax.switch` over per-layer parameter trees instead of slicing the stack, and must
give exactly what the stacked parameters give.

The tiny test model is below the layout's size threshold, so these tests force it with
`min_layer_bytes=0`; the rest of the suite runs the stacked path.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import calm_jax
from calm_jax.decoding.early_exit import propagate_state
from calm_jax.decoding.exit_rule import ExitConfig
from calm_jax.decoding.generate import generate, generate_grid, generate_with_thresholds
from calm_jax.decoding.greedy import greedy_decode
from calm_jax.model import incremental
from calm_jax.model.incremental import (LAYER_LIST, init_decoder_cache, with_layer_list,
                                        without_layer_list)
from calm_jax.model.t5 import encode
from hf_models import save_random_hf_t5

SPEC = dict(vocab_size=53, d_model=16, d_kv=4, d_ff=24, num_layers=2, num_decoder_layers=6,
            num_heads=4, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
            relative_attention_num_buckets=8, relative_attention_max_distance=16)
L = SPEC["num_decoder_layers"]
T = 8
LENGTHS = [7, 3, 5, 7, 5, 3, 7, 5]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
  directory = tmp_path_factory.mktemp("layer_list")
  save_random_hf_t5(directory, seed=7, scale=1.5, **SPEC)
  config, params = calm_jax.load_hf_t5(str(directory))
  params = jax.tree.map(jnp.asarray, params)
  rng = np.random.RandomState(1)
  ids = rng.randint(2, config.vocab_size, (len(LENGTHS), max(LENGTHS)))
  mask = (np.arange(max(LENGTHS))[None] < np.array(LENGTHS)[:, None]).astype(np.int32)
  ids = ids * mask
  split = with_layer_list(config, params, min_layer_bytes=0)
  return config, params, split, ids, mask


def test_split_holds_each_layer_of_the_stack(model):
  config, params, split, _, _ = model
  listed = split["decoder"][LAYER_LIST]
  assert isinstance(listed, tuple) and len(listed) == L
  for layer, tree in enumerate(listed):
    expected = jax.tree.map(lambda stacked: np.asarray(stacked[layer]),
                            params["decoder"]["layers"])
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, tree), expected)
  assert split["decoder"]["layers"] is params["decoder"]["layers"]
  assert LAYER_LIST not in params["decoder"], "the caller's tree must not change"
  assert without_layer_list(split)["decoder"].keys() == params["decoder"].keys()


def test_split_is_cached_per_parameter_set(model):
  config, params, split, _, _ = model
  again = with_layer_list(config, params, min_layer_bytes=0)
  assert again["decoder"][LAYER_LIST] is split["decoder"][LAYER_LIST]
  assert with_layer_list(config, split) is split
  other = jax.tree.map(lambda x: x + 0, params)
  assert (with_layer_list(config, other, min_layer_bytes=0)["decoder"][LAYER_LIST]
          is not split["decoder"][LAYER_LIST])


def test_small_layers_and_host_arrays_keep_the_stack(model):
  config, params, _, _, _ = model
  assert with_layer_list(config, params) is params  # 16-wide layers are far below 1 MiB
  host = jax.tree.map(np.asarray, params)
  split = with_layer_list(config, host, min_layer_bytes=0)
  assert len(split["decoder"][LAYER_LIST]) == L
  assert incremental._LAYER_LISTS.get(id(jax.tree.leaves(host["decoder"]["layers"])[0])) is None


def test_traced_params_keep_the_stack(model):
  config, params, _, _, _ = model
  seen = []

  def probe(p):
    seen.append(LAYER_LIST in with_layer_list(config, p, min_layer_bytes=0)["decoder"])
    return jnp.float32(0)
  jax.jit(probe)(params)
  assert seen == [False]


def _outputs(out):
  return {k: np.asarray(v) for k, v in vars(out).items() if v is not None}


def _assert_same(a, b):
  for key, value in _outputs(a).items():
    np.testing.assert_array_equal(value, _outputs(b)[key], err_msg=key)


def test_greedy_is_the_same(model):
  config, params, split, ids, mask = model
  np.testing.assert_array_equal(
      np.asarray(greedy_decode(config, split, ids, mask, max_decode_len=T)),
      np.asarray(greedy_decode(config, params, ids, mask, max_decode_len=T)))


@pytest.mark.parametrize("exit_config", [
    ExitConfig(measure="state_saturation", threshold=0.0, min_exit_layer=1),  # all at layer 1
    ExitConfig(measure="softmax_diff", threshold=1.0),  # never exits
    ExitConfig(measure="static", static_exit_layer=3),
    ExitConfig(measure="oracle"),
    ExitConfig(measure="softmax_topk", threshold=0.3, top_k=5),
], ids=lambda c: c.measure)
def test_generate_is_the_same(model, exit_config):
  config, params, split, ids, mask = model
  run = functools.partial(generate, config, input_ids=ids, attention_mask=mask,
                          exit=exit_config, max_decode_len=T, return_trace=True)
  _assert_same(run(split), run(params))


@pytest.mark.parametrize("propagation", ["copy_state", "full_compute"])
def test_mixed_exits_are_the_same(model, propagation):
  """State saturation at the median of its confidences: rows exit at different layers, so
  the layer loop runs on smaller row buckets and propagates state."""
  config, params, split, ids, mask = model
  traced = generate(config, params, ids, mask, exit=ExitConfig(measure="state_saturation"),
                    max_decode_len=T, return_trace=True)
  threshold = float(np.nanmedian(np.asarray(traced.trace)))
  exit_config = ExitConfig(measure="state_saturation", threshold=threshold,
                           propagation=propagation)
  stacked = generate(config, params, ids, mask, exit=exit_config, max_decode_len=T,
                     return_trace=True)
  layers = np.asarray(stacked.exit_layers)
  assert len(set(layers[layers > 0].tolist())) >= 3, "exits must vary"
  _assert_same(generate(config, split, ids, mask, exit=exit_config, max_decode_len=T,
                        return_trace=True), stacked)
  thresholds = np.linspace(0.2, 0.9, len(LENGTHS))
  per_row = functools.partial(generate_with_thresholds, config, input_ids=ids,
                              attention_mask=mask, thresholds=thresholds, exit=exit_config,
                              max_decode_len=T)
  _assert_same(per_row(split), per_row(params))


def test_grid_runs_on_the_stack(model):
  """generate_grid vmaps the decoder, where a switch would run every layer: it drops the
  per-layer tuple and still agrees with the stacked call."""
  config, params, split, ids, mask = model
  grid = functools.partial(generate_grid, config, input_ids=ids, attention_mask=mask,
                           thresholds=[0.2, 0.9], exit=ExitConfig(measure="state_saturation"),
                           max_decode_len=T)
  _assert_same(grid(split), grid(params))


def test_propagation_writes_the_same_cache(model):
  config, params, split, ids, mask = model
  cache = init_decoder_cache(config, params, encode(config, params, ids, mask), mask, T)
  hidden = jax.random.normal(jax.random.PRNGKey(0), (len(LENGTHS), 1, config.d_model))
  run = jax.jit(lambda p, first: propagate_state(config, p, cache, hidden, first,
                                                 jnp.int32(2)))
  for first in (0, 2, 5):
    a, b = run(split, jnp.int32(first)), run(params, jnp.int32(first))
    np.testing.assert_array_equal(np.asarray(a.self_k), np.asarray(b.self_k))
    np.testing.assert_array_equal(np.asarray(a.self_v), np.asarray(b.self_v))
  assert np.abs(np.asarray(a.self_k)).sum() > 0
