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
from calm_jax.decoding.exit_rule import ExitConfig
from calm_jax.decoding.generate import generate
from calm_jax.decoding.greedy import greedy_decode
from calm_jax.model.t5 import encode, exit_logits

CALM_SHAPE = dict(vocab_size=32128, d_model=512, d_kv=64, d_ff=1024, num_layers=8,
                  num_decoder_layers=8, num_heads=6, feed_forward_proj="gated-gelu",
                  tie_word_embeddings=False)
flags.DEFINE_integer("input_len", 256, "Input tokens.")
flags.DEFINE_integer("decode_len", 64, "Generated tokens.")
flags.DEFINE_integer("repeats", 3, "Timed repetitions (median).")
flags.DEFINE_bool("compare_transformers", True, "Also time transformers' generate.")
FLAGS = flags.FLAGS


def timed(fn, repeats):
  """(compile-or-first-call seconds, median seconds of the next `repeats` calls)."""
  start = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return first, float(np.median(times))


def streaming_bandwidth(repeats):
  """Bytes per second of a float32 matrix-vector product over a 256 MiB matrix."""
  matrix = jax.random.normal(jax.random.PRNGKey(0), (8192, 8192), jnp.float32)
  vector = jnp.ones((8192,), jnp.float32)
  matvec = jax.jit(lambda m, v: m @ v)
  _, seconds = timed(lambda: matvec(matrix, vector), max(repeats, 5))
  return matrix.size * 4 / seconds


def weight_bytes_per_token(config, params):
  """Decoder layer weights read per token (cross-attention K/V projections excluded: they
  run once per input) plus the LM head."""
  layers = params["decoder"]["layers"]
  total = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(layers))
  cross_kv = sum(layers["cross_attn"][p]["kernel"].size * 4 for p in ("k", "v"))
  head = params["lm_head"]["kernel"] if "lm_head" in params else params["shared"]["embedding"]
  return total - cross_kv + head.size * head.dtype.itemsize


def build():
  torch.manual_seed(0)
  hf_config = transformers.T5Config(decoder_start_token_id=0, dropout_rate=0.0, **CALM_SHAPE)
  model = transformers.T5ForConditionalGeneration(hf_config).eval()
  with tempfile.TemporaryDirectory() as directory:
    model.save_pretrained(directory)
    config, params = calm_jax.load_hf_t5(directory)
  # transformers 5 ties the head even for v1.1 shapes (same bytes per token as untied).
  return model, config, jax.device_put(params)


def section_static(config, params, ids, encoder_s, head_s, full_first, full_s, label):
  tokens = FLAGS.decode_len
  num_layers = config.num_decoder_layers
  per_layer = (full_s - encoder_s - tokens * head_s) / (tokens * num_layers)
  print(f"[{label}] full: {full_s * 1e3:.1f} ms (compile+first {full_first:.1f} s); "
        f"encoder {encoder_s * 1e3:.1f} ms, head {head_s * 1e3:.2f} ms/token, "
        f"per layer {per_layer * 1e3:.2f} ms/token")
  for layer in (1, 2, 4):
    exit_config = ExitConfig(measure="static", static_exit_layer=layer)
    first, seconds = timed(lambda: generate(config, params, ids, exit=exit_config,
                                            max_decode_len=tokens).tokens, FLAGS.repeats)
    ideal = full_s / (encoder_s + tokens * (head_s + layer * per_layer))
    measured = full_s / seconds
    print(f"[{label}] static exit at layer {layer}: speedup {measured:.2f}x, ideal "
          f"{ideal:.2f}x, measured/ideal {measured / ideal:.2f} (compile+first {first:.1f} s)")


def main(_):
  model, config, params = build()
  tokens = FLAGS.decode_len
  rng = np.random.RandomState(0)
  ids = rng.randint(2, config.vocab_size, (1, FLAGS.input_len)).astype(np.int32)
  print(f"device: {jax.devices()[0].device_kind}; model: CALM shape, batch 1, "
        f"{FLAGS.input_len} input tokens, {tokens} generated")

  full_first, full_s = timed(lambda: greedy_decode(config, params, ids, max_decode_len=tokens),
                             FLAGS.repeats)
  out = np.asarray(greedy_decode(config, params, ids, max_decode_len=tokens))
  assert not (out == config.eos_token_id).any(), "EOS was emitted: pick another seed"
  _, never_s = timed(lambda: generate(config, params, ids, exit=ExitConfig(threshold=1.0),
                                      max_decode_len=tokens).tokens, FLAGS.repeats)
  encoder = jax.jit(lambda p, x: encode(config, p, x))
  _, encoder_s = timed(lambda: encoder(params, ids), FLAGS.repeats)
  head = jax.jit(lambda p, h: exit_logits(config, p, h))
  _, head_s = timed(lambda: head(params, jnp.ones((1, config.d_model))), 10)
  per_token = (full_s - encoder_s) / tokens
  print(f"1. full greedy: ours {per_token * 1e3:.2f} ms/token "
        f"(generate with lambda=1 and softmax_diff: {(never_s - encoder_s) / tokens * 1e3:.2f})")
  if FLAGS.compare_transformers:
    ids_t = torch.tensor(ids, dtype=torch.long)
    with torch.inference_mode():
      run = lambda n: model.generate(input_ids=ids_t, max_new_tokens=n, min_new_tokens=n,
                                     do_sample=False, num_beams=1)
      _, theirs_s = timed(lambda: run(tokens), FLAGS.repeats)
      _, theirs_one = timed(lambda: run(1), FLAGS.repeats)  # encoder + first step
    theirs_per_token = (theirs_s - theirs_one) / (tokens - 1)
    print(f"   transformers generate: {theirs_per_token * 1e3:.2f} ms/token; ratio "
          f"{theirs_per_token / per_token:.2f}x (target >= 3x)")
  bandwidth = streaming_bandwidth(FLAGS.repeats)
  bound = weight_bytes_per_token(config, params) / bandwidth
  print(f"2. bandwidth bound: {weight_bytes_per_token(config, params) / 2**20:.0f} MiB of "
        f"weights per token at {bandwidth / 1e9:.1f} GB/s = {bound * 1e3:.2f} ms/token; ours "
        f"{per_token / bound:.2f}x the bound (target <= 1.5x)")
  print("3. static exits, batch 1")
  section_static(config, params, ids, encoder_s, head_s, full_first, full_s, "batch 1")

  print("4. batch 8")
  ids8 = rng.randint(2, config.vocab_size, (8, FLAGS.input_len)).astype(np.int32)
  full8_first, full8_s = timed(lambda: greedy_decode(config, params, ids8, max_decode_len=tokens),
                               FLAGS.repeats)
  _, encoder8_s = timed(lambda: encoder(params, ids8), FLAGS.repeats)
  _, head8_s = timed(lambda: head(params, jnp.ones((8, config.d_model))), 10)
  section_static(config, params, ids8, encoder8_s, head8_s, full8_first, full8_s, "batch 8")
  # Mixed exits: state saturation at the median of its own traced confidences (a random
  # model's softmax is saturated at 1.0, so softmax measures cannot mix exits here).
  traced = generate(config, params, ids8, exit=ExitConfig(measure="state_saturation"),
                    max_decode_len=tokens, return_trace=True)
  lam = float(np.nanmedian(np.asarray(traced.trace)[:, :, :4]))
  mixed = ExitConfig(measure="state_saturation", threshold=lam)
  first, mixed_s = timed(lambda: generate(config, params, ids8, exit=mixed,
                                          max_decode_len=tokens).tokens, FLAGS.repeats)
  layers = np.asarray(generate(config, params, ids8, exit=mixed, max_decode_len=tokens).exit_layers)
  ideal = full8_s / (encoder8_s + tokens * (head8_s + layers.max(axis=0).mean()
                                            * (full8_s - encoder8_s - tokens * head8_s)
                                            / (tokens * config.num_decoder_layers)))
  print(f"[batch 8] state_saturation lambda={lam:.4f}: mean exit layer per example "
        f"{np.round(layers.mean(axis=1), 2).tolist()}; speedup over full "
        f"{full8_s / mixed_s:.2f}x, ideal for the batch's deepest exit per token {ideal:.2f}x "
        f"(compile+first {first:.1f} s)")

if __name__ == "__main__":
  app.run(main)
