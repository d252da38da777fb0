"""Copies XLA put inside the compiled decoder's token loop, for a given shape and measure.

Per-token work that grows with a cache, the parameters or a measure's store shows up in the
optimized HLO as an instruction that only moves data (a copy, transpose, slice, gather,
concatenation, ... outside any fusion, or a fusion made of nothing else: either writes a
buffer of its own) inside the token loop's body or anything it calls (the layer loop or
the unrolled layers' conditionals, the switch branches). This compiles the early-exit
decoder (and plain greedy decoding, for comparison) from abstract shapes, so the large and
XL shapes cost no memory, and lists every such instruction at or above --min_bytes, with
the computation it sits in.

  .venv/bin/python bench/loop_copies.py --shape=calm --batch=8 --input_len=1024 \\
      --measures=softmax_diff,state_saturation,softmax_topk,attention,meta_mlp
"""

import dataclasses
import os
import re
import sys
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
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

BYTES = {"f32": 4, "s32": 4, "u32": 4, "pred": 1, "bf16": 2, "f16": 2, "s64": 8, "u8": 1}
# Instructions that only move data: outside a fusion each one writes a new buffer.
MOVES = ("copy", "transpose", "dynamic-slice", "slice", "gather", "concatenate", "pad",
         "broadcast", "reverse")
INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\w+)\[([\d,]*)\][^ ]* "
                         r"(" + "|".join(MOVES) + r")\(")
FUSION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\w+)\[([\d,]*)\][^ ]* fusion\(.*"
                    r"calls=%?([\w.\-]+)")
FUSED_OP = re.compile(r"=\s*[^ ]+\s+([a-z\-]+)\(")
# Operations inside a fused computation that neither compute nor move data themselves.
PLUMBING = {"parameter", "constant", "bitcast", "reshape", "tuple", "get-tuple-element"}
COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$")
CALLS = re.compile(r"(?:body|condition|to_apply|calls)=%?([\w.\-]+)"
                   r"|branch_computations=\{([^}]*)\}")


def computations(hlo: str):
  """{name: [lines]} of every computation in an HLO module's text."""
  out, name = {}, None
  for line in hlo.splitlines():
    found = COMPUTATION.match(line)
    if found and not line.startswith(" "):
      name = found.group(1)
      out[name] = []
    elif name is not None:
      out[name].append(line)
  return out


def callees(lines):
  for line in lines:
    for single, branches in CALLS.findall(line):
      names = [single] if single else [b.strip().lstrip("%") for b in branches.split(",")]
      yield from (n for n in names if n)


def token_loop_computations(comps):
  """Names of the computations the token loop runs (its body and everything that body
  calls), fused computations left out. The token loop is the while loop that reaches the
  most computations (its layer loop, conditionals and switch branches): the encoder's
  and the cache set-up's loops reach a handful."""
  def reachable(start):
    seen, todo = set(), [start]
    while todo:
      name = todo.pop()
      if name in seen or name not in comps:
        continue
      seen.add(name)
      todo.extend(callees(comps[name]))
    return seen

  bodies = [m.group(1) for lines in comps.values() for line in lines
            for m in [re.search(r" while\(.*body=%?([\w.\-]+)", line)] if m]
  if not bodies:
    return set()
  outer = max(bodies, key=lambda body: len(reachable(body)))
  return {name for name in reachable(outer) if not name.startswith("fused")}


def _moving_fusion(comps, fused: str) -> Optional[str]:
  """The data moves a fused computation is made of ('slice', 'copy+transpose', ...), or
  None when it also computes (or updates a buffer in place: dynamic-update-slice)."""
  ops = {m.group(1) for line in comps.get(fused, []) for m in [FUSED_OP.search(line)] if m}
  if not ops or not ops <= set(MOVES) | PLUMBING:
    return None
  moves = sorted(ops & set(MOVES))
  return "+".join(moves) if moves else "copy"


def loop_copies(hlo: str, min_bytes: int):
  """[(bytes, kind, dtype[shape], computation)] of data moves in the token loop: move
  instructions, and fusions that only move data (a slice of a stacked cache fused with a
  bitcast writes a buffer all the same)."""
  comps = computations(hlo)
  found = []
  for name in sorted(token_loop_computations(comps)):
    for line in comps[name]:
      match, kind = INSTRUCTION.match(line), None
      if match:
        kind = match.group(4)
      else:
        match = FUSION.match(line)
        kind = match and _moving_fusion(comps, match.group(4))
        kind = kind and f"fusion({kind})"
      if kind:
        dims = [int(x) for x in match.group(3).split(",") if x]
        size = int(np.prod(dims or [1])) * BYTES.get(match.group(2), 4)
        if size >= min_bytes:
          found.append((size, kind, f"{match.group(2)}[{match.group(3)}]", name))
  return sorted(found, reverse=True)


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
