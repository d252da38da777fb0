"""CNN/DailyMail summarisation with CALM's 8+8-layer T5 (the CALM paper's defaults).

Data: `cnn_dailymail_local` reads ../shared/data/cnn_dailymail/{validation,test}.jsonl
(the first 668 / 574 pairs of Hugging Face cnn_dailymail 3.0.0; no train split). Training
needs the full dataset: --config.data.task=calm_cnn_dailymail (seqio over TFDS
cnn_dailymail:3.4.0, `pip install -r requirements-seqio.txt`).

  python -m calm_jax.main --config=configs/cnndm.py --workdir=DIR --config.mode=calibrate \
      --config.model.hf_path=/models/t5-cnndm --config.data.vocabulary=/models/t5-cnndm

The values are the `cnndm` row of configs/dataset.py (the same config as
--config=configs/dataset.py:cnndm).
"""

import ml_collections

from configs import dataset


def get_config() -> ml_collections.ConfigDict:
  return dataset.get_config("cnndm")
