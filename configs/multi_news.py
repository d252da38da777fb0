"""Multi-News multi-document summarisation with LongT5 (transient-global, base), 4096 inputs.

Data: `calm_multi_news`, the seqio task of calm_jax/data/seqio_tasks.py over TFDS
multi_news:2.1.0 (`pip install -r requirements-seqio.txt`; TFDS downloads it once where
a network is available). ../shared/data holds no Multi-News copy.

  python -m calm_jax.main --config=configs/multi_news.py --workdir=DIR --config.mode=calibrate \
      --config.model.hf_path=/models/t5-multinews --config.data.vocabulary=/models/t5-multinews

The values are the `multi_news` row of configs/dataset.py (the same config as
--config=configs/dataset.py:multi_news).
"""

import ml_collections

from configs import dataset


def get_config() -> ml_collections.ConfigDict:
  return dataset.get_config("multi_news")
