"""BIGPATENT summarisation (patent description -> abstract) with CALM's 8+8-layer T5.

Data: `calm_big_patent`, the seqio task of calm_jax/data/seqio_tasks.py over TFDS
big_patent/all:2.1.2 (`pip install -r requirements-seqio.txt`; TFDS downloads it once
where a network is available). ../shared/data holds no BIGPATENT copy.

  python -m calm_jax.main --config=configs/big_patent.py --workdir=DIR --config.mode=calibrate \
      --config.model.hf_path=/models/t5-patent --config.data.vocabulary=/models/t5-patent
"""

import ml_collections

from configs import base, demo


def get_config() -> ml_collections.ConfigDict:
  config = demo.get_config()
  base.real_data_defaults(config)
  # T5 1.1 with 8+8 layers; real weights: --config.model.hf_path (a local HF directory) or
  # --config.model.checkpoint (a calm_jax export).
  config.model = base.model_section("calm_t5_8l")

  config.data.task = "calm_big_patent"  # seqio over TFDS (see above)
  # 'byte', or the checkpoint's tokenizer directory (usually the same as model.hf_path).
  config.data.vocabulary = "byte"
  config.data.calibration_split = "validation"  # calibrate on the validation patents
  config.data.test_split = "test"  # decode, evaluate and analyse the test patents
  # Lengths count ids of data.vocabulary (SentencePiece pieces; ~4x as many bytes).
  config.data.max_input_len = 2048  # description ids (+EOS); longer ones are cut
  config.decode.max_decode_len = 256  # abstract positions (~120 words on average)

  # CALM's summarisation setting: softmax response with the decaying threshold, tau = 4.
  config.exit = base.exit_section(measure="softmax_diff", threshold=0.9, tau=4.0)
  # Textual consistency with the full model by ROUGE-L, epsilon 0.05.
  config.calibration = base.calibration_section(num_examples=500, similarity="rouge_l",
                                                batch_size=32)
  config.generate.input_prefix = "summarize: "  # T5's summarisation prefix
  config.analysis.similarity = "rouge_l"  # oracle quality against the references
  return config
