"""Main job: `python -m calm_jax.main --config=configs/demo.py --workdir=DIR`.

The same command runs on every host of a pod (see launch/); only process 0 writes.
"""

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from calm_jax import run

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a get_config() file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for outputs (created if missing).")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host pods; "
                  "the coordinator comes from the TPU or SLURM environment).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if FLAGS.distributed:
    jax.distributed.initialize()
  logging.info("JAX process %d of %d; local devices: %s", jax.process_index(),
               jax.process_count(), jax.local_devices())
  run.run(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
