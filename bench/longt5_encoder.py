"""Encoder time and memory of LongT5 (local, transient-global) against T5's full attention,
and ours against transformers' LongT5 on the same weights: base shape, batch 1.

For each input length, every configuration is timed in interleaved rounds (the median is
printed): our encoder with full attention (T5), local and transient-global attention, and
transformers' LongT5 encoder (PyTorch, CPU) of both kinds. Memory is XLA's buffer
assignment of our compiled encoder: the temporary bytes (activations; parameters and
inputs excluded), which is the peak the encoder adds on top of its weights. Then the ratio
per doubling of the length (time(2n) / time(n); linear growth is 2, quadratic 4) and
transformers' time over ours (above 1: ours is faster).

  .venv/bin/python bench/longt5_encoder.py --lengths=1024,2048,4096,8192 --rounds=3
"""

import os
import sys
import tempfile

import jax
import numpy as np
import torch
import transformers
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=wrong-import-position
from bench.timing import interleaved
from calm_jax.model.hf_import import load_hf_t5
from calm_jax.model.t5 import encode

# long-t5-tglobal-base's encoder (google/long-t5-tglobal-base); one decoder layer, unused.
BASE = dict(vocab_size=32128, d_model=768, d_kv=64, d_ff=2048, num_heads=12,
            feed_forward_proj="gated-gelu", local_radius=127, global_block_size=16,
            num_decoder_layers=1, dropout_rate=0.0, decoder_start_token_id=0)
flags.DEFINE_list("lengths", ["1024", "2048", "4096", "8192"], "Input lengths (tokens).")
flags.DEFINE_integer("layers", 12, "Encoder layers (the base shape has 12).")
flags.DEFINE_integer("rounds", 3, "Interleaved timing rounds per length.")
flags.DEFINE_enum("clock", "wall", ["wall", "cpu"],
                  "wall: elapsed time; cpu: this process's CPU time (steadier on a shared CPU).")
flags.DEFINE_integer("full_up_to", 8192, "Longest input timed with full attention.")
flags.DEFINE_bool("transformers", True, "Also time transformers' LongT5 encoders.")
FLAGS = flags.FLAGS
KINDS = ("full", "local", "transient-global")


def transformers_encoders(layers: int):
  """transformers' LongT5 of both kinds with the same random weights (the transient-global
  model's, without its global tensors in the local one), in eval mode."""
  torch.manual_seed(0)
  tglobal = transformers.LongT5ForConditionalGeneration(transformers.LongT5Config(
      encoder_attention_type="transient-global", num_layers=layers, **BASE)).eval()
  local = transformers.LongT5ForConditionalGeneration(transformers.LongT5Config(
      encoder_attention_type="local", num_layers=layers, **BASE)).eval()
  state = {name.replace("TransientGlobalSelfAttention", "LocalSelfAttention"): tensor
           for name, tensor in tglobal.state_dict().items() if ".global_" not in name}
  local.load_state_dict(state, strict=True)
  return {"local": local, "transient-global": tglobal}


def our_encoders(model):
  """(config, params) of each attention kind, imported from the transient-global model."""
  with tempfile.TemporaryDirectory() as directory:
    model.save_pretrained(directory)
    config, params = load_hf_t5(directory)
  params = jax.device_put(params)
  local_params = dict(params, encoder={k: v for k, v in params["encoder"].items()
                                       if k != "global_relative_bias"})
  local_params["encoder"]["layers"] = {k: v for k, v in params["encoder"]["layers"].items()
                                       if k != "global_norm"}
  return {"transient-global": (config, params),
          "local": (config.replace(encoder_attention_type="local"), local_params),
          "full": (config.replace(encoder_attention_type="full"), local_params)}


def compiled_encoder(config, params, ids):
  """(callable on ids, XLA's temporary bytes) of our jitted encoder."""
  compiled = jax.jit(lambda p, i: encode(config, p, i)).lower(params, ids).compile()
  memory = compiled.memory_analysis()
  return (lambda: compiled(params, ids)), (memory.temp_size_in_bytes if memory else -1)


def time_length(length, ours, theirs):
  """Median seconds per configuration at `length` and our temporary bytes per kind."""
  ids = np.random.RandomState(length).randint(2, BASE["vocab_size"], (1, length)).astype(np.int32)
  fns, temp = {}, {}
  for kind in KINDS:
    if kind == "full" and length > FLAGS.full_up_to:
      continue
    fns[f"ours {kind}"], temp[kind] = compiled_encoder(*ours[kind], ids)
  ids_t = torch.tensor(ids, dtype=torch.long)
  for kind, model in theirs.items():
    fns[f"transformers {kind}"] = lambda m=model: m.get_encoder()(input_ids=ids_t)
  with torch.inference_mode():
    seconds, _ = interleaved(fns, FLAGS.rounds, clock=FLAGS.clock)
  return seconds, temp


def print_table(results):
  names = sorted({name for seconds, _ in results.values() for name in seconds})
  print(f"\nmedian seconds per encoder call ({FLAGS.clock} clock), batch 1:")
  print("length | " + " | ".join(names) + " | temp MiB ours " + "/".join(KINDS))
  for length, (seconds, temp) in results.items():
    times = " | ".join(f"{seconds[n]:.3f}" if n in seconds else "-" for n in names)
    memory = "/".join(f"{temp[k] / 2**20:.0f}" if k in temp else "-" for k in KINDS)
    print(f"{length} | {times} | {memory}")
  lengths = list(results)
  print("\nratio per doubling: time(2n)/time(n) [temp bytes(2n)/(n) for ours]")
  for name in names:
    steps = []
    for short, long in zip(lengths, lengths[1:]):
      if long == 2 * short and name in results[short][0] and name in results[long][0]:
        kind = name.split(" ", 1)[1]
        ratio = results[long][0][name] / results[short][0][name]
        memory = (f" [{results[long][1][kind] / results[short][1][kind]:.2f}]"
                  if name.startswith("ours") else "")
        steps.append(f"{short}->{long}: {ratio:.2f}{memory}")
    print(f"  {name}: " + ", ".join(steps))
  print("\ntransformers / ours (above 1: ours faster):")
  for kind in ("local", "transient-global"):
    pairs = [f"{n}: {s[f'transformers {kind}'] / s[f'ours {kind}']:.2f}"
             for n, (s, _) in results.items() if f"transformers {kind}" in s]
    print(f"  {kind}: " + ", ".join(pairs))


def main(_):
  theirs = transformers_encoders(FLAGS.layers)
  ours = our_encoders(theirs["transient-global"])
  if not FLAGS.transformers:
    theirs = {}
  print(f"device: {jax.devices()[0].device_kind}; torch threads {torch.get_num_threads()}; "
        f"{FLAGS.layers} encoder layers, d_model {BASE['d_model']}, radius "
        f"{BASE['local_radius']}, global block {BASE['global_block_size']}", flush=True)
  results = {}
  for length in sorted(int(n) for n in FLAGS.lengths):
    results[length] = time_length(length, ours, theirs)
    print(f"{length}: " + ", ".join(f"{k} {v:.3f}s" for k, v in results[length][0].items()),
          flush=True)
  print_table(results)


if __name__ == "__main__":
  app.run(main)
