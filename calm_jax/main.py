"""Main job: `python -m calm_jax.main --config=configs/demo.py --workdir=DIR`.

The same command runs on every host of a pod (see launch/); only process 0 writes.
"""

import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from calm_jax import modes

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


def unknown_override(error: Exception, argv) -> str:
  """The --config.* flag naming a field the config lacks, as ml_collections reports it (a
  bare KeyError / AttributeError, sometimes with a "Did you mean" line); "" if none does."""
  while error.args and isinstance(error.args[0], Exception):
    error = error.args[0]
  text = error.args[0] if error.args and isinstance(error.args[0], str) else ""
  key = text.splitlines()[0].strip("'") if text else ""
  for arg in argv[1:]:
    path = arg.split("=", 1)[0]
    if key and path.startswith("--config.") and key in path.split(".")[1:]:
      hint = " ".join(text.splitlines()[1:])
      return f"{path}: the config has no field {key!r}{'; ' + hint if hint else ''}"
  return ""


def parse_flags(argv):
  """absl's flag parsing; an override of an unknown config field exits with a one-line
  error like any other bad flag instead of a traceback."""
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as error:
    message = unknown_override(error, argv)
    if not message:
      raise
    sys.stderr.write(f"FATAL Flags parsing error: {message}\n")
    sys.exit(1)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not any(arg.split("=")[0] in ("--verbosity", "-v", "--v") for arg in sys.argv[1:]):
    # Orbax logs every save at INFO (and an import raises the verbosity to INFO), so
    # warnings only unless the user asks with --verbosity.
    logging.set_verbosity(logging.WARNING)
  initialize_distributed()
  logging.info("JAX process %d of %d; local devices: %s", jax.process_index(),
               jax.process_count(), jax.local_devices())
  modes.run(FLAGS.config, FLAGS.workdir)


def cli() -> None:
  """The `calm-jax` console script: `python -m calm_jax.main`, which also puts the working
  directory first on sys.path (the config files import `configs`)."""
  sys.path.insert(0, os.getcwd())
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  cli()
