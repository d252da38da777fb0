"""WMT15 English -> French translation with CALM's 8+8-layer T5 (the CALM paper's
translation task).

Data: `wmt15_en_fr_local` reads ../shared/data/wmt15_en_fr/test.jsonl (newsdiscusstest2015,
1,500 pairs). It is the only split there, so calibration and evaluation both read it; with
--config.data.task=calm_wmt15_en_fr (seqio over TFDS wmt15_translate/fr-en:1.0.0, `pip
install -r requirements-seqio.txt`) set data.calibration_split=validation and train too.

  python -m calm_jax.main --config=configs/wmt15_enfr.py --workdir=DIR --config.mode=calibrate \
      --config.model.hf_path=/models/t5-wmt-enfr --config.data.vocabulary=/models/t5-wmt-enfr

The values are the `wmt15_enfr` row of configs/dataset.py (the same config as
--config=configs/dataset.py:wmt15_enfr).
"""

import ml_collections

from configs import dataset


def get_config() -> ml_collections.ConfigDict:
  return dataset.get_config("wmt15_enfr")
