"""Speed of the early-exit decoder, as ratios measured in one run.

Model: `--shape` (bench/timing.py: the CALM paper's 8 + 8 layers at T5 v1.1-small widths by
default; `large` is T5 v1.1-large, `demo` the demo's model), random transformers weights
imported, EOS never emitted (checked). For every batch in `--batches` and input length in
`--input_lens`, every configuration is timed in the same interleaved rounds, and prints:

1. greedy decoding per token, and the early-exit decoder at lambda = 1 (softmax_diff) as a
   ratio of it (target <= 1.05x): each per token after the first, from its own one-token
   call, so a call's fixed cost (arguments checked, dispatch) is not spread over the
   tokens; the whole calls' ratio beside it;
2. transformers' PyTorch `generate` per token over ours (targets: >= 3x at the CALM shape,
   >= 1.5x at the large one);
3. at batch 1, greedy per token vs the memory-bandwidth bound: decoder + head weight bytes
   read per token over the streaming bandwidth of a large matrix-vector product measured
   here (target: within 1.3x);
4. static exits at layers 1, 2 and L/2: measured speedup over greedy against the ideal
   implied by the skipped layers (measured encoder time, head time and per-layer cost),
   and measured / ideal.

  .venv/bin/python bench/early_exit_speed.py --shape=calm --batches=1,8 --input_lens=256,1024
  .venv/bin/python bench/early_exit_speed.py --shape=large --batches=1,8 --input_lens=128
`--clock=cpu` times this process's CPU time instead of elapsed time, for a machine that is
running other work.
"""

import functools
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=wrong-import-position
import calm_jax
from bench.timing import SHAPES, interleaved, matvec_bandwidth, weight_bytes_per_token
from calm_jax.decoding.exit_rule import ExitConfig
from calm_jax.decoding.generate import generate
from calm_jax.decoding.greedy import greedy_decode
from calm_jax.model.t5 import encode, exit_logits

flags.DEFINE_enum("shape", "calm", list(SHAPES), "Model shape (bench/timing.py).")
flags.DEFINE_list("batches", ["1", "8"], "Batch sizes.")
flags.DEFINE_list("input_lens", ["256", "1024"], "Input lengths.")
flags.DEFINE_enum("clock", "wall", ["wall", "cpu"], "Timing clock (cpu: this process's CPU "
                  "time, for a machine shared with other work).")
flags.DEFINE_integer("decode_len", 64, "Generated tokens.")
flags.DEFINE_integer("rounds", 5, "Interleaved timing rounds (medians).")
flags.DEFINE_bool("compare_transformers", True, "Also time transformers' generate.")
flags.DEFINE_integer("repeats", 1, "Calls per timed sample (seconds are per call); use 10 "
                     "or more where one call takes a few ms (the demo shape at batch 1).")
FLAGS = flags.FLAGS


def static_layers(config):
  """Static exits timed: layers 1, 2 and L/2."""
  return sorted({1, 2, max(config.num_decoder_layers // 2, 1)})


def build():
  torch.manual_seed(0)
  values = {k: v for k, v in SHAPES[FLAGS.shape].items() if k != "scale_decoder_outputs"}
  hf_config = transformers.T5Config(decoder_start_token_id=0, **values)
  model = transformers.T5ForConditionalGeneration(hf_config).eval()
  with tempfile.TemporaryDirectory() as directory:
    model.save_pretrained(directory)
    config, params = calm_jax.load_hf_t5(directory)
  # transformers 5 ties the head even for v1.1 shapes (same bytes per token as untied).
  return model, config, jax.device_put(params)


def static_timers(config, params, ids):
  """Every decode of sections 3 and 4 for one batch: full greedy, encoder alone, the head on
  one state per row, and static exits at layers 1, 2, 4."""
  tokens = FLAGS.decode_len
  encoder = jax.jit(lambda p, x: encode(config, p, x))
  head = jax.jit(lambda p, h: exit_logits(config, p, h))
  states = jnp.ones((ids.shape[0], config.d_model))
  fns = {"full": lambda: greedy_decode(config, params, ids, max_decode_len=tokens),
         "encoder": lambda: encoder(params, ids), "head": lambda: head(params, states)}
  for layer in static_layers(config):
    exit_config = ExitConfig(measure="static", static_exit_layer=layer)
    fns[f"static {layer}"] = functools.partial(
        lambda e: generate(config, params, ids, exit=e, max_decode_len=tokens).tokens,
        exit_config)
  return fns


def per_layer_seconds(config, seconds):
  """Per layer and token: (full - encoder - head per token) / (tokens * L)."""
  tokens = FLAGS.decode_len
  return ((seconds["full"] - seconds["encoder"] - tokens * seconds["head"])
          / (tokens * config.num_decoder_layers))


def ideal_seconds(seconds, per_layer, layers_per_token):
  """Encoder + per token (head + layers run): the time if skipped layers cost nothing."""
  return seconds["encoder"] + FLAGS.decode_len * (seconds["head"] + layers_per_token * per_layer)


def report_static(config, seconds, first, label):
  tokens = FLAGS.decode_len
  per_layer = per_layer_seconds(config, seconds)
  print(f"[{label}] full: {seconds['full'] * 1e3:.1f} ms (compile+first {first['full']:.1f} s); "
        f"encoder {seconds['encoder'] * 1e3:.1f} ms, head {seconds['head'] * 1e3:.2f} ms/token, "
        f"per layer {per_layer * 1e3:.2f} ms/token ({tokens} tokens)")
  for layer in static_layers(config):
    name = f"static {layer}"
    ideal = seconds["full"] / ideal_seconds(seconds, per_layer, layer)
    measured = seconds["full"] / seconds[name]
    print(f"[{label}] static exit at layer {layer}: speedup {measured:.2f}x, ideal "
          f"{ideal:.2f}x, measured/ideal {measured / ideal:.2f} (compile+first "
          f"{first[name]:.1f} s)")


def repeated(fns, repeats):
  """Each call made `repeats` times per timed sample (small shapes: one call of a few ms
  is at the mercy of one scheduler hiccup)."""
  return {name: (lambda fn=fn: [fn() for _ in range(repeats)][-1]) for name, fn in fns.items()}


def per_token_seconds(seconds, name, one, tokens):
  """Per generated token after the first: (T tokens - 1 token) / (T - 1)."""
  return (seconds[name] - seconds[one]) / (tokens - 1)


def section_shape(model, config, params, batch, input_len, bandwidth):
  """One (batch, input length): greedy, the same early-exit decoder at lambda = 1, static
  exits and (optionally) transformers, in the same interleaved rounds."""
  tokens = FLAGS.decode_len
  rng = np.random.RandomState(batch * 7919 + input_len)
  ids = rng.randint(2, config.vocab_size, (batch, input_len)).astype(np.int32)
  out = np.asarray(greedy_decode(config, params, ids, max_decode_len=tokens))
  assert not (out == config.eos_token_id).any(), "EOS was emitted: pick another seed"
  never = ExitConfig(threshold=1.0)
  fns = {"ours 1": lambda: greedy_decode(config, params, ids, max_decode_len=1),
         "never": lambda: generate(config, params, ids, exit=never,
                                   max_decode_len=tokens).tokens,
         "never 1": lambda: generate(config, params, ids, exit=never, max_decode_len=1).tokens,
         **static_timers(config, params, ids)}
  if FLAGS.compare_transformers:
    ids_t = torch.tensor(ids, dtype=torch.long)

    def theirs(n):
      with torch.inference_mode():
        # transformers 5's cache breaks when the decoder is deeper than the encoder.
        return model.generate(input_ids=ids_t, max_new_tokens=n, min_new_tokens=n,
                              do_sample=False, num_beams=1,
                              use_cache=config.num_decoder_layers <= config.num_layers)
    fns.update({"theirs": lambda: theirs(tokens), "theirs 1": lambda: theirs(1)})
  seconds, first = interleaved(repeated(fns, FLAGS.repeats), FLAGS.rounds, clock=FLAGS.clock)
  seconds = {name: value / FLAGS.repeats for name, value in seconds.items()}
  label = f"batch {batch}, {input_len} inputs"
  greedy = per_token_seconds(seconds, "full", "ours 1", tokens)
  lambda_one = per_token_seconds(seconds, "never", "never 1", tokens)
  print(f"[{label}] greedy {greedy * 1e3:.3f} ms/token; early-exit decoder at lambda=1 "
        f"{lambda_one * 1e3:.3f} ms/token = {lambda_one / greedy:.3f}x greedy (target <= 1.05); "
        f"whole call {seconds['never'] / seconds['full']:.3f}x (one-token call: greedy "
        f"{seconds['ours 1'] * 1e3:.2f} ms, lambda=1 {seconds['never 1'] * 1e3:.2f} ms)")
  if FLAGS.compare_transformers:
    theirs_per_token = per_token_seconds(seconds, "theirs", "theirs 1", tokens)
    print(f"[{label}] transformers generate {theirs_per_token * 1e3:.2f} ms/token: ours "
          f"{theirs_per_token / greedy:.2f}x faster")
  if batch == 1:
    weights = weight_bytes_per_token(params)
    bound = weights / bandwidth
    print(f"[{label}] bandwidth bound: {weights / 2**20:.0f} MiB of weights per token at "
          f"{bandwidth / 1e9:.1f} GB/s = {bound * 1e3:.2f} ms/token; greedy at "
          f"{greedy / bound:.2f}x the bound")
  report_static(config, seconds, first, label)


def main(_):
  batches = [int(b) for b in FLAGS.batches]
  input_lens = [int(n) for n in FLAGS.input_lens]
  model, config, params = build()
  print(f"device: {jax.devices()[0].device_kind}; shape {FLAGS.shape} ({config.num_layers} + "
        f"{config.num_decoder_layers} layers, d {config.d_model}, d_ff {config.d_ff}, V "
        f"{config.vocab_size}), {FLAGS.decode_len} generated tokens; medians of "
        f"{FLAGS.rounds} interleaved rounds on the {FLAGS.clock} clock")
  bandwidth = matvec_bandwidth()
  for batch in batches:
    for input_len in input_lens:
      section_shape(model, config, params, batch, input_len, bandwidth)


if __name__ == "__main__":
  app.run(main)
