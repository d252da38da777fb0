"""WMT14 English -> German translation with CALM's 8+8-layer T5.

Data: `wmt14_en_de_local` reads ../shared/data/wmt14_en_de/{validation,test}.jsonl
(newstest2013 and newstest2014; no train split). Training: --config.data.task=
calm_wmt14_en_de (seqio over TFDS wmt14_translate/de-en:1.0.0, `pip install -r
requirements-seqio.txt`).

  python -m calm_jax.main --config=configs/wmt14_ende.py --workdir=DIR --config.mode=calibrate \
      --config.model.hf_path=/models/t5-wmt-ende --config.data.vocabulary=/models/t5-wmt-ende
"""

import ml_collections

from configs import base, demo


def get_config() -> ml_collections.ConfigDict:
  config = demo.get_config()
  base.real_data_defaults(config)
  # T5 1.1 with 8+8 layers; real weights: --config.model.hf_path (a local HF directory) or
  # --config.model.checkpoint (a calm_jax export).
  config.model = base.model_section("calm_t5_8l")

  config.data.task = "wmt14_en_de_local"  # JSON Lines in ../shared/data (see above)
  # 'byte', or the checkpoint's tokenizer directory (usually the same as model.hf_path).
  config.data.vocabulary = "byte"
  config.data.calibration_split = "validation"  # newstest2013
  config.data.test_split = "test"  # newstest2014
  # Lengths count ids of data.vocabulary (SentencePiece pieces; ~4x as many bytes).
  config.data.max_input_len = 256  # English sentence ids (+EOS); longer ones are cut
  config.decode.max_decode_len = 256  # German positions

  # CALM's translation setting: softmax response with the decaying threshold, tau = 4.
  config.exit = base.exit_section(measure="softmax_diff", threshold=0.9, tau=4.0)
  # Textual consistency with the full model by sentence BLEU, epsilon 0.05.
  config.calibration = base.calibration_section(num_examples=1000, similarity="bleu",
                                                batch_size=64)
  config.generate.input_prefix = "translate English to German: "  # T5's prefix
  config.analysis.similarity = "bleu"  # oracle quality against the references
  return config
