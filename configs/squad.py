"""SQuAD v1.1 open-book question answering with CALM's 8+8-layer T5.

Data: `squad_v1.1_local` reads ../shared/data/squad_v1.1/validation.jsonl (the official dev
set; inputs already read "question: <q> context: <c>", T5's format). It is the only split
there, so calibration and evaluation both read it. Training: --config.data.task=
calm_squad_v1.1 (seqio over TFDS squad/v1.1:3.0.0, `pip install -r requirements-seqio.txt`).

  python -m calm_jax.main --config=configs/squad.py --workdir=DIR --config.mode=calibrate \
      --config.model.hf_path=/models/t5-squad --config.data.vocabulary=/models/t5-squad
"""

import ml_collections

from configs import base, demo


def get_config() -> ml_collections.ConfigDict:
  config = demo.get_config()
  base.real_data_defaults(config)
  # T5 1.1 with 8+8 layers; real weights: --config.model.hf_path (a local HF directory) or
  # --config.model.checkpoint (a calm_jax export).
  config.model = base.model_section("calm_t5_8l")

  config.data.task = "squad_v1.1_local"  # JSON Lines in ../shared/data (see above)
  # 'byte', or the checkpoint's tokenizer directory (usually the same as model.hf_path).
  config.data.vocabulary = "byte"
  config.data.calibration_split = "validation"  # the only local split (see above)
  config.data.test_split = "validation"  # the only local split (see above)
  # Lengths count ids of data.vocabulary (SentencePiece pieces; ~4x as many bytes).
  config.data.max_input_len = 512  # question + context ids (+EOS); longer ones are cut
  config.decode.max_decode_len = 32  # answer positions (answers are short spans)

  # Softmax response; answers are a few tokens long, so the threshold is kept constant.
  config.exit = base.exit_section(measure="softmax_diff", threshold=0.9, tau=0.0)
  # Textual consistency with the full model by token F1 (SQuAD's metric), epsilon 0.05.
  config.calibration = base.calibration_section(num_examples=1000, similarity="token_f1",
                                                batch_size=64)
  # Write generate inputs as "question: <q> context: <c>"; T5 adds no further prefix.
  config.generate.input_prefix = ""
  config.analysis.similarity = "token_f1"  # oracle quality against the reference answers
  return config
