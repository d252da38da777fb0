"""IWSLT2017 English -> German (TED talk) translation with CALM's 8+8-layer T5.

Data: `calm_iwslt2017_en_de`, the seqio task of calm_jax/data/seqio_tasks.py (`pip install
-r requirements-seqio.txt`). TFDS does not carry IWSLT2017: it reads JSON Lines files
<data dir>/iwslt2017_en_de/{train,validation,test}.jsonl ({"inputs": English, "targets":
German} a line) that you write yourself, e.g. from the Hugging Face dataset 'iwslt2017'
(config 'iwslt2017-en-de') or the WIT3 release (seqio_tasks.iwslt2017_instructions()).

  python -m calm_jax.main --config=configs/iwslt2017.py --workdir=DIR --config.mode=calibrate \
      --config.model.hf_path=/models/t5-iwslt --config.data.vocabulary=/models/t5-iwslt
"""

import ml_collections

from configs import base, demo


def get_config() -> ml_collections.ConfigDict:
  config = demo.get_config()
  base.real_data_defaults(config)
  # T5 1.1 with 8+8 layers; real weights: --config.model.hf_path (a local HF directory) or
  # --config.model.checkpoint (a calm_jax export).
  config.model = base.model_section("calm_t5_8l")

  config.data.task = "calm_iwslt2017_en_de"  # seqio over local JSON Lines (see above)
  # 'byte', or the checkpoint's tokenizer directory (usually the same as model.hf_path).
  config.data.vocabulary = "byte"
  config.data.calibration_split = "validation"  # dev2010
  config.data.test_split = "test"  # tst2017
  # Lengths count ids of data.vocabulary (SentencePiece pieces; ~4x as many bytes).
  config.data.max_input_len = 128  # English sentence ids (+EOS); talks' sentences are short
  config.decode.max_decode_len = 128  # German positions

  # Translation as in CALM's WMT setting: softmax response, decaying threshold, tau = 4.
  config.exit = base.exit_section(measure="softmax_diff", threshold=0.9, tau=4.0)
  # Textual consistency with the full model by sentence BLEU, epsilon 0.05.
  config.calibration = base.calibration_section(num_examples=1000, similarity="bleu",
                                                batch_size=64)
  config.generate.input_prefix = "translate English to German: "  # T5's prefix
  config.analysis.similarity = "bleu"  # oracle quality against the references
  return config
