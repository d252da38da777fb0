"""FREE's synchronized decoding against CALM's per-token exits and full greedy decoding, as
ratios measured in one run.

Model: `--shape`. `demo` is the model section of configs/default.py (whatever size the
demo has), decoding the generated task's test inputs with the config's input and output
lengths, by the export `--checkpoint` (e.g. the train mode's <workdir>/model after
--config.train.objective=shallow_deep) or by a model trained here for `--train_seconds`
with FREE's shallow-deep objective; neither keeps random weights. Other shapes
(bench/timing.py) decode random ids with random weights: their timings speak for speed
only, since a random model's confidences and agreements say nothing about a trained one
(FREE at lambda 0 there is the best case of FREE verified: every token exits at layer s and
a deep pass runs only when the buffer is full).

For every lambda in `--thresholds` and batch in `--batches`, these run in the same
interleaved rounds as full greedy decoding and as each decoder at lambda = 1:

  free           decoding='synchronized' (exit at layer s, deep passes over pending tokens)
  free_verified  the same with verify=True (output == full greedy, by construction)
  calm           decoding='per_token', softmax_diff at every layer

Batch 1 decodes `--examples` examples one at a time; a larger batch decodes one batch. Each
row prints: mean exit layer, deep passes and shallow steps per generated token (FREE), the
ideal speedup over greedy in weight reads (decoding/cost_model.py: a deep pass reads the
deep layers once for all its positions; CALM: its layers, checks, head and propagated K/V),
the measured speedup over the same decoder at lambda = 1 and over greedy, and token
agreement with greedy.

  .venv/bin/python bench/free_speed.py --checkpoint=WORKDIR/model --batches=1,8
  .venv/bin/python bench/free_speed.py --shape=calm --batches=1 --thresholds=0,0.5
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
from calm_jax.decoding import cost_model
from calm_jax.decoding.exit_rule import ExitConfig
from calm_jax.decoding.generate import generate
from calm_jax.decoding.greedy import greedy_decode
from calm_jax.model.config import T5Config
from calm_jax.model.source import t5_config_from
from calm_jax.model.t5 import init_params
from calm_jax.training.checkpoints import load_exported
from calm_jax.training.objectives import Batch, ShallowDeepObjective, shallow_deep_loss
from configs import default

flags.DEFINE_enum("shape", "demo", list(SHAPES), "'demo': configs/default.py's model; "
                  "others: bench/timing.py's shapes with random weights.")
flags.DEFINE_string("checkpoint", "", "demo: a calm_jax params export to decode with.")
flags.DEFINE_integer("train_seconds", 0, "demo without --checkpoint: seconds of shallow-deep "
                     "training first.")
flags.DEFINE_integer("shallow", 1, "The shallow exit layer s.")
flags.DEFINE_integer("max_pending", 4, "FREE's pending buffer.")
flags.DEFINE_enum("kd_mapping", "last", ["last", "uniform", "dynamic"], "KD layer mapping.")
flags.DEFINE_float("kd_weight", 0.01, "KD weight (the MSE of raw residual states runs in the "
                   "hundreds on the demo model, so 1 drowns the two NLLs).")
flags.DEFINE_float("learning_rate", 3e-3, "demo training: peak Adam learning rate.")
flags.DEFINE_list("thresholds", ["0.9", "0.5", "0"], "Thresholds (lambda) timed.")
flags.DEFINE_list("batches", ["1", "8"], "Batch sizes.")
flags.DEFINE_integer("examples", 8, "Batch 1: examples decoded one at a time per call.")
flags.DEFINE_integer("input_len", 0, "Input length; 0: demo the config's, others 48.")
flags.DEFINE_integer("decode_len", 0, "Output positions; 0: demo the config's, others 32.")
flags.DEFINE_integer("rounds", 5, "Interleaved timing rounds (medians).")
flags.DEFINE_enum("clock", "cpu", ["wall", "cpu"], "Timing clock (cpu: this process's CPU "
                  "time, steadier while other jobs load the machine).")
FLAGS = flags.FLAGS


def _lengths():
  """(input length, output positions): the flags, or the demo config's, or 48 and 32."""
  config = default.get_config()
  demo = FLAGS.shape == "demo"
  input_len = FLAGS.input_len or (config.data.max_input_len if demo else 48)
  decode_len = FLAGS.decode_len or (config.decode.max_decode_len if demo else 32)
  return input_len, decode_len


def _train(config, params, seconds):
  """Shallow-deep training on the generated task for `seconds` (Adam at --learning_rate
  after 100 warmup steps, cosine decay, gradients clipped at norm 1, batch 64)."""
  input_len, decode_len = _lengths()
  examples = generated.examples("train", 20_000, 0)
  ids, _ = byte_vocab.encode_batch([e.inputs for e in examples], input_len)
  targets, _ = byte_vocab.encode_batch([e.targets for e in examples], decode_len)
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


def _model():
  """(T5Config, params, description) of the model the flags name."""
  if FLAGS.shape != "demo":
    config = T5Config(**SHAPES[FLAGS.shape])
    return config, init_params(config, jax.random.PRNGKey(0)), "random weights"
  if FLAGS.checkpoint:
    config, params = load_exported(FLAGS.checkpoint)
    return config, jax.tree.map(jnp.asarray, params), f"export {FLAGS.checkpoint}"
  config = t5_config_from(default.get_config().model)
  params = init_params(config, jax.random.PRNGKey(0))
  if FLAGS.train_seconds > 0:
    return config, _train(config, params, FLAGS.train_seconds), "trained here"
  return config, params, "random weights"


def _inputs(config, count):
  input_len, _ = _lengths()
  if FLAGS.shape == "demo":
    texts = [e.inputs for e in generated.examples("test", count, 1)]
    return byte_vocab.encode_batch(texts, input_len)
  ids = np.random.default_rng(1).integers(2, config.vocab_size, (count, input_len))
  return ids.astype(np.int32), np.ones_like(ids)


def _exit_configs(threshold):
  free = ExitConfig(threshold=threshold, decoding="synchronized",
                    shallow_exit_layer=FLAGS.shallow, max_pending=FLAGS.max_pending)
  return {"calm": ExitConfig(threshold=threshold), "free": free,
          "free_verified": dataclasses.replace(free, verify=True)}


def _calls(decode, ids, mask, batch):
  """A call decoding every example: one batch, or (batch 1) one example at a time."""
  if batch > 1:
    return lambda: [decode(ids, mask)]
  return lambda: [decode(ids[i:i + 1], mask[i:i + 1]) for i in range(len(ids))]


def _joined(outputs, field):
  values = [getattr(out, field, None) for out in outputs]
  return None if values[0] is None else np.concatenate([np.asarray(v) for v in values])


def _stats(config, exit_config, outputs, greedy, input_len):
  """(mean exit layer, deep passes / token, shallow steps / token, ideal speedup over greedy
  in weight reads, agreement with greedy) of one decoder's outputs."""
  tokens, exit_layers = _joined(outputs, "tokens"), _joined(outputs, "exit_layers")
  hit = greedy == config.eos_token_id
  generated_mask = (np.cumsum(hit, axis=1) - hit) == 0  # greedy's tokens up to its EOS
  emitted = exit_layers > 0
  count, num_layers = emitted.sum(), config.num_decoder_layers
  greedy_config = ExitConfig(measure="static", static_exit_layer=num_layers)
  greedy_prices = cost_model.work_prices(config, greedy_config, input_len)
  greedy_work = cost_model.decode_work(np.where(generated_mask, num_layers, 0),
                                       greedy_prices, greedy_config, num_layers)
  prices = cost_model.work_prices(config, exit_config, input_len)
  passes, steps = _joined(outputs, "deep_passes"), _joined(outputs, "shallow_steps")
  if passes is None:  # per-token decoding: layers, checks, head, propagated K/V
    ideal = greedy_work / cost_model.decode_work(exit_layers, prices, exit_config, num_layers)
    per_pass = per_step = float("nan")
  else:
    ideal = greedy_work / cost_model.synchronized_work(steps, passes, prices, exit_config,
                                                       num_layers, exit_layers)
    per_pass, per_step = passes.sum() / count, steps.sum() / count
  agreement = float((tokens == greedy)[generated_mask].mean())
  return float(exit_layers[emitted].mean()), per_pass, per_step, ideal, agreement


def _run(config, params, batch):
  input_len, decode_len = _lengths()
  ids, mask = _inputs(config, FLAGS.examples if batch == 1 else batch)
  greedy_one = lambda ids, mask: greedy_decode(config, params, ids, mask,
                                               max_decode_len=decode_len)
  greedy = np.asarray(greedy_one(ids, mask))
  fns, exits = {"greedy": _calls(greedy_one, ids, mask, batch)}, {}
  for threshold in ["1"] + FLAGS.thresholds:
    for name, exit_config in _exit_configs(float(threshold)).items():
      decode = lambda ids, mask, e=exit_config: generate(config, params, ids, mask, exit=e,
                                                         max_decode_len=decode_len)
      fns[f"{name}@{threshold}"] = _calls(decode, ids, mask, batch)
      exits[f"{name}@{threshold}"] = exit_config
  seconds, _ = interleaved(fns, FLAGS.rounds, clock=FLAGS.clock)
  examples = f"{len(ids)} examples one at a time" if batch == 1 else "one batch"
  print(f"\nbatch {batch} ({examples}): greedy {seconds['greedy'] * 1e3:.1f} ms per call "
        f"({FLAGS.rounds} interleaved rounds, {FLAGS.clock} clock)")
  print(f"{'decoder':>20} {'exit layer':>10} {'passes/tok':>10} {'steps/tok':>9} "
        f"{'ideal':>7} {'vs lambda=1':>11} {'vs greedy':>9} {'agreement':>9}")
  for key, fn in fns.items():
    if key == "greedy":
      continue
    layer, passes, steps, ideal, agreement = _stats(config, exits[key], fn(), greedy,
                                                    input_len)
    same = seconds[key.split("@")[0] + "@1"]
    print(f"{key:>20} {layer:>10.2f} {passes:>10.2f} {steps:>9.2f} {ideal:>6.2f}x "
          f"{same / seconds[key]:>10.2f}x {seconds['greedy'] / seconds[key]:>8.2f}x "
          f"{agreement:>9.3f}")


def main(_):
  config, params, source = _model()
  input_len, decode_len = _lengths()
  print(f"shape {FLAGS.shape} ({source}): d_model {config.d_model}, {config.num_layers}+"
        f"{config.num_decoder_layers} layers, vocabulary {config.vocab_size}; inputs "
        f"{input_len}, outputs {decode_len}; shallow exit {FLAGS.shallow}, max_pending "
        f"{FLAGS.max_pending}; devices {jax.devices()}")
  for batch in FLAGS.batches:
    _run(config, params, int(batch))


if __name__ == "__main__":
  app.run(main)
