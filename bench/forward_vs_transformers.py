"""Our Flax T5 against transformers' PyTorch T5 on the same random weights, in one run.

Prints the median time of a teacher-forced forward and of greedy decoding for both, and
the ratios (transformers / ours: above 1 means we are faster). Times drift between runs;
the ratios measured in one run are what to compare.

  ./launch/test.sh --co -q >/dev/null  # (once) make .venv with torch
  .venv/bin/python bench/forward_vs_transformers.py --size=small --batch=8
"""

import os
import sys
import tempfile
import time

import jax
import numpy as np
import torch
import transformers
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import calm_jax  # pylint: disable=wrong-import-position
from calm_jax.decoding.greedy import greedy_decode  # pylint: disable=wrong-import-position

SIZES = {
    # t5-small's shape with T5 v1.1's FFN.
    "small": dict(vocab_size=32128, d_model=512, d_kv=64, d_ff=1024, num_layers=6,
                  num_decoder_layers=6, num_heads=8, feed_forward_proj="gated-gelu"),
    # the CALM paper's 8-layer decoder at a laptop-friendly width.
    "tiny": dict(vocab_size=4096, d_model=128, d_kv=32, d_ff=256, num_layers=4,
                 num_decoder_layers=8, num_heads=4, feed_forward_proj="gated-gelu"),
}
flags.DEFINE_enum("size", "small", list(SIZES), "Model shape.")
flags.DEFINE_integer("batch", 8, "Batch size.")
flags.DEFINE_integer("input_len", 128, "Input length.")
flags.DEFINE_integer("decode_len", 32, "Generated tokens (greedy, no EOS stop).")
flags.DEFINE_integer("repeats", 5, "Timed repetitions (median reported).")
FLAGS = flags.FLAGS


def median_seconds(fn, repeats):
  fn()  # warm-up (and compilation)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def main(_):
  torch.manual_seed(0)
  hf_config = transformers.T5Config(decoder_start_token_id=0, dropout_rate=0.0,
                                    eos_token_id=SIZES[FLAGS.size]["vocab_size"] - 1,
                                    **SIZES[FLAGS.size])
  model = transformers.T5ForConditionalGeneration(hf_config).eval()
  with tempfile.TemporaryDirectory() as directory:
    model.save_pretrained(directory)
    config, params = calm_jax.load_hf_t5(directory)
  # The EOS id is never produced by a random model in practice, so both decode all steps.
  params = jax.device_put(params)
  rng = np.random.RandomState(0)
  ids = rng.randint(2, config.vocab_size - 1, (FLAGS.batch, FLAGS.input_len)).astype(np.int32)
  targets = rng.randint(2, config.vocab_size - 1, (FLAGS.batch, FLAGS.decode_len)).astype(np.int32)
  ids_t, targets_t = torch.tensor(ids, dtype=torch.long), torch.tensor(targets, dtype=torch.long)

  forward = jax.jit(lambda p, i, t: calm_jax.forward(config, p, i, t).logits)
  ours_forward = median_seconds(lambda: forward(params, ids, targets).block_until_ready(),
                                FLAGS.repeats)
  with torch.inference_mode():
    theirs_forward = median_seconds(lambda: model(input_ids=ids_t, decoder_input_ids=targets_t),
                                    FLAGS.repeats)
    ours_decode = median_seconds(lambda: greedy_decode(config, params, ids,
                                                       max_decode_len=FLAGS.decode_len)
                                 .block_until_ready(), FLAGS.repeats)
    theirs_decode = median_seconds(lambda: model.generate(
        input_ids=ids_t, max_new_tokens=FLAGS.decode_len, min_new_tokens=FLAGS.decode_len,
        do_sample=False, num_beams=1), FLAGS.repeats)
  print(f"device: {jax.devices()[0].device_kind}; torch threads {torch.get_num_threads()}; "
        f"size={FLAGS.size} batch={FLAGS.batch} input_len={FLAGS.input_len} "
        f"decode_len={FLAGS.decode_len}")
  print(f"teacher-forced forward: ours {ours_forward * 1e3:8.1f} ms  transformers "
        f"{theirs_forward * 1e3:8.1f} ms  ratio {theirs_forward / ours_forward:5.2f}x")
  print(f"greedy decode:          ours {ours_decode * 1e3:8.1f} ms  transformers "
        f"{theirs_decode * 1e3:8.1f} ms  ratio {theirs_decode / ours_decode:5.2f}x")


if __name__ == "__main__":
  app.run(main)
