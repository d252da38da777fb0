"""SQuAD v1.1 open-book question answering with CALM's 8+8-layer T5.

Data: `squad_v1.1_local` reads ../shared/data/squad_v1.1/validation.jsonl (the official dev
set; inputs already read "question: <q> context: <c>", T5's format). It is the only split
there, so calibration and evaluation both read it. Training: --config.data.task=
calm_squad_v1.1 (seqio over TFDS squad/v1.1:3.0.0, `pip install -r requirements-seqio.txt`).

  python -m calm_jax.main --config=configs/squad.py --workdir=DIR --config.mode=calibrate \
      --config.model.hf_path=/models/t5-squad --config.data.vocabulary=/models/t5-squad

The values are the `squad` row of configs/dataset.py (the same config as
--config=configs/dataset.py:squad).
"""

import ml_collections

from configs import dataset


def get_config() -> ml_collections.ConfigDict:
  return dataset.get_config("squad")
