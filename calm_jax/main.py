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
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host pods). "
                  "Without the three flags below the coordinator, process count and id come "
                  "from the TPU or SLURM environment.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (with --distributed).")
flags.DEFINE_integer("num_processes", None, "Number of processes (with --distributed).")
flags.DEFINE_integer("process_id", None, "This process's index (with --distributed).")
flags.mark_flags_as_required(["config", "workdir"])


def initialize_distributed() -> None:
  """jax.distributed.initialize from the flags when given, else from the environment."""
  explicit = {"coordinator_address": FLAGS.coordinator_address,
              "num_processes": FLAGS.num_processes, "process_id": FLAGS.process_id}
  given = {k: v for k, v in explicit.items() if v is not None}
  if given and not FLAGS.distributed:
    raise app.UsageError(f"--{next(iter(given))} needs --distributed")
  if given and len(given) != len(explicit):
    missing = sorted(set(explicit) - set(given))
    raise app.UsageError(f"give all of --coordinator_address, --num_processes and "
                         f"--process_id, or none (missing: {', '.join(missing)})")
  if FLAGS.distributed:
    # Cross-process collectives for CPU devices (multi-process runs on CPU hosts); TPU and
    # GPU backends ignore this setting.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**given)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if FLAGS["verbosity"].using_default_value:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save step at INFO
  initialize_distributed()
  logging.info("JAX process %d of %d; local devices: %s", jax.process_index(),
               jax.process_count(), jax.local_devices())
  run.run(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
