"""IWSLT2017 English -> German (TED talk) translation with CALM's 8+8-layer T5.

Data: `calm_iwslt2017_en_de`, the seqio task of calm_jax/data/seqio_tasks.py (`pip install
-r requirements-seqio.txt`). TFDS does not carry IWSLT2017: it reads JSON Lines files
<data dir>/iwslt2017_en_de/{train,validation,test}.jsonl ({"inputs": English, "targets":
German} a line) that you write yourself, e.g. from the Hugging Face dataset 'iwslt2017'
(config 'iwslt2017-en-de') or the WIT3 release (seqio_tasks.iwslt2017_instructions()).

  python -m calm_jax.main --config=configs/iwslt2017.py --workdir=DIR --config.mode=calibrate \
      --config.model.hf_path=/models/t5-iwslt --config.data.vocabulary=/models/t5-iwslt

The values are the `iwslt2017` row of configs/dataset.py (the same config as
--config=configs/dataset.py:iwslt2017).
"""

import ml_collections

from configs import dataset


def get_config() -> ml_collections.ConfigDict:
  return dataset.get_config("iwslt2017")
