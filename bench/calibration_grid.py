"""Cost of decoding a calibration grid, relative to one full-model decode pass, in one run.

Decodes 200 inputs under 20 thresholds (1.0, 0.95, ..., 0.05 by default) three ways and
prints each cost as a multiple of one full-model greedy pass over the same 200 inputs
(target: at most 5x):

1. `generate_grid`: the decoder vmapped over the thresholds (one compiled call);
2. `decode_threshold_grid` (what calibration uses): one traced never-exit pass, then each
   example's thresholds largest first, copying every pair whose exit decisions provably
   match the example's latest decode and decoding the rest in waves with per-example
   thresholds (the never-exit pass is part of the cost; calibration needs its outputs
   anyway);
3. the layer-work bound: sum over thresholds of (mean exit layer / L), the cost if every
   skipped layer were free for every row of a batch.

Then (--validity) the validity study on the decoded grid: LTT and the naive rule on 200
random 80/20 splits, textual consistency by token agreement.

Both grid decoders are checked to give identical tokens. Model: configs/demo.py's model
(byte vocabulary) with the width and depth from the flags, trained for --train_steps steps
of CALM's anytime loss on generated copy/reverse/add examples (bench/tiny_calm_training.py)
so that its confidences mean something; --train_steps=0 keeps the random weights.

  .venv/bin/python bench/calibration_grid.py [--measure=state_saturation --d_model=256]
"""

import os
import sys
import time

import jax
import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=wrong-import-position
from calm_jax.calibration import consistency, validity
from calm_jax.data import byte_vocab
from calm_jax.data.arithmetic_preview import sample_examples
from calm_jax.decoding.exit_rule import ExitConfig
from calm_jax.decoding.generate import generate_grid
from calm_jax.decoding.greedy import greedy_decode
from calm_jax.decoding.threshold_grid import decode_threshold_grid
from calm_jax.model.source import t5_config_from
from calm_jax.model.t5 import init_params
from bench import tiny_calm_training
from configs import demo

flags.DEFINE_integer("num_inputs", 200, "Inputs decoded.")
flags.DEFINE_integer("num_thresholds", 20, "Grid size: 1.0 down in steps of 0.05.")
flags.DEFINE_integer("decode_len", 16, "Generated tokens per input.")
flags.DEFINE_integer("d_model", 64, "Model width (heads of width d_model / 4).")
flags.DEFINE_integer("layers", 4, "Decoder layers.")
flags.DEFINE_string("measure", "softmax_diff", "Confidence measure.")
flags.DEFINE_integer("repeats", 3, "Timed repetitions (median).")
flags.DEFINE_integer("batch_size", 0, "Rows per packed decode call (0 = num_inputs).")
flags.DEFINE_bool("validity", True, "Also run the validity study on the decoded grid "
                  "(textual consistency by token agreement) and print its table.")
flags.DEFINE_integer("train_steps", 1500, "CALM-style training steps before decoding (0 = the "
                     "untrained model, whose early outputs diverge at once).")
FLAGS = flags.FLAGS


def timed(fn, repeats):
  """(first call seconds incl. compile, median seconds of the next `repeats` calls, result)."""
  start = time.perf_counter()
  result = jax.block_until_ready(fn())
  first = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    result = jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return first, float(np.median(times)) if times else float("nan"), result


def interleaved_medians(fns, rounds):
  """Median seconds of each function over `rounds` rounds that call them in turn."""
  times = [[] for _ in fns]
  for _ in range(rounds):
    for fn, log in zip(fns, times):
      start = time.perf_counter()
      jax.block_until_ready(fn())
      log.append(time.perf_counter() - start)
  return [float(np.median(log)) for log in times]


def main(_):
  d = FLAGS.d_model
  model = demo.get_config().model
  model.update(d_model=d, d_kv=d // 4, d_ff=2 * d, num_decoder_layers=FLAGS.layers)
  config = t5_config_from(model)
  params = init_params(config, jax.random.PRNGKey(0))
  loss = float("nan")
  if FLAGS.train_steps:
    training = sample_examples(4000, 1)
    params, loss = tiny_calm_training.train(config, params, [e.inputs for e in training],
                                            [e.targets for e in training],
                                            steps=FLAGS.train_steps)
  examples = sample_examples(FLAGS.num_inputs, 0)
  ids, mask = byte_vocab.encode_batch([e.inputs for e in examples], 32)
  thresholds = np.round(1.0 - 0.05 * np.arange(FLAGS.num_thresholds), 2).astype(np.float32)
  exit_config = ExitConfig(measure=FLAGS.measure)
  length = FLAGS.decode_len
  print(f"backend {jax.default_backend()}; {FLAGS.num_inputs} inputs x {thresholds.size} "
        f"thresholds ({thresholds[0]:g}..{thresholds[-1]:g}), {length} tokens, d_model {d}, "
        f"{FLAGS.layers} decoder layers, measure {FLAGS.measure}; model trained "
        f"{FLAGS.train_steps} steps (anytime loss {loss:.3f})")

  full_pass = lambda: greedy_decode(config, params, ids, mask, max_decode_len=length)
  vmap_first, vmapped, expected = timed(
      lambda: generate_grid(config, params, ids, mask, thresholds=thresholds,
                            exit=exit_config, max_decode_len=length), FLAGS.repeats)
  packed_call = lambda: decode_threshold_grid(config, params, ids, mask,
                                              thresholds=thresholds, exit=exit_config,
                                              max_decode_len=length,
                                              batch_size=FLAGS.batch_size or None)
  packed_first, _, grid = timed(packed_call, 0)
  timed(full_pass, 0)
  # The full pass and the packed grid alternate, so load drift hits both medians alike.
  full, packed = interleaved_medians([full_pass, packed_call], 2 * FLAGS.repeats + 1)
  if not np.array_equal(np.asarray(expected.tokens), grid.tokens):
    raise SystemExit("the two grid decoders disagree")
  mean_exit = grid.layer_sums.sum(1) / np.maximum(grid.num_tokens.sum(1), 1)  # [K]
  bound = float((mean_exit / config.num_decoder_layers).sum())
  pairs = thresholds.size * FLAGS.num_inputs
  print(f"mean exit layer per threshold: {np.round(mean_exit, 2).tolist()}")
  print(f"one full-model pass:            {full * 1e3:8.1f} ms")
  print(f"1. generate_grid (vmap):        {vmapped * 1e3:8.1f} ms = {vmapped / full:5.1f}x "
        f"(first call {vmap_first:.1f} s)")
  print(f"2. decode_threshold_grid:       {packed * 1e3:8.1f} ms = {packed / full:5.1f}x "
        f"(first call {packed_first:.1f} s; {grid.decoded_pairs}/{pairs} pairs decoded)")
  print(f"3. layer-work bound:                         {bound:5.1f}x")
  print(f"target <= 5x: {'met' if packed / full <= 5 else 'missed'} "
        f"({packed / full:.1f}x); vmap vs packed {vmapped / packed:.1f}x")
  if FLAGS.validity:
    print_validity(grid, thresholds)


def print_validity(grid, thresholds):
  """LTT vs the naive rule on random 80/20 splits of the decoded grid."""
  early, full = grid.generated_ids()
  losses = consistency.textual_consistency_losses(early, full, "token_agreement")
  report = validity.validity_study(
      losses, thresholds, grid.layer_sums.T, grid.num_tokens.T, grid.num_layers,
      deltas=[0.02, 0.05, 0.1, 0.2], epsilon=0.1,
      rules=["ltt_hoeffding_bentkus", "ltt_hoeffding", "naive"], num_splits=200)
  print(validity.format_table(report))


if __name__ == "__main__":
  app.run(main)
