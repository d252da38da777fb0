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

Only the decoder's layers change layout; the caches stay stacked [L, ...] (reading one
layer's cache by dynamic index fuses into the attention products). Everything that scans
over layers (the encoder, teacher forcing) keeps the stacked tree.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

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


def to_per_layer(params: Params) -> Params:
  """The same parameters with decoder/layers as a tuple of L trees (each its own buffers;
  a copy of the decoder layers' weights). Already per-layer params come back unchanged."""
  if is_per_layer(params):
    return params
  stacked = params["decoder"]["layers"]
  count = num_decoder_layers(params)
  layers = tuple(jax.tree.map(lambda leaf, i=i: leaf[i], stacked) for i in range(count))
  return _with_decoder_layers(params, layers)


def to_stacked(params: Params) -> Params:
  """The same parameters with decoder/layers stacked on a leading [L] axis."""
  if not is_per_layer(params):
    return params
  layers = jax.tree.map(lambda *leaves: jnp.stack(leaves), *params["decoder"]["layers"])
  return _with_decoder_layers(params, layers)


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
