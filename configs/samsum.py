"""SAMSum dialogue summarisation with CALM's 8+8-layer T5.

Data: `samsum_local` reads ../shared/data/samsum/{validation,test}.jsonl (both splits in
full; no train split). Training needs the train split: --config.data.task=calm_samsum
(seqio over TFDS samsum:1.0.0, `pip install -r requirements-seqio.txt`, manual download).

  python -m calm_jax.main --config=configs/samsum.py --workdir=DIR --config.mode=calibrate \
      --config.model.hf_path=/models/t5-samsum --config.data.vocabulary=/models/t5-samsum

The values are the `samsum` row of configs/dataset.py (the same config as
--config=configs/dataset.py:samsum).
"""

import ml_collections

from configs import dataset


def get_config() -> ml_collections.ConfigDict:
  return dataset.get_config("samsum")
