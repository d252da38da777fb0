"""Cost of one confidence check of every measure, as ratios measured in one run.

Model: by default the CALM paper's shape, T5 v1.1 small (8 decoder layers, d_model 512, 6
heads x 64, d_ff 1024 gated-GELU, vocabulary 32128, untied head); `--shape=large|xl` for the
bigger T5 v1.1 shapes. Random weights. A "check" is what the decoder does for a measure at
one exit point of one token: the exit head where the measure uses logits, then the measure
(and its state or store updates). Checks run as the decoder runs them, in tokens of L - 2
exit points (layers 3..L), `--checks` of them (rounded up to whole tokens) per jitted call
over a batch of `--batch` rows. The timers, interleaved round by round with medians taken:
one decoder layer step alone (self K/V write plus the layer, with a `--positions`-long
self-attention cache and an `--input_len`-long encoder output); per measure, its checks
alone, back to back, and (`--in_situ`) each check right after a layer step, on its output.
Back to back, a check finds its own working set (head rows, classifier weights) still in
cache; after a layer step that streamed the layer's weights, it may not. The in-situ
figure (that time minus the layer's) shows that, but as the difference of two numbers ten
to a hundred times larger than a learned classifier's check it is noise-bound at batch 1:
on this CPU state_saturation (~6d FLOPs) reads 0.05 to 0.12 of a layer there. The "FLOPs vs
layer" column is the share of the layer's arithmetic a check does; its weights and head
rows scale the same way against the layer's, so with nothing cached no implementation of
the measure goes much under it.

Prints, per measure: ms per check, its ratio to softmax_diff and to one decoder layer, the
in-situ ratio, the FLOPs formula and its value per row (and as a fraction of the layer's),
and the extra memory the measure holds per row.
Each check is also judged against its own floor: the bytes it must read (the head for
measures on the full logits, each row's K head rows for the pruned ones' later checks, a
classifier's weights and store) at the matrix-vector streaming bandwidth measured here, or
its FLOPs at the rate of an in-cache matrix product, whichever is longer, plus what the
timing loop costs per exit point without any check (timed in the same rounds: a few
microseconds, which the cheapest checks' bytes and FLOPs are far below). Target: every
check within 1.5x of its floor.

  .venv/bin/python bench/measure_cost.py --batch=1
"""

import dataclasses
import os
import sys
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=wrong-import-position
from bench.timing import matmul_flop_rate, matvec_bandwidth
from calm_jax.decoding.exit_rule import ExitConfig
from calm_jax.decoding.measures import LayerInputs, Measure, MeasureContext, build_measure
from calm_jax.decoding.measures.pruned import head_table
from calm_jax.exit_classifiers.registry import init_classifier, is_learned
from calm_jax.model.config import T5Config
from calm_jax.model.layer_layout import check_layout, stored_head
from calm_jax.model.incremental import (decoder_layer_rows, init_decoder_cache,
                                        step_self_bias, write_self_kv)
from calm_jax.model.t5 import exit_logits, init_params

# T5 v1.1 shapes (gated-GELU, untied head, vocabulary 32128); "small" is the CALM paper's.
SHAPES = {
    "small": dict(d_model=512, d_kv=64, d_ff=1024, num_heads=6, num_decoder_layers=8),
    "large": dict(d_model=1024, d_kv=64, d_ff=2816, num_heads=16, num_decoder_layers=24),
    "xl": dict(d_model=2048, d_kv=64, d_ff=5120, num_heads=32, num_decoder_layers=24),
}
CALM_SHAPE = T5Config(vocab_size=32128, num_layers=1, feed_forward_proj="gated-gelu",
                      tie_word_embeddings=False, scale_decoder_outputs=False, **SHAPES["small"])
flags.DEFINE_enum("shape", "small", list(SHAPES), "Model shape: T5 v1.1 small (the CALM "
                  "paper's), large or xl.")
flags.DEFINE_integer("decoder_layers", 0, "Decoder layers to build (0: the shape's own). "
                     "A check's and a layer's cost do not depend on it, except the stores "
                     "of the attention and contrastive measures; fewer layers save memory.")
flags.DEFINE_integer("batch", 1, "Rows per check.")
flags.DEFINE_enum("head", "decoding", ["decoding", "d_v"], "The untied exit head the checks "
                  "read: as the decoder on this backend stores it ('decoding': rows [V, d] "
                  "where it decodes with per-layer weights) or the kernel [d, V].")
flags.DEFINE_integer("checks", 32, "Checks per timed call (a loop inside one jit).")
flags.DEFINE_integer("positions", 256, "Output positions (decoder self-attention cache).")
flags.DEFINE_integer("input_len", 256, "Encoder output length (cross-attention).")
flags.DEFINE_integer("top_k", 2000, "K of softmax_topk / softmax_pruned.")
flags.DEFINE_integer("repeats", 7, "Timed rounds (median).")
flags.DEFINE_bool("in_situ", False, "Also time each check right after a decoder layer step, "
                  "as in the decoder (its cost: that time minus the layer's; noisy, see the "
                  "module doc).")
flags.DEFINE_list("measures", [], "Measures to time (names, e.g. attention,meta_mlp); all if "
                  "empty. softmax_diff is always timed (the reference column).")
FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class Case:
  """One measure as benchmarked."""

  label: str
  exit_config: ExitConfig
  flops: str  # formula per row and check
  memory: str  # extra state per row
  first_exit_point: bool = False  # the pruned measures' first check (full head + top-K)


def cases(top_k: int):
  K = top_k
  head = "2dV"
  pruned = ExitConfig(measure="softmax_pruned", pruning="decaying", top_k=K, min_top_k=10)
  subset = "3K floats (+ one V*d head table)"
  return [
      Case("softmax_diff", ExitConfig(), f"{head} + ~5V", "-"),
      Case("softmax_max", ExitConfig(measure="softmax_max"), f"{head} + ~5V", "-"),
      Case("state_saturation", ExitConfig(measure="state_saturation"), "~6d", "d floats"),
      Case("monotone_heuristic", ExitConfig(measure="monotone_heuristic"), f"{head} + ~5V",
           "2 floats"),
      Case("softmax_topk (first point)", ExitConfig(measure="softmax_topk", top_k=K),
           f"{head} + top-K of V", subset, first_exit_point=True),
      Case("softmax_topk", ExitConfig(measure="softmax_topk", top_k=K),
           "2dK + ~5K (+ K*d gather)", subset),
      Case("softmax_pruned decaying", pruned, "2dK + ~5K + a sort of K (+ K*d gather)", subset),
      Case("contrastive_weighted", ExitConfig(measure="contrastive_weighted"),
           f"{head} + ~12V", "(L+2)*V floats"),
      Case("contrastive_jsd", ExitConfig(measure="contrastive_jsd"),
           f"{head} + ~12V + ~10(L+1)V", "(L+2)*V floats"),
      Case("meta_linear", ExitConfig(measure="meta_linear"), "4d + ~4d", "-"),
      Case("meta_mlp", ExitConfig(measure="meta_mlp"), "2d*d + 4d", "-"),
      Case("three_state_mlp", ExitConfig(measure="three_state_mlp"), "6d*d + 4d",
           "2d floats"),
      Case("lstm (2 x 64)", ExitConfig(measure="lstm"), "2*4w(d+w) + 2*4w(2w), w=64",
           "2*2*w floats"),
      Case("attention (64, 4 heads)", ExitConfig(measure="attention"),
           "2(dw + 3w^2 + w^2) + 4Tw (+ 2(dw + 2w^2) store write), w=64",
           "2*L*T*w floats (store)"),
  ]


def selected_cases(top_k: int, names) -> list:
  """The cases of the measures named (all if none), softmax_diff first; unknown names fail."""
  every = cases(top_k)
  known = sorted({case.exit_config.measure for case in every})
  unknown = sorted(set(names) - set(known))
  if unknown:
    raise app.UsageError(f"--measures: unknown {', '.join(unknown)}; known: {', '.join(known)}")
  wanted = set(names) | {"softmax_diff"} if names else set(known)
  return [case for case in every if case.exit_config.measure in wanted]


def flops_value(label: str, d: int, V: int, K: int, L: int, T: int) -> float:
  """The formula of `cases` evaluated (per row and check)."""
  w = 64
  values = {
      "softmax_diff": 2 * d * V + 5 * V, "softmax_max": 2 * d * V + 5 * V,
      "state_saturation": 6 * d, "monotone_heuristic": 2 * d * V + 5 * V,
      "softmax_topk (first point)": 2 * d * V, "softmax_topk": 2 * d * K + 5 * K,
      "softmax_pruned decaying": 2 * d * K + 5 * K,
      "contrastive_weighted": 2 * d * V + 12 * V,
      "contrastive_jsd": 2 * d * V + 12 * V + 10 * (L + 1) * V,
      "meta_linear": 8 * d, "meta_mlp": 2 * d * d + 4 * d, "three_state_mlp": 6 * d * d + 4 * d,
      "lstm (2 x 64)": 8 * w * (d + w) + 8 * w * 2 * w,
      "attention (64, 4 heads)": 2 * (d * w + 4 * w * w) + 4 * T * w + 2 * (d * w + 2 * w * w),
  }
  return values[label]


def check_bytes(case: Case, config: T5Config, batch: int, K: int, T: int,
                classifier_params) -> float:
  """Bytes one check must read at least, float32: the head for measures on the full
  logits, each row's K head rows for the later checks of the pruned ones, a classifier's
  parameters (and the attention classifier's store at one layer), two states otherwise."""
  d, V, w = config.d_model, config.vocab_size, 64
  label = case.label
  if case.exit_config.measure in ("softmax_topk", "softmax_pruned") and not case.first_exit_point:
    return 4.0 * batch * K * d
  if is_learned(case.exit_config.measure):
    size = sum(np.size(leaf) for leaf in jax.tree.leaves(classifier_params))
    store = 2 * batch * T * w if label.startswith("attention") else 0
    return 4.0 * (size + store)
  if label == "state_saturation":
    return 4.0 * 2 * batch * d
  return 4.0 * V * d


def layer_flops(config: T5Config, T: int, S: int) -> float:
  """One decoder layer for one row: projections, attention over T and S keys, gated FFN."""
  d, inner, ff = config.d_model, config.inner_dim, config.d_ff
  return 2 * (6 * d * inner + 3 * d * ff) + 4 * inner * (T + S)


# The timer of exit points that run no check: the loop's own cost, part of every floor.
EMPTY = "empty exit point"


def timed_loop(step, carry, count):
  """A jitted call that runs `step(i, carry)` `count` times."""
  run = jax.jit(lambda c: jax.lax.fori_loop(0, count, step, c))
  return lambda: run(carry)


@dataclasses.dataclass(frozen=True)
class LayerStep:
  """One decoder layer step (self K/V write + layer) at position T/2 of a T-long cache."""

  run: Callable  # (layer index, x [B, 1, d], cache) -> (output [B, 1, d], cache)
  x: jax.Array  # [B, 1, d] the first input
  cache: Any


def layer_step(config, params, batch) -> LayerStep:
  encoded = jax.random.normal(jax.random.PRNGKey(1), (batch, FLAGS.input_len, config.d_model))
  cache = init_decoder_cache(config, params, encoded, None, FLAGS.positions)
  position = jnp.int32(FLAGS.positions // 2)
  bias = step_self_bias(config, params, position, FLAGS.positions)

  def run(layer, x, cache):
    cache = write_self_kv(config, params, cache, layer, x, position)
    return decoder_layer_rows(config, params, cache, layer, x, bias), cache
  x = jax.random.normal(jax.random.PRNGKey(2), (batch, 1, config.d_model))
  return LayerStep(run, x, cache)


def token_timer(config, params, batch, checks, check: Optional["MeasureCheck"] = None,
                layer: Optional[LayerStep] = None):
  """A jitted call of `checks` exit points, grouped in tokens of L - 2 (layers 3..L) the way
  the decoder runs them (unrolled: each exit point knows its layer statically). At each
  exit point: the decoder layer step (with `layer`), then the measure's check (with
  `check`) on the layer's output, or without a layer on a fresh state. A measure with a store of earlier positions reads it during the token and gets
  the token's entries written after its last check."""
  L = config.num_decoder_layers
  hidden = jax.random.normal(jax.random.PRNGKey(3), (batch, config.d_model))
  state, memory, entries = ((), (), ()) if check is None else check.start(hidden)
  x0, cache0 = (hidden[:, None], ()) if layer is None else (layer.x, layer.cache)

  def token(t, carry):
    total, x, cache, state, memory = carry

    def exit_point(index, carry):
      total, x, cache, state, entries = carry
      if layer is None:
        x = hidden[:, None] + (t * L + index).astype(hidden.dtype) * 1e-3
      else:
        x, cache = layer.run(index, x, cache)
      if check is not None:
        confidence, state, entries = check(index, x[:, 0], state, entries, memory)
        total = total + jnp.sum(confidence)
      return total, x, cache, state, entries

    carry = (total, x, cache, state, entries)
    for index in range(2, L):  # unrolled, as the decoder unrolls its per-layer weights
      carry = exit_point(index, carry)
    total, x, cache, state, entries_out = carry
    if check is not None:
      memory = check.write(memory, entries_out)
    return total, x, cache, state, memory
  return timed_loop(token, (jnp.float32(0), x0, cache0, state, memory), checks // (L - 2))


@dataclasses.dataclass(frozen=True)
class MeasureCheck:
  """One measure's check at an exit point: its exit head where the measure uses logits,
  the measure, and its state and store updates."""

  measure: Measure
  context: MeasureContext  # model and classifier parameters, head table
  first_exit_point: bool  # every check is the token's first (pruned measures)

  @classmethod
  def build(cls, config, params, case: Case, head_params) -> "MeasureCheck":
    measure = build_measure(case.exit_config)
    table = head_table(config, params) if measure.needs.logits == "subset" else None
    context = MeasureContext(params=params, classifier_params=head_params, head_table=table,
                             model_config=config)
    return cls(measure, context, case.first_exit_point)

  def inputs(self, hidden, layer: int, memory) -> LayerInputs:
    context = self.context
    logits = (exit_logits(context.model_config, context.params, hidden)
              if self.measure.needs.logits == "full" else None)
    return LayerInputs(layer=jnp.int32(layer), hidden=hidden, logits=logits,
                       static_layer=layer if isinstance(layer, int) else None,
                       position=jnp.int32(FLAGS.positions // 2), memory=memory)

  def start(self, hidden):
    """(state, store, this token's entries) before the first check."""
    measure, context = self.measure, self.context
    state = measure.init(context, hidden)
    store = measure.store
    memory = () if store is None else store.init(context, hidden.shape[0], FLAGS.positions)
    entries = () if store is None else store.empty_entries(context, hidden)
    if measure.needs.logits == "subset" and not self.first_exit_point:
      # A later exit point: the vocabulary was pruned at the first one.
      _, state = measure.confidence(context, self.inputs(hidden, 1, memory), state)
    return state, memory, entries

  def __call__(self, index, hidden, state, entries, memory):
    """The check at layer index (0-based) -> (confidence [B], state, entries)."""
    measure, context = self.measure, self.context
    at_layer = jax.tree.map(lambda m: m[index], memory)
    confidence, new_state = measure.confidence(context, self.inputs(hidden, index + 1,
                                                                    at_layer), state)
    if measure.store is not None:
      entries = jax.tree.map(lambda all_layers, one: all_layers.at[index].set(one), entries,
                             measure.store.entry(context, hidden))
    if self.first_exit_point:
      new_state = state  # every check is a first exit point
    return confidence, new_state, entries

  def write(self, memory, entries):
    """The store after a token."""
    if self.measure.store is None:
      return memory
    return self.measure.store.write(memory, entries, jnp.int32(FLAGS.positions // 2))


def main(_):
  all_cases = selected_cases(FLAGS.top_k, FLAGS.measures)  # bad names fail before any work
  config = dataclasses.replace(CALM_SHAPE, **SHAPES[FLAGS.shape])
  if FLAGS.decoder_layers:
    if FLAGS.decoder_layers < 3:
      raise app.UsageError(f"--decoder_layers={FLAGS.decoder_layers}: at least 3 (checks run "
                           "at layers 3..L)")
    config = dataclasses.replace(config, num_decoder_layers=FLAGS.decoder_layers)
  params = init_params(config, jax.random.PRNGKey(0))
  # The checks read the exit head as the decoder stores it (layout 'auto': an untied head
  # as rows [V, d] where decoding runs per-layer buffers, model.layer_layout).
  stores_rows = check_layout("auto") == "per_layer" and FLAGS.head == "decoding"
  check_params = stored_head(params) if stores_rows else params
  batch = FLAGS.batch
  per_token = config.num_decoder_layers - 2  # the checks of one token (layers 3..L)
  checks = per_token * -(-FLAGS.checks // per_token)
  step = layer_step(config, params, batch)
  timers = {"decoder layer": token_timer(config, params, batch, checks, layer=step),
            EMPTY: token_timer(config, params, batch, checks)}
  floors = {}
  bandwidth, flop_rate = matvec_bandwidth(), matmul_flop_rate()
  for case in all_cases:
    name = case.exit_config.measure
    head = init_classifier(name, config, jax.random.PRNGKey(4)) if is_learned(name) else None
    reads = check_bytes(case, config, batch, FLAGS.top_k, FLAGS.positions, head)
    flops = batch * flops_value(case.label, config.d_model, config.vocab_size, FLAGS.top_k,
                                config.num_decoder_layers, FLAGS.positions)
    floors[case.label] = max(reads / bandwidth, flops / flop_rate)
    check = MeasureCheck.build(config, check_params, case, head)
    timers[case.label] = token_timer(config, params, batch, checks, check)
    if FLAGS.in_situ:
      timers[case.label, "in situ"] = token_timer(config, params, batch, checks, check, step)
  compile_seconds = {}
  for label, timer in timers.items():
    start = time.perf_counter()
    jax.block_until_ready(timer())
    compile_seconds[label] = time.perf_counter() - start
  seconds = {label: [] for label in timers}
  for _ in range(FLAGS.repeats):  # interleaved rounds: drift hits every timer alike
    for label, timer in timers.items():
      start = time.perf_counter()
      jax.block_until_ready(timer())
      seconds[label].append((time.perf_counter() - start) / checks)
  per_check = {label: float(np.median(times)) for label, times in seconds.items()}
  layer, reference = per_check["decoder layer"], per_check["softmax_diff"]
  empty = per_check[EMPTY]  # what the loop itself costs per exit point, in every timer
  d, V, L, T = config.d_model, config.vocab_size, config.num_decoder_layers, FLAGS.positions
  layer_mflop = layer_flops(config, T, FLAGS.input_len) / 1e6
  print(f"T5 v1.1 {FLAGS.shape} shape (d={d}, V={V}, L={L}, heads {config.num_heads}x"
        f"{config.d_kv}, d_ff {config.d_ff}), batch {batch}, {T} positions, K={FLAGS.top_k}, "
        f"{jax.devices()[0]}")
  print(f"one decoder layer: {layer * 1e3:.3f} ms per step ({layer_mflop:.1f} MFLOP per row)")
  print(f"floors: bytes a check must read at {bandwidth / 1e9:.1f} GB/s (matrix-vector "
        f"streaming) or its FLOPs at {flop_rate / 1e9:.1f} GFLOP/s (an in-cache matrix "
        f"product), whichever is longer, plus the timing loop's own {empty * 1e6:.1f} us per "
        "exit point (an exit point without a check); target: every check within 1.5x of its "
        "floor\n")
  print("| measure | ms / check | floor ms | vs floor | vs softmax_diff | vs decoder layer | "
        "in a layer step, vs layer | FLOPs / row (formula) | MFLOP | FLOPs vs layer | "
        "extra memory / row |")
  print("|---|---|---|---|---|---|---|---|---|---|---|")
  for case in all_cases:
    t = per_check[case.label]
    in_situ = (f"{per_check[case.label, 'in situ'] / layer - 1:.3f}" if FLAGS.in_situ
               else "-")
    value = flops_value(case.label, d, V, FLAGS.top_k, L, T) / 1e6
    floor = floors[case.label] + empty
    print(f"| {case.label} | {t * 1e3:.3f} | {floor * 1e3:.3f} | {t / floor:.2f} | "
          f"{t / reference:.3f} | {t / layer:.3f} | "
          f"{in_situ} | {case.flops} | {value:.3f} | {value / layer_mflop:.3f} | "
          f"{case.memory} |")
  print("\ncompile seconds: " + ", ".join(
      f"{' '.join(k) if isinstance(k, tuple) else k} {v:.1f}"
      for k, v in compile_seconds.items()))


if __name__ == "__main__":
  app.run(main)
