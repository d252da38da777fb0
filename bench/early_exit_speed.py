"""Speed of the early-exit decoder, as ratios measured in one run.

Model: the CALM paper's shape (8 encoder + 8 decoder layers, d_model 512, 6 heads x 64,
d_ff 1024 gated-GELU, vocabulary 32128, untied head), random weights; 256 input tokens,
64 generated tokens, EOS never emitted (checked). Prints:

1. full greedy decoding per token: ours vs transformers' PyTorch `generate` (target >= 3x);
2. ours per token vs the memory-bandwidth bound: decoder + head weight bytes read per token
   divided by the streaming bandwidth of a large matrix-vector product measured here
   (target: within 1.5x);
3. static exits at layers 1, 2, 4 vs full: measured speedup against the ideal implied by the
   skipped layers (measured encoder time, head time and per-layer cost; target >= 0.85);
4. the same at batch 8 with mixed exit layers, and compile times.

  .venv/bin/python bench/early_exit_speed.py            # after ./launch/test.sh made .venv
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
from bench.timing import interleaved, matvec_bandwidth, weight_bytes_per_token
from calm_jax.decoding.exit_rule import ExitConfig
from calm_jax.decoding.generate import generate
from calm_jax.decoding.greedy import greedy_decode
from calm_jax.model.t5 import encode, exit_logits

CALM_SHAPE = dict(vocab_size=32128, d_model=512, d_kv=64, d_ff=1024, num_layers=8,
                  num_decoder_layers=8, num_heads=6, feed_forward_proj="gated-gelu",
                  tie_word_embeddings=False)
flags.DEFINE_integer("input_len", 256, "Input tokens.")
flags.DEFINE_integer("decode_len", 64, "Generated tokens.")
flags.DEFINE_integer("rounds", 5, "Interleaved timing rounds (medians).")
flags.DEFINE_bool("compare_transformers", True, "Also time transformers' generate.")
FLAGS = flags.FLAGS
STATIC_LAYERS = (1, 2, 4)


def build():
  torch.manual_seed(0)
  hf_config = transformers.T5Config(decoder_start_token_id=0, dropout_rate=0.0, **CALM_SHAPE)
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
  for layer in STATIC_LAYERS:
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
  for layer in STATIC_LAYERS:
    name = f"static {layer}"
    ideal = seconds["full"] / ideal_seconds(seconds, per_layer, layer)
    measured = seconds["full"] / seconds[name]
    print(f"[{label}] static exit at layer {layer}: speedup {measured:.2f}x, ideal "
          f"{ideal:.2f}x, measured/ideal {measured / ideal:.2f} (compile+first "
          f"{first[name]:.1f} s)")


def section_batch1(model, config, params, ids):
  """Sections 1-3: ours vs transformers, the bandwidth bound, static exits at batch 1."""
  tokens = FLAGS.decode_len
  start = time.perf_counter()
  out = np.asarray(greedy_decode(config, params, ids, max_decode_len=tokens))
  full_first = time.perf_counter() - start
  assert not (out == config.eos_token_id).any(), "EOS was emitted: pick another seed"
  ids_t = torch.tensor(ids, dtype=torch.long)

  def theirs(n):
    with torch.inference_mode():
      return model.generate(input_ids=ids_t, max_new_tokens=n, min_new_tokens=n,
                            do_sample=False, num_beams=1)
  never = ExitConfig(threshold=1.0)
  bandwidth = matvec_bandwidth()
  fns = {"ours 1": lambda: greedy_decode(config, params, ids, max_decode_len=1),
         "never": lambda: generate(config, params, ids, exit=never,
                                   max_decode_len=tokens).tokens,
         **static_timers(config, params, ids)}
  if FLAGS.compare_transformers:
    fns.update({"theirs": lambda: theirs(tokens), "theirs 1": lambda: theirs(1)})
  seconds, first = interleaved(fns, FLAGS.rounds)
  first["full"] = full_first
  # Per generated token after the first: (T tokens - 1 token) / (T - 1), for both.
  per_token = (seconds["full"] - seconds["ours 1"]) / (tokens - 1)
  never_per_token = (seconds["never"] - seconds["ours 1"]) / (tokens - 1)
  print(f"1. full greedy: ours {per_token * 1e3:.2f} ms/token (generate with lambda=1 and "
        f"softmax_diff: {never_per_token * 1e3:.2f})")
  if FLAGS.compare_transformers:
    theirs_per_token = (seconds["theirs"] - seconds["theirs 1"]) / (tokens - 1)
    print(f"   transformers generate: {theirs_per_token * 1e3:.2f} ms/token; ratio "
          f"{theirs_per_token / per_token:.2f}x (target >= 3x)")
  weights = weight_bytes_per_token(params)
  bound = weights / bandwidth
  print(f"2. bandwidth bound: {weights / 2**20:.0f} MiB of weights per token at "
        f"{bandwidth / 1e9:.1f} GB/s = {bound * 1e3:.2f} ms/token; ours "
        f"{per_token / bound:.2f}x the bound (target <= 1.5x)")
  print("3. static exits, batch 1")
  report_static(config, seconds, first, "batch 1")


def section_batch8(config, params, ids8):
  """Section 4: static exits and mixed exits at batch 8."""
  tokens = FLAGS.decode_len
  # Mixed exits: state saturation at the median of its own traced confidences (a random
  # model's softmax is saturated at 1.0, so softmax measures cannot mix exits here).
  traced = generate(config, params, ids8, exit=ExitConfig(measure="state_saturation"),
                    max_decode_len=tokens, return_trace=True)
  lam = float(np.nanmedian(np.asarray(traced.trace)[:, :, :4]))
  mixed = ExitConfig(measure="state_saturation", threshold=lam)
  fns = static_timers(config, params, ids8)
  fns["mixed"] = lambda: generate(config, params, ids8, exit=mixed,
                                  max_decode_len=tokens).tokens
  seconds, first = interleaved(fns, FLAGS.rounds)
  report_static(config, seconds, first, "batch 8")
  layers = np.asarray(generate(config, params, ids8, exit=mixed,
                               max_decode_len=tokens).exit_layers)
  deepest = layers.max(axis=0).mean()  # the layer loop runs until the batch's deepest exit
  ideal = seconds["full"] / ideal_seconds(seconds, per_layer_seconds(config, seconds), deepest)
  print(f"[batch 8] state_saturation lambda={lam:.4f}: mean exit layer per example "
        f"{np.round(layers.mean(axis=1), 2).tolist()}; speedup over full "
        f"{seconds['full'] / seconds['mixed']:.2f}x, ideal for the batch's deepest exit per "
        f"token {ideal:.2f}x (compile+first {first['mixed']:.1f} s)")


def main(_):
  model, config, params = build()
  rng = np.random.RandomState(0)
  ids = rng.randint(2, config.vocab_size, (1, FLAGS.input_len)).astype(np.int32)
  print(f"device: {jax.devices()[0].device_kind}; model: CALM shape, batch 1, "
        f"{FLAGS.input_len} input tokens, {FLAGS.decode_len} generated; timings are medians "
        f"of {FLAGS.rounds} interleaved rounds")
  section_batch1(model, config, params, ids)
  print("4. batch 8")
  section_batch8(config, params,
                 rng.randint(2, config.vocab_size, (8, FLAGS.input_len)).astype(np.int32))


if __name__ == "__main__":
  app.run(main)
