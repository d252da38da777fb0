"""Decoder weight layouts (model.layer_layout) at the studies' model sizes, in one run.

For each shape and batch: full greedy decoding and the early-exit decoder at lambda = 1
(softmax_diff, never exits), each with the layer weights in each of --layouts, timed in
interleaved rounds: 'stacked' (read by dynamic index), 'per_layer' (per-layer buffers,
kernels and an untied head stored [out, in], unrolled layer loops), 'per_layer_in_out'
(the same buffers with Flax's [in, out] kernels and head: what the transposed storage is
judged against) and 'per_layer_head_d_v' (only the head [d, V])). Prints ms
per generated token, the weight bytes each token must read, the streaming bandwidth a
matrix-vector product reaches here, and each configuration as a multiple of that bound.

Shapes (random weights, untied head, vocabulary 32128, gated-GELU):
  calm    8 + 8 layers, d 512, 6 heads x 64, d_ff 1024 (the CALM paper's model)
  large   24 + 24 layers, d 1024, 16 heads x 64, d_ff 2816 (T5 v1.1-large)
  xl      6 + 6 layers at T5 v1.1-XL widths: d 2048, 32 heads x 64, d_ff 5120 (the whole
          24-layer XL, 11 GB in float32, does not fit twice in this machine's memory; per
          layer, the bytes and the products are XL's)

  .venv/bin/python bench/layer_layout.py --shapes=calm,large --batches=1,8
  .venv/bin/python bench/layer_layout.py --shapes=large --layouts=per_layer,per_layer_in_out
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=wrong-import-position
from bench.timing import SHAPES, interleaved, matvec_bandwidth, weight_bytes_per_token
from calm_jax.decoding.exit_rule import ExitConfig
from calm_jax.decoding.generate import generate
from calm_jax.decoding.greedy import greedy_decode
from calm_jax.model.config import T5Config
from calm_jax.model.layer_layout import flax_head, layer_params, to_per_layer
from calm_jax.model.t5 import init_params

flags.DEFINE_list("shapes", ["calm", "large", "xl"], "Shapes to measure.")
flags.DEFINE_list("batches", ["1", "8"], "Batch sizes.")
flags.DEFINE_list("layouts", ["stacked", "per_layer"],
                  "Layouts to time: stacked, per_layer, per_layer_in_out, "
                  "per_layer_head_d_v.")
flags.DEFINE_integer("input_len", 128, "Input tokens.")
flags.DEFINE_integer("decode_len", 16, "Generated tokens.")
flags.DEFINE_integer("rounds", 5, "Interleaved timing rounds (medians).")
flags.DEFINE_string("dtype", "float32", "Parameter and activation dtype.")
FLAGS = flags.FLAGS


def model(shape: str):
  config = T5Config(dtype=FLAGS.dtype, param_dtype=FLAGS.dtype, **SHAPES[shape])
  params = init_params(config, jax.random.PRNGKey(0))
  # A small head scale keeps EOS from being emitted (every position is generated).
  params["lm_head"]["kernel"] = params["lm_head"]["kernel"] * 0.01
  return config, params


def in_layouts(stacked):
  """layout name -> the same parameters in that layout."""
  per_layer = to_per_layer(stacked)
  untransposed = dict(per_layer["decoder"], layers=tuple(
      layer_params(one) for one in per_layer["decoder"]["layers"]))
  every = {"stacked": stacked, "per_layer": per_layer,
           "per_layer_in_out": flax_head(dict(per_layer, decoder=untransposed)),
           "per_layer_head_d_v": flax_head(per_layer)}
  unknown = sorted(set(FLAGS.layouts) - set(every))
  if unknown:
    raise ValueError(f"--layouts: unknown {unknown}; allowed: {', '.join(every)}")
  return {name: every[name] for name in FLAGS.layouts}


def decoders(config, layouts, ids):
  """name -> callable: greedy and lambda = 1 in each layout, plus one-token greedy (the
  fixed cost every per-token figure subtracts)."""
  never = ExitConfig(threshold=1.0)
  tokens = FLAGS.decode_len
  fns = {}
  for name, params in layouts.items():
    layout = "stacked" if name == "stacked" else "per_layer"
    fns[f"greedy {name}"] = (lambda p=params, l=layout: greedy_decode(
        config, p, ids, max_decode_len=tokens, layer_layout=l))
    fns[f"greedy1 {name}"] = (lambda p=params, l=layout: greedy_decode(
        config, p, ids, max_decode_len=1, layer_layout=l))
    fns[f"lambda=1 {name}"] = (lambda p=params, l=layout: generate(
        config, p, ids, exit=never, max_decode_len=tokens, layer_layout=l).tokens)
  return fns


def measure(shape: str, batch: int, bandwidth: float) -> None:
  config, stacked = model(shape)
  layouts = in_layouts(stacked)
  ids = np.random.RandomState(0).randint(2, 32128, (batch, FLAGS.input_len)).astype(np.int32)
  out = np.asarray(greedy_decode(config, stacked, ids, max_decode_len=FLAGS.decode_len,
                                 layer_layout="stacked"))
  assert not (out == config.eos_token_id).any(), "EOS was emitted: every token must be timed"
  seconds, _ = interleaved(decoders(config, layouts, ids), FLAGS.rounds)
  weights = weight_bytes_per_token(stacked)
  bound = weights / bandwidth
  print(f"[{shape} batch {batch}] {weights / 2**20:.0f} MiB of weights per token; bound "
        f"{bound * 1e3:.2f} ms/token at {bandwidth / 1e9:.1f} GB/s")
  per_token = {}
  for name in layouts:
    first = seconds[f"greedy1 {name}"]
    greedy = per_token[name] = (seconds[f"greedy {name}"] - first) / (FLAGS.decode_len - 1)
    never = (seconds[f"lambda=1 {name}"] - first) / (FLAGS.decode_len - 1)
    print(f"  {name:16s}: greedy {greedy * 1e3:7.2f} ms/token ({greedy / bound:.2f}x bound, "
          f"{weights / greedy / 1e9:.1f} GB/s); lambda=1 {never * 1e3:7.2f} ms/token "
          f"({never / greedy:.3f}x greedy)")
  for other in layouts:
    if other != "per_layer" and "per_layer" in layouts:
      print(f"  per_layer is {per_token[other] / per_token['per_layer']:.2f}x faster than "
            f"{other} (greedy per token)", flush=True)


def main(_):
  print(f"device: {jax.devices()[0].device_kind}; {FLAGS.input_len} input tokens, "
        f"{FLAGS.decode_len} generated, {FLAGS.dtype}; medians of {FLAGS.rounds} interleaved "
        "rounds")
  bandwidth = matvec_bandwidth(jnp.dtype(FLAGS.dtype))
  for shape in FLAGS.shapes:
    for batch in FLAGS.batches:
      measure(shape, int(batch), bandwidth)


if __name__ == "__main__":
  app.run(main)
