"""The decoder's layer layouts (model.layer_layout): the conversions round-trip, and every
decoding entry point gives the same tokens, exit layers and confidences in the stacked and
the per-layer layout, with mixed exits and both propagation modes."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from calm_jax.decoding.exit_rule import ExitConfig
from calm_jax.decoding.generate import generate, generate_grid, generate_with_thresholds
from calm_jax.decoding.greedy import greedy_decode
from calm_jax.model import layer_layout
from calm_jax.model.config import T5Config
from calm_jax.model.t5 import init_params

T = 8  # max_decode_len


@pytest.fixture(scope="module")
def model(eos_batch):
  """A random 5-decoder-layer T5 (weights x1.5 so that exits vary) with an EOS batch."""
  base = T5Config(vocab_size=53, d_model=16, d_kv=4, d_ff=24, num_layers=2,
                  num_decoder_layers=5, num_heads=4, feed_forward_proj="gated-gelu",
                  tie_word_embeddings=False, relative_attention_num_buckets=8,
                  relative_attention_max_distance=16)
  params = jax.tree.map(lambda w: w * 1.5, init_params(base, jax.random.PRNGKey(11)))
  config, params, ids, mask, greedy = eos_batch(base, params, T, batch=4, eos_position=4)
  return config, params, ids, mask, greedy


def _quantile_threshold(model, exit_config, quantile=0.5):
  config, params, ids, mask, _ = model
  never = dataclasses.replace(exit_config, threshold=1.0)
  full = generate(config, params, ids, mask, exit=never, max_decode_len=T, return_trace=True,
                  layer_layout="stacked")
  values = np.asarray(full.trace)
  return float(np.round(np.nanquantile(values[np.isfinite(values)], quantile), 3))


def _assert_same_output(a, b, atol=1e-6):
  np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
  np.testing.assert_array_equal(np.asarray(a.exit_layers), np.asarray(b.exit_layers))
  np.testing.assert_allclose(np.asarray(a.confidences), np.asarray(b.confidences),
                             rtol=1e-5, atol=atol)


def test_conversions_round_trip_exactly(model):
  _, params, _, _, _ = model
  per_layer = layer_layout.to_per_layer(params)
  assert layer_layout.is_per_layer(per_layer) and not layer_layout.is_per_layer(params)
  assert layer_layout.num_decoder_layers(per_layer) == 5
  assert layer_layout.num_decoder_layers(params) == 5
  assert len(per_layer["decoder"]["layers"]) == 5
  stacked_kernel = params["decoder"]["layers"]["self_attn"]["q"]["kernel"]  # [L, d, H dh]
  stacked_scale = params["decoder"]["layers"]["ffn_norm"]["scale"]  # [L, d]
  for i, one in enumerate(per_layer["decoder"]["layers"]):
    # Kernels stored [out, in] under 'kernel_t'; 1-D leaves as they were.
    assert "kernel" not in one["self_attn"]["q"] and layer_layout.stores_out_in(one)
    np.testing.assert_array_equal(one["self_attn"]["q"]["kernel_t"], stacked_kernel[i].T)
    np.testing.assert_array_equal(one["ffn_norm"]["scale"], stacked_scale[i])
    back_one = layer_layout.layer_params(one)
    stacked_one = jax.tree.map(lambda leaf, i=i: leaf[i], params["decoder"]["layers"])
    assert jax.tree.structure(back_one) == jax.tree.structure(stacked_one)
    jax.tree.map(np.testing.assert_array_equal, back_one, stacked_one)
    assert not layer_layout.stores_out_in(back_one)
  # The untied head is stored as rows [V, d] under 'kernel_t'.
  assert set(per_layer["lm_head"]) == {"kernel_t"}
  np.testing.assert_array_equal(per_layer["lm_head"]["kernel_t"], params["lm_head"]["kernel"].T)
  back = layer_layout.to_stacked(per_layer)
  assert jax.tree.structure(back) == jax.tree.structure(params)
  jax.tree.map(np.testing.assert_array_equal, back, params)
  # Everything outside the decoder layers is shared, not copied.
  assert per_layer["encoder"] is params["encoder"]
  assert layer_layout.to_per_layer(per_layer) is per_layer
  assert layer_layout.to_stacked(params) is params


def test_auto_resolves_by_backend_and_bad_names_are_refused(model):
  expected = "per_layer" if jax.default_backend() == "cpu" else "stacked"
  assert layer_layout.check_layout("auto") == expected
  config, params, ids, mask, _ = model
  with pytest.raises(ValueError, match=r"layer_layout='scan'; allowed: auto, stacked, per_layer"):
    generate(config, params, ids, mask, max_decode_len=T, layer_layout="scan")
  with pytest.raises(ValueError, match=r"layer_layout='Stacked'"):
    greedy_decode(config, params, ids, mask, max_decode_len=T, layer_layout="Stacked")
  with pytest.raises(ValueError, match=r"layer_layout=None"):
    generate_with_thresholds(config, params, ids, mask, thresholds=[0.5] * 4,
                             max_decode_len=T, layer_layout=None)


def test_decoding_params_reuses_the_last_conversion(model):
  _, params, _, _, _ = model
  params = jax.tree.map(jnp.asarray, params)
  first = layer_layout.decoding_params(params, "per_layer")
  assert layer_layout.decoding_params(params, "per_layer") is first
  # Per-layer input asked for stacked comes back stacked, equal to the original.
  restacked = layer_layout.decoding_params(first, "stacked")
  jax.tree.map(np.testing.assert_array_equal, restacked, params)
  # Host (NumPy) leaves are mutable: converted every time, never cached.
  host = jax.tree.map(np.asarray, params)
  assert layer_layout.decoding_params(host, "per_layer") is not layer_layout.decoding_params(
      host, "per_layer")


def test_greedy_is_the_same_in_both_layouts(model):
  config, params, ids, mask, greedy = model
  for layout in ("stacked", "per_layer"):
    out = greedy_decode(config, params, ids, mask, max_decode_len=T, layer_layout=layout)
    np.testing.assert_array_equal(np.asarray(out), greedy)
  # Already per-layer params decode too (in either requested layout).
  per_layer = layer_layout.to_per_layer(params)
  out = greedy_decode(config, per_layer, ids, mask, max_decode_len=T, layer_layout="stacked")
  np.testing.assert_array_equal(np.asarray(out), greedy)


@pytest.mark.parametrize("propagation", ["copy_state", "full_compute"])
@pytest.mark.parametrize("measure", ["softmax_diff", "state_saturation", "softmax_topk",
                                     "contrastive_jsd"])
def test_mixed_exits_are_the_same_in_both_layouts(model, measure, propagation):
  config, params, ids, mask, greedy = model
  # contrastive_jsd compares a traced layer with all L + 1 stored ones when stacked, a
  # static one with the layers before it when per-layer.
  # softmax_topk keeps 8 of the 53 ids: its later checks gather the head's stored rows.
  # Its confidences over 8 ids are high: a higher quantile leaves some tokens unexited.
  top_k, quantile = (8, 0.9) if measure == "softmax_topk" else (2000, 0.5)
  exit_config = ExitConfig(measure=measure, propagation=propagation, top_k=top_k)
  threshold = _quantile_threshold(model, exit_config, quantile)
  exit_config = dataclasses.replace(exit_config, threshold=threshold)
  outs = {layout: generate(config, params, ids, mask, exit=exit_config, max_decode_len=T,
                           return_trace=True, layer_layout=layout)
          for layout in ("stacked", "per_layer")}
  # contrastive_jsd's score is a softmax over log-probability differences: its rounding
  # between the layouts' kernels reaches a few 1e-6 (3.7e-6 seen), as the trace's does.
  _assert_same_output(outs["stacked"], outs["per_layer"],
                      atol=5e-5 if measure == "contrastive_jsd" else 1e-6)
  # Confidences to float32 rounding (differently blocked kernels; up to 1.2e-5 seen).
  np.testing.assert_allclose(np.asarray(outs["stacked"].trace),
                             np.asarray(outs["per_layer"].trace), rtol=1e-4, atol=5e-5)
  exits = np.asarray(outs["stacked"].exit_layers)
  generated = exits > 0
  assert (exits[generated] < 5).any() and (exits[generated] == 5).any(), exits
  # Never exiting is the full model in the per-layer layout too.
  never = dataclasses.replace(exit_config, threshold=1.0)
  full = generate(config, params, ids, mask, exit=never, max_decode_len=T,
                  layer_layout="per_layer")
  np.testing.assert_array_equal(np.asarray(full.tokens), greedy)


def test_per_example_thresholds_and_grid_agree_across_layouts(model):
  config, params, ids, mask, _ = model
  exit_config = ExitConfig(measure="softmax_diff")
  middle = _quantile_threshold(model, exit_config)
  thresholds = [middle, 1.0, middle / 2, middle]
  per_row = {layout: generate_with_thresholds(config, params, ids, mask, thresholds=thresholds,
                                              exit=exit_config, max_decode_len=T,
                                              layer_layout=layout)
             for layout in ("stacked", "per_layer")}
  _assert_same_output(per_row["stacked"], per_row["per_layer"])
  # The grid decodes stacked whatever it is given; row b of grid entry k is generate at k.
  grid = generate_grid(config, layer_layout.to_per_layer(params), ids, mask,
                       thresholds=[middle, 1.0], exit=exit_config, max_decode_len=T)
  at_middle = dataclasses.replace(exit_config, threshold=middle)
  alone = generate(config, params, ids, mask, exit=at_middle, max_decode_len=T,
                   layer_layout="per_layer")
  np.testing.assert_array_equal(np.asarray(grid.tokens[0]), np.asarray(alone.tokens))
  np.testing.assert_array_equal(np.asarray(grid.exit_layers[0]), np.asarray(alone.exit_layers))
