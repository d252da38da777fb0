"""XSum extreme summarisation (one-sentence BBC summaries) with CALM's 8+8-layer T5.

Data: `calm_xsum`, the seqio task of calm_jax/data/seqio_tasks.py over TFDS xsum:1.1.0
(`pip install -r requirements-seqio.txt`; TFDS needs the manual download of the XSum
archive in its manual directory). ../shared/data holds no XSum copy.

  python -m calm_jax.main --config=configs/xsum.py --workdir=DIR --config.mode=calibrate \
      --config.model.hf_path=/models/t5-xsum --config.data.vocabulary=/models/t5-xsum

The values are the `xsum` row of configs/dataset.py (the same config as
--config=configs/dataset.py:xsum).
"""

import ml_collections

from configs import dataset


def get_config() -> ml_collections.ConfigDict:
  return dataset.get_config("xsum")
