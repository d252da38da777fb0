"""Copies XLA put inside the compiled decoder's token loop, for a given shape and measure.

Per-token work that grows with a cache, the parameters or a measure's store shows up in the
optimized HLO as an instruction that only moves data inside the token loop
(calm_jax/utils/hlo_moves.py says which). This compiles the early-exit decoder (and plain greedy decoding, for comparison) from abstract shapes, so the large and
XL shapes cost no memory, and lists every such instruction at or above --min_bytes, with
the computation it sits in.

  .venv/bin/python bench/loop_copies.py --shape=calm --batch=8 --input_len=1024 \\
      --measures=softmax_diff,state_saturation,softmax_topk,attention,meta_mlp
"""

import dataclasses
import os
import sys

import jax
import jax.numpy as jnp
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=wrong-import-position
from bench.timing import SHAPES  # noqa: E402
from calm_jax.decoding import generate as generate_module  # noqa: E402
from calm_jax.decoding.exit_rule import ExitConfig  # noqa: E402
from calm_jax.decoding.greedy import GreedyPlan, _greedy_jit  # noqa: E402
from calm_jax.decoding.measures import MeasureContext  # noqa: E402
from calm_jax.decoding.plan import DecodeConstants, DecodePlan  # noqa: E402
from calm_jax.decoding.sampling import SamplingConfig  # noqa: E402
from calm_jax.exit_classifiers.registry import init_classifier, is_learned  # noqa: E402
from calm_jax.model.config import T5Config  # noqa: E402
from calm_jax.model.layer_layout import check_layout, in_layout  # noqa: E402
from calm_jax.model.t5 import init_params  # noqa: E402
from calm_jax.utils.hlo_moves import loop_copies  # noqa: E402

flags.DEFINE_enum("shape", "calm", list(SHAPES), "Model shape.")
flags.DEFINE_integer("batch", 1, "Batch size.")
flags.DEFINE_integer("input_len", 256, "Input tokens.")
flags.DEFINE_integer("decode_len", 64, "Output positions.")
flags.DEFINE_list("measures", ["softmax_diff", "state_saturation", "softmax_topk",
                               "attention", "meta_mlp"], "Measures to compile.")
flags.DEFINE_integer("min_bytes", 1 << 20, "List copies of at least this many bytes.")
flags.DEFINE_string("layer_layout", "auto", "Decoder layer layout.")
flags.DEFINE_integer("top_k", 2000, "K of softmax_topk / softmax_pruned (at most V / 2).")
FLAGS = flags.FLAGS

def abstract(tree):
  return jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype), tree)


def decoder_hlo(config: T5Config, params, measure: str) -> str:
  exit_config = ExitConfig(measure=measure, threshold=0.5,
                           top_k=min(FLAGS.top_k, config.vocab_size // 2))
  plan = DecodePlan.checked(config, exit_config, SamplingConfig(), FLAGS.decode_len, False)
  classifier = None
  if is_learned(measure):
    classifier = jax.eval_shape(lambda: init_classifier(measure, config, jax.random.PRNGKey(1)))
  context = MeasureContext(params=params, classifier_params=classifier, model_config=config)
  constants = DecodeConstants(context=context, threshold=jax.ShapeDtypeStruct((), jnp.float32),
                              tau=jax.ShapeDtypeStruct((), jnp.float32))
  ids = jax.ShapeDtypeStruct((FLAGS.batch, FLAGS.input_len), jnp.int32)
  rng = jax.ShapeDtypeStruct((2,), jnp.uint32)
  return generate_module._generate_jit.lower(  # pylint: disable=protected-access
      plan, constants, ids, ids, rng).compile().as_text()


def greedy_hlo(config: T5Config, params) -> str:
  ids = jax.ShapeDtypeStruct((FLAGS.batch, FLAGS.input_len), jnp.int32)
  return _greedy_jit.lower(GreedyPlan(config, FLAGS.decode_len), params, ids,  # pylint: disable=protected-access
                          ids).compile().as_text()


def main(_):
  config = T5Config(**SHAPES[FLAGS.shape])
  layout = check_layout(FLAGS.layer_layout)
  params = jax.eval_shape(lambda: in_layout(init_params(config, jax.random.PRNGKey(0)), layout))
  print(f"shape {FLAGS.shape}, batch {FLAGS.batch}, {FLAGS.input_len} inputs, "
        f"{FLAGS.decode_len} positions, layout {layout}; data moves (copy, slice, gather, ...) >= "
        f"{FLAGS.min_bytes:,} bytes inside the token loop:")
  programs = [("greedy", lambda: greedy_hlo(config, params))] + [
      (m, lambda m=m: decoder_hlo(config, params, m)) for m in FLAGS.measures]
  for name, compile_text in programs:
    copies = loop_copies(compile_text(), FLAGS.min_bytes)
    print(f"  {name}: {len(copies)}" + ("" if copies else " (none)"))
    for size, kind, shape, where in copies:
      print(f"    {size:>14,} B  {kind} {shape}  in {where}")


if __name__ == "__main__":
  app.run(main)
