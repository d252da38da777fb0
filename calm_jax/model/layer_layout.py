"""How the decoder's layer weights are laid out for incremental decoding.

The parameter tree stores the decoder layers stacked, every leaf [L, ...] (model.t5). A
layer loop that reads layer i by a traced index (`dynamic_index_in_dim`) makes XLA's CPU
backend copy the layer's weights out of the stack before each matrix product, which roughly
halves the bandwidth at which weights stream once a layer no longer fits the caches (the
T5-large shape runs at about half of what the same products reach on their own buffers:
bench/layer_layout.py; bench/loop_copies.py lists the copies). The 'per_layer' layout keeps
each layer's weights in its own buffers, a tuple of L trees under `decoder/layers`, so
each layer's products read their weights in place: greedy decoding and the early-exit
decoder unroll their layer loops over it (layer i a static piece of the program, the
early-exit decoder guarding each with one conditional), and a traced layer index runs
layer i as branch i of a `lax.switch`.

Layouts:
  'stacked'    decoder/layers leaves [L, ...]; layer i read by dynamic index
  'per_layer'  decoder/layers a tuple of L trees; layer i static (unrolled loops) or run
               as switch branch i
  'auto'       'per_layer' on the CPU, 'stacked' elsewhere (each conditional of a GPU
               while loop costs a host round trip; bench/gpu.sh measures both)

Per-layer buffers also hold each projection's kernel transposed: [out, in] under the key
'kernel_t' instead of Flax's [in, out] 'kernel' (layers.Projection with `out_in`, which
`decoder_layer` builds for such a tree). XLA's CPU backend streams a product contracting
the last axis of both operands faster: the [in, out] product at a few rows runs a GEMM
that re-packs the weights (bench/layer_layout.py --layouts=per_layer,per_layer_in_out).
An untied LM head is stored the same way in decoding params: lm_head/'kernel_t' [V, d]
instead of 'kernel' [d, V] (`stored_head`; model.t5.exit_logits reads either, and the
pruned measures take its rows as they lie). A tied head is the embedding [V, d] already.

Only the decoder's layers change layout; the caches stay stacked [L, ...] (reading one
layer's cache by dynamic index fuses into the attention products). Everything that scans
over layers (the encoder, teacher forcing) keeps the stacked tree.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from calm_jax.model.layers import DecoderLayer
from calm_jax.utils.conversion_cache import ConversionCache

Params = Any
Array = jnp.ndarray
LAYOUTS = ("auto", "stacked", "per_layer")


def check_layout(layout: str) -> str:
  """The layout name itself ('auto' resolved for the default backend)."""
  if layout not in LAYOUTS:
    raise ValueError(f"layer_layout={layout!r}; allowed: {', '.join(LAYOUTS)}")
  if layout == "auto":
    return "per_layer" if jax.default_backend() == "cpu" else "stacked"
  return layout


def is_per_layer(params: Params) -> bool:
  """Whether params hold the decoder layers as a tuple of per-layer trees."""
  return isinstance(params["decoder"]["layers"], (tuple, list))


def num_decoder_layers(params: Params) -> int:
  layers = params["decoder"]["layers"]
  if is_per_layer(params):
    return len(layers)
  return jax.tree.leaves(layers)[0].shape[0]


def _with_decoder_layers(params: Params, layers: Any) -> Params:
  decoder = dict(params["decoder"], layers=layers)
  return dict(params, decoder=decoder)


def _map_kernels(tree: Any, old_key: str, new_key: str) -> Any:
  """`tree` with every 2-D leaf under `old_key` transposed and stored under `new_key`."""
  if not isinstance(tree, dict):
    return tree
  out = {}
  for key, value in tree.items():
    if key == old_key and jnp.ndim(value) == 2:
      out[new_key] = jnp.transpose(value)
    else:
      out[key] = _map_kernels(value, old_key, new_key)
  return out


def stored_layer(layer: Params) -> Params:
  """One layer's Flax tree -> its per-layer buffers: kernels [in, out] -> 'kernel_t' [out, in]."""
  return _map_kernels(layer, "kernel", "kernel_t")


def layer_params(layer: Params) -> Params:
  """One layer's per-layer buffers -> the stacked tree's form ('kernel_t' [out, in] ->
  'kernel' [in, out]); a tree without 'kernel_t' comes back equal."""
  return _map_kernels(layer, "kernel_t", "kernel")


def stores_out_in(layer: Params) -> bool:
  """Whether one layer's tree holds its kernels [out, in] ('kernel_t')."""
  return "kernel_t" in layer["self_attn"]["q"]


def decoder_layer(config: Any, layer: Params) -> DecoderLayer:
  """The Flax module that applies one layer's tree `layer` (stacked slice or per-layer
  buffers: the kernel layout is read off the tree)."""
  return DecoderLayer(config, out_in=stores_out_in(layer))


def _map_head(params: Params, old_key: str, new_key: str) -> Params:
  """params with an untied head's 2-D leaf under `old_key` transposed to `new_key`."""
  if "lm_head" not in params:
    return params
  return dict(params, lm_head=_map_kernels(params["lm_head"], old_key, new_key))


def stored_head(params: Params) -> Params:
  """params with an untied LM head's kernel [d, V] stored as rows: lm_head/'kernel_t'
  [V, d] (a copy of the head); a tied or already stored head comes back unchanged."""
  return _map_head(params, "kernel", "kernel_t")


def flax_head(params: Params) -> Params:
  """The inverse of `stored_head`: lm_head/'kernel' [d, V] again."""
  return _map_head(params, "kernel_t", "kernel")


def to_per_layer(params: Params) -> Params:
  """The same parameters with decoder/layers as a tuple of L trees, each its own buffers
  with kernels stored [out, in] (`stored_layer`; a copy of the decoder layers' weights),
  and an untied head stored [V, d] (`stored_head`). Already per-layer params come back
  unchanged."""
  if is_per_layer(params):
    return params
  stacked = params["decoder"]["layers"]
  count = num_decoder_layers(params)
  layers = tuple(stored_layer(jax.tree.map(lambda leaf, i=i: leaf[i], stacked))
                 for i in range(count))
  return stored_head(_with_decoder_layers(params, layers))


def to_stacked(params: Params) -> Params:
  """The same parameters with decoder/layers stacked on a leading [L] axis (kernels
  [in, out] again, an untied head [d, V] again)."""
  if not is_per_layer(params):
    return params
  views = [layer_params(one) for one in params["decoder"]["layers"]]
  layers = jax.tree.map(lambda *leaves: jnp.stack(leaves), *views)
  return flax_head(_with_decoder_layers(params, layers))


def in_layout(params: Params, layout: str) -> Params:
  """Params in `layout` ('stacked' or 'per_layer')."""
  return to_per_layer(params) if layout == "per_layer" else to_stacked(params)


def stacked_layer(params: Params, layer: Array) -> Params:
  """Layer `layer` (0-based, may be traced) of a stacked tree, by dynamic index."""
  take = lambda leaf: jax.lax.dynamic_index_in_dim(leaf, layer, keepdims=False)
  return jax.tree.map(take, params["decoder"]["layers"])


def on_layer(params: Params, layer: Array, fn: Callable[..., Any], *operands: Any) -> Any:
  """fn(layer_params, *operands) for decoder layer `layer` (0-based, may be traced).

  Per-layer params run `fn` as branch `layer` of a switch over the L layers, each branch
  reading its own weights; stacked params slice the layer by dynamic index. A Python int
  layer indexes directly in either layout.
  """
  if not is_per_layer(params):
    return fn(stacked_layer(params, layer), *operands)
  layers = params["decoder"]["layers"]
  if isinstance(layer, int):
    return fn(layers[layer], *operands)
  branches = [functools.partial(fn, one) for one in layers]
  return jax.lax.switch(layer, branches, *operands)


# The last conversion per layout, so that decoding the same parameters again does not copy
# the weights again.
_CACHE = ConversionCache(in_layout, keep=len(LAYOUTS))


def decoding_params(params: Params, layout: str = "auto") -> Params:
  """Params in `layout` for decoding (checked; 'auto' resolved), converting stacked or
  per-layer input as needed; the last conversion per layout is reused."""
  return _CACHE.get(params, check_layout(layout))
