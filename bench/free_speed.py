"""FREE's synchronized decoding against CALM's per-token exits and full greedy decoding, as
ratios measured in one run.

Model: `--shape` (bench/timing.py). On `demo` the generated task's test inputs are decoded,
by a model trained here for `--train_seconds` with FREE's shallow-deep objective (shallow
exit `--shallow`, KD mapping `--kd_mapping`); 0 seconds keeps random weights. Other shapes
decode random ids with random weights: their timings speak for speed only, since a random
model's confidences and agreements say nothing about a trained one.

For every lambda in `--thresholds` and batch in `--batches`, these run in the same
interleaved rounds as full greedy decoding and as each decoder at lambda = 1:

  free           decoding='synchronized' (exit at layer s, deep passes over pending tokens)
  free_verified  the same with verify=True (output == full greedy, by construction)
  calm           decoding='per_token', softmax_diff at every layer

and each prints: mean exit layer, deep passes per generated token (FREE), wall-clock speedup
over the same decoder at lambda = 1 and over greedy, and token agreement with greedy.

  .venv/bin/python bench/free_speed.py --shape=demo --train_seconds=300 --batches=1,8
  .venv/bin/python bench/free_speed.py --shape=calm --batches=1 --decode_len=32
"""

import dataclasses
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=wrong-import-position
from bench.timing import SHAPES, interleaved
from calm_jax.data import byte_vocab, generated
from calm_jax.decoding.exit_rule import ExitConfig
from calm_jax.decoding.generate import generate
from calm_jax.decoding.greedy import greedy_decode
from calm_jax.model.config import T5Config
from calm_jax.model.t5 import init_params
from calm_jax.training.objectives import Batch, ShallowDeepObjective, shallow_deep_loss

flags.DEFINE_enum("shape", "demo", list(SHAPES), "Model shape (bench/timing.py).")
flags.DEFINE_integer("train_seconds", 0, "demo: seconds of shallow-deep training first.")
flags.DEFINE_integer("shallow", 1, "The shallow exit layer s.")
flags.DEFINE_integer("max_pending", 4, "FREE's pending buffer.")
flags.DEFINE_enum("kd_mapping", "last", ["last", "uniform", "dynamic"], "KD layer mapping.")
flags.DEFINE_float("kd_weight", 0.01, "KD weight (the MSE of raw residual states runs in the "
                   "hundreds on the demo model, so 1 drowns the two NLLs).")
flags.DEFINE_float("learning_rate", 3e-3, "demo training: peak Adam learning rate.")
flags.DEFINE_list("thresholds", ["0.9", "0.7"], "Thresholds (lambda) timed.")
flags.DEFINE_list("batches", ["1", "8"], "Batch sizes.")
flags.DEFINE_integer("input_len", 48, "Input length (demo: the task's 48 bytes).")
flags.DEFINE_integer("decode_len", 24, "Output positions.")
flags.DEFINE_integer("rounds", 5, "Interleaved timing rounds (medians).")
flags.DEFINE_enum("clock", "wall", ["wall", "cpu"], "Timing clock.")
FLAGS = flags.FLAGS


def _train(config, params, seconds):
  """Shallow-deep training on the generated task for `seconds` (Adam at --learning_rate
  after 100 warmup steps, cosine decay, gradients clipped at norm 1, batch 64)."""
  examples = generated.examples("train", 20_000, 0)
  ids, _ = byte_vocab.encode_batch([e.inputs for e in examples], FLAGS.input_len)
  targets, _ = byte_vocab.encode_batch([e.targets for e in examples], FLAGS.decode_len)
  objective = ShallowDeepObjective(shallow_exit_layer=FLAGS.shallow, kd_mapping=FLAGS.kd_mapping,
                                   kd_weight=FLAGS.kd_weight)
  optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(
      optax.warmup_cosine_decay_schedule(0.0, FLAGS.learning_rate, 100, 20_000)))

  @jax.jit
  def step(params, opt_state, rows):
    batch = Batch(inputs=jnp.asarray(ids)[rows], targets=jnp.asarray(targets)[rows])
    (loss, _), grads = jax.value_and_grad(
        lambda p: shallow_deep_loss(config, objective, p, batch), has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state, rng = optimizer.init(params), np.random.default_rng(0)
  start, steps = time.time(), 0
  while time.time() - start < seconds:
    params, opt_state, loss = step(params, opt_state, rng.integers(0, len(ids), 64))
    steps += 1
    if steps % 100 == 0:
      print(f"step {steps}: loss {float(loss):.3f} ({time.time() - start:.0f} s)", flush=True)
  print(f"trained {steps} steps in {time.time() - start:.0f} s, loss {float(loss):.3f}")
  return params


def _inputs(config, batch):
  if FLAGS.shape == "demo":
    texts = [e.inputs for e in generated.examples("test", batch, 1)]
    return byte_vocab.encode_batch(texts, FLAGS.input_len)
  ids = np.random.default_rng(1).integers(2, config.vocab_size, (batch, FLAGS.input_len))
  return ids.astype(np.int32), np.ones_like(ids)


def _decoders(config, params, ids, mask, threshold):
  """name -> callable decoding the batch (the per-token decoder, FREE, FREE verified)."""
  free = ExitConfig(threshold=threshold, decoding="synchronized",
                    shallow_exit_layer=FLAGS.shallow, max_pending=FLAGS.max_pending)
  configs = {"calm": ExitConfig(threshold=threshold), "free": free,
             "free_verified": dataclasses.replace(free, verify=True)}
  return {name: (lambda exit_config=exit_config: generate(
      config, params, ids, mask, exit=exit_config, max_decode_len=FLAGS.decode_len))
          for name, exit_config in configs.items()}


def _stats(output, greedy, eos):
  """Mean exit layer, deep passes per token and agreement with greedy of one output."""
  hit = greedy == eos
  generated_mask = (np.cumsum(hit, axis=1) - hit) == 0  # greedy's tokens up to its EOS
  exit_layers = np.asarray(output.exit_layers)
  emitted = exit_layers > 0
  passes = getattr(output, "deep_passes", None)
  per_token = float(np.sum(passes) / emitted.sum()) if passes is not None else float("nan")
  agreement = float((np.asarray(output.tokens) == greedy)[generated_mask].mean())
  return float(exit_layers[emitted].mean()), per_token, agreement


def _run(config, params, batch):
  ids, mask = _inputs(config, batch)
  greedy_fn = lambda: greedy_decode(config, params, ids, mask, max_decode_len=FLAGS.decode_len)
  greedy = np.asarray(greedy_fn())
  fns = {"greedy": greedy_fn}
  for name, fn in _decoders(config, params, ids, mask, 1.0).items():
    fns[f"{name}@1"] = fn
  for threshold in FLAGS.thresholds:
    for name, fn in _decoders(config, params, ids, mask, float(threshold)).items():
      fns[f"{name}@{threshold}"] = fn
  seconds, _ = interleaved(fns, FLAGS.rounds, clock=FLAGS.clock)
  print(f"\nbatch {batch}: greedy {seconds['greedy'] * 1e3:.1f} ms per call "
        f"({FLAGS.rounds} interleaved rounds, {FLAGS.clock} clock)")
  print(f"{'decoder':>22} {'exit layer':>10} {'passes/tok':>10} {'vs lambda=1':>11} "
        f"{'vs greedy':>9} {'agreement':>9}")
  for key, fn in fns.items():
    if key == "greedy":
      continue
    name = key.split("@")[0]
    layer, passes, agreement = _stats(fn(), greedy, config.eos_token_id)
    print(f"{key:>22} {layer:>10.2f} {passes:>10.2f} "
          f"{seconds[name + '@1'] / seconds[key]:>10.2f}x "
          f"{seconds['greedy'] / seconds[key]:>8.2f}x {agreement:>9.3f}")


def main(_):
  config = T5Config(**SHAPES[FLAGS.shape])
  params = init_params(config, jax.random.PRNGKey(0))
  if FLAGS.shape == "demo" and FLAGS.train_seconds > 0:
    params = _train(config, params, FLAGS.train_seconds)
  print(f"shape {FLAGS.shape}: {config.num_decoder_layers} decoder layers, shallow exit "
        f"{FLAGS.shallow}, max_pending {FLAGS.max_pending}; devices {jax.devices()}")
  for batch in FLAGS.batches:
    _run(config, params, int(batch))


if __name__ == "__main__":
  app.run(main)
