"""WMT14 English -> German translation with CALM's 8+8-layer T5.

Data: `wmt14_en_de_local` reads ../shared/data/wmt14_en_de/{validation,test}.jsonl
(newstest2013 and newstest2014; no train split). Training: --config.data.task=
calm_wmt14_en_de (seqio over TFDS wmt14_translate/de-en:1.0.0, `pip install -r
requirements-seqio.txt`).

  python -m calm_jax.main --config=configs/wmt14_ende.py --workdir=DIR --config.mode=calibrate \
      --config.model.hf_path=/models/t5-wmt-ende --config.data.vocabulary=/models/t5-wmt-ende

The values are the `wmt14_ende` row of configs/dataset.py (the same config as
--config=configs/dataset.py:wmt14_ende).
"""

import ml_collections

from configs import dataset


def get_config() -> ml_collections.ConfigDict:
  return dataset.get_config("wmt14_ende")
