"""CNN/DailyMail summarisation with CALM's 8+8-layer T5 (the CALM paper's defaults).

Data: `cnn_dailymail_local` reads ../shared/data/cnn_dailymail/{validation,test}.jsonl
(the first 668 / 574 pairs of Hugging Face cnn_dailymail 3.0.0; no train split). Training
needs the full dataset: --config.data.task=calm_cnn_dailymail (seqio over TFDS
cnn_dailymail:3.4.0, `pip install -r requirements-seqio.txt`).

  python -m calm_jax.main --config=configs/cnndm.py --workdir=DIR --config.mode=calibrate \
      --config.model.hf_path=/models/t5-cnndm --config.data.vocabulary=/models/t5-cnndm
"""

import ml_collections

from configs import base, demo


def get_config() -> ml_collections.ConfigDict:
  config = demo.get_config()
  base.real_data_defaults(config)
  # T5 1.1 with 8+8 layers; real weights: --config.model.hf_path (a local HF directory) or
  # --config.model.checkpoint (a calm_jax export).
  config.model = base.model_section("calm_t5_8l")

  config.data.task = "cnn_dailymail_local"  # JSON Lines in ../shared/data (see above)
  # 'byte', or the checkpoint's tokenizer directory (usually the same as model.hf_path).
  config.data.vocabulary = "byte"
  config.data.calibration_split = "validation"  # calibrate on the validation pairs
  config.data.test_split = "test"  # decode, evaluate and analyse the test pairs
  # Lengths count ids of data.vocabulary (SentencePiece pieces; ~4x as many bytes).
  config.data.max_input_len = 1024  # article ids (+EOS); longer articles are cut
  config.decode.max_decode_len = 128  # summary positions (highlights are ~60 pieces)

  # CALM: softmax response (top-1 minus top-2) with the decaying threshold, tau = 4.
  config.exit = base.exit_section(measure="softmax_diff", threshold=0.9, tau=4.0)
  # Textual consistency with the full model by ROUGE-L, epsilon 0.05 (CALM's setting).
  config.calibration = base.calibration_section(num_examples=500, similarity="rouge_l",
                                                batch_size=64)
  config.generate.input_prefix = "summarize: "  # T5's summarisation prefix
  config.analysis.similarity = "rouge_l"  # oracle quality against the references
  return config
