"""BIGPATENT summarisation (patent description -> abstract) with LongT5 (tglobal base).

Data: `calm_big_patent`, the seqio task of calm_jax/data/seqio_tasks.py over TFDS
big_patent/all:2.1.2 (`pip install -r requirements-seqio.txt`; TFDS downloads it once
where a network is available). ../shared/data holds no BIGPATENT copy.

  python -m calm_jax.main --config=configs/big_patent.py --workdir=DIR --config.mode=calibrate \
      --config.model.hf_path=/models/t5-patent --config.data.vocabulary=/models/t5-patent

The values are the `big_patent` row of configs/dataset.py (the same config as
--config=configs/dataset.py:big_patent).
"""

import ml_collections

from configs import dataset


def get_config() -> ml_collections.ConfigDict:
  return dataset.get_config("big_patent")
