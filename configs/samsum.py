"""SAMSum dialogue summarisation with CALM's 8+8-layer T5.

Data: `samsum_local` reads ../shared/data/samsum/{validation,test}.jsonl (both splits in
full; no train split). Training needs the train split: --config.data.task=calm_samsum
(seqio over TFDS samsum:1.0.0, `pip install -r requirements-seqio.txt`, manual download).

  python -m calm_jax.main --config=configs/samsum.py --workdir=DIR --config.mode=calibrate \
      --config.model.hf_path=/models/t5-samsum --config.data.vocabulary=/models/t5-samsum
"""

import ml_collections

from configs import base, demo


def get_config() -> ml_collections.ConfigDict:
  config = demo.get_config()
  base.real_data_defaults(config)
  # T5 1.1 with 8+8 layers; real weights: --config.model.hf_path (a local HF directory) or
  # --config.model.checkpoint (a calm_jax export).
  config.model = base.model_section("calm_t5_8l")

  config.data.task = "samsum_local"  # JSON Lines in ../shared/data (see above)
  # 'byte', or the checkpoint's tokenizer directory (usually the same as model.hf_path).
  config.data.vocabulary = "byte"
  config.data.calibration_split = "validation"  # calibrate on the validation dialogues
  config.data.test_split = "test"  # decode, evaluate and analyse the test dialogues
  # Lengths count ids of data.vocabulary (SentencePiece pieces; ~4x as many bytes).
  config.data.max_input_len = 512  # dialogue ids (+EOS); longer dialogues are cut
  config.decode.max_decode_len = 64  # summary positions (~25 pieces on average)

  # CALM's summarisation setting: softmax response with the decaying threshold, tau = 4.
  config.exit = base.exit_section(measure="softmax_diff", threshold=0.9, tau=4.0)
  # Textual consistency with the full model by ROUGE-L, epsilon 0.05.
  config.calibration = base.calibration_section(num_examples=500, similarity="rouge_l",
                                                batch_size=64)
  config.generate.input_prefix = "summarize: "  # T5's summarisation prefix
  config.analysis.similarity = "rouge_l"  # oracle quality against the references
  return config
