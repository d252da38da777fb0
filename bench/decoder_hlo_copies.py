"""Copies XLA adds to the compiled early-exit decoder, per measure.

Compiles `generate` for a few measures on a small model with XLA's dumps on, reads the
optimized HLO of the decoder program and prints how many `copy` instructions it holds and
the bytes of the largest. Per-token work that grows with a cache or the parameters shows
up here as a copy of a cache-sized array; compare the figures before and after a change to
the decoder (the same command on both checkouts).

  .venv/bin/python bench/decoder_hlo_copies.py
"""

import glob
import json
import os
import re
import shutil
import sys
import tempfile

DUMP = tempfile.mkdtemp()
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + f" --xla_dump_to={DUMP} --xla_dump_hlo_as_text")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=wrong-import-position
import jax  # noqa: E402
import numpy as np  # noqa: E402

from calm_jax.decoding.exit_rule import ExitConfig  # noqa: E402
from calm_jax.decoding.generate import generate  # noqa: E402
from calm_jax.exit_classifiers.registry import init_classifier, is_learned  # noqa: E402
from calm_jax.model.config import T5Config  # noqa: E402
from calm_jax.model.t5 import init_params  # noqa: E402

CONFIG = T5Config(vocab_size=512, d_model=64, d_kv=16, d_ff=128, num_heads=4, num_layers=2,
                  num_decoder_layers=4, feed_forward_proj="gated-gelu",
                  tie_word_embeddings=False)
MEASURES = ("softmax_diff", "state_saturation", "softmax_topk", "attention", "meta_mlp")
BYTES = {"f32": 4, "s32": 4, "u32": 4, "pred": 1, "bf16": 2, "f16": 2, "s64": 8}
COPY = re.compile(r"= (\w+)\[([\d,]*)\][^ ]* copy\(")


def copy_bytes(hlo_text: str):
  """Bytes of every copy instruction in an HLO module's text."""
  sizes = []
  for line in hlo_text.splitlines():
    found = COPY.search(line)
    if found:
      dims = [int(x) for x in found.group(2).split(",") if x]
      sizes.append(int(np.prod(dims or [1])) * BYTES.get(found.group(1), 4))
  return sizes


def decoder_copies(measure: str, params, input_ids):
  shutil.rmtree(DUMP, ignore_errors=True)
  os.makedirs(DUMP)
  classifier = (init_classifier(measure, CONFIG, jax.random.PRNGKey(1))
                if is_learned(measure) else None)
  out = generate(CONFIG, params, input_ids, max_decode_len=16, classifier_params=classifier,
                 exit=ExitConfig(measure=measure, threshold=0.5, top_k=64))
  jax.block_until_ready(out.tokens)
  texts = [open(path, encoding="utf-8").read() for path in
           glob.glob(os.path.join(DUMP, "**", "*after_optimizations.txt"), recursive=True)]
  sizes = copy_bytes(max(texts, key=len))  # the decoder is the largest program
  return {"copies": len(sizes), "largest_bytes": sorted(sizes)[-3:], "total_bytes": sum(sizes),
          "tokens": np.asarray(out.tokens)[0, :6].tolist()}


def main():
  params = init_params(CONFIG, jax.random.PRNGKey(0))
  input_ids = np.random.RandomState(0).randint(2, CONFIG.vocab_size, (8, 32))
  report = {measure: decoder_copies(measure, params, input_ids) for measure in MEASURES}
  shutil.rmtree(DUMP, ignore_errors=True)
  print(json.dumps(report, indent=1))


if __name__ == "__main__":
  main()
