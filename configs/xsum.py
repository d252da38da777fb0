"""XSum extreme summarisation (one-sentence BBC summaries) with CALM's 8+8-layer T5.

Data: `calm_xsum`, the seqio task of calm_jax/data/seqio_tasks.py over TFDS xsum:1.1.0
(`pip install -r requirements-seqio.txt`; TFDS needs the manual download of the XSum
archive in its manual directory). ../shared/data holds no XSum copy.

  python -m calm_jax.main --config=configs/xsum.py --workdir=DIR --config.mode=calibrate \
      --config.model.hf_path=/models/t5-xsum --config.data.vocabulary=/models/t5-xsum
"""

import ml_collections

from configs import base, demo


def get_config() -> ml_collections.ConfigDict:
  config = demo.get_config()
  base.real_data_defaults(config)
  # T5 1.1 with 8+8 layers; real weights: --config.model.hf_path (a local HF directory) or
  # --config.model.checkpoint (a calm_jax export).
  config.model = base.model_section("calm_t5_8l")

  config.data.task = "calm_xsum"  # seqio over TFDS (see above)
  # 'byte', or the checkpoint's tokenizer directory (usually the same as model.hf_path).
  config.data.vocabulary = "byte"
  config.data.calibration_split = "validation"  # calibrate on the validation documents
  config.data.test_split = "test"  # decode, evaluate and analyse the test documents
  # Lengths count ids of data.vocabulary (SentencePiece pieces; ~4x as many bytes).
  config.data.max_input_len = 1024  # article ids (+EOS); longer articles are cut
  config.decode.max_decode_len = 64  # summary positions (one sentence, ~25 pieces)

  # CALM's summarisation setting: softmax response with the decaying threshold, tau = 4.
  config.exit = base.exit_section(measure="softmax_diff", threshold=0.9, tau=4.0)
  # Textual consistency with the full model by ROUGE-L, epsilon 0.05.
  config.calibration = base.calibration_section(num_examples=500, similarity="rouge_l",
                                                batch_size=64)
  config.generate.input_prefix = "summarize: "  # T5's summarisation prefix
  config.analysis.similarity = "rouge_l"  # oracle quality against the references
  return config
