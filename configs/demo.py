"""The offline demo: the embedded default (configs/default.py) under the README's name.

Run: ./launch/local.sh --config=configs/demo.py --workdir=workdir/demo
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  return default.get_config()
