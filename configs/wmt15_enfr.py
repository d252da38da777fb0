"""WMT15 English -> French translation with CALM's 8+8-layer T5 (the CALM paper's
translation task).

Data: `wmt15_en_fr_local` reads ../shared/data/wmt15_en_fr/test.jsonl (newsdiscusstest2015,
1,500 pairs). It is the only split there, so calibration and evaluation both read it; with
--config.data.task=calm_wmt15_en_fr (seqio over TFDS wmt15_translate/fr-en:1.0.0, `pip
install -r requirements-seqio.txt`) set data.calibration_split=validation and train too.

  python -m calm_jax.main --config=configs/wmt15_enfr.py --workdir=DIR --config.mode=calibrate \
      --config.model.hf_path=/models/t5-wmt-enfr --config.data.vocabulary=/models/t5-wmt-enfr
"""

import ml_collections

from configs import base, demo


def get_config() -> ml_collections.ConfigDict:
  config = demo.get_config()
  base.real_data_defaults(config)
  # T5 1.1 with 8+8 layers; real weights: --config.model.hf_path (a local HF directory) or
  # --config.model.checkpoint (a calm_jax export).
  config.model = base.model_section("calm_t5_8l")

  config.data.task = "wmt15_en_fr_local"  # JSON Lines in ../shared/data (see above)
  # 'byte', or the checkpoint's tokenizer directory (usually the same as model.hf_path).
  config.data.vocabulary = "byte"
  config.data.calibration_split = "test"  # the only local split (see above)
  config.data.test_split = "test"  # the only local split (see above)
  # Lengths count ids of data.vocabulary (SentencePiece pieces; ~4x as many bytes).
  config.data.max_input_len = 256  # English sentence ids (+EOS); longer ones are cut
  config.decode.max_decode_len = 256  # French positions

  # CALM: softmax response with the decaying threshold, tau = 4.
  config.exit = base.exit_section(measure="softmax_diff", threshold=0.9, tau=4.0)
  # Textual consistency with the full model by sentence BLEU, epsilon 0.05.
  config.calibration = base.calibration_section(num_examples=1000, similarity="bleu",
                                                batch_size=64)
  config.generate.input_prefix = "translate English to French: "  # T5's prefix
  config.analysis.similarity = "bleu"  # oracle quality against the references
  return config
