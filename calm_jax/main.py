"""Main job: `python -m calm_jax.main --config=configs/demo.py --workdir=DIR`.

The same command runs on every host of a pod (see launch/); only process 0 writes.
Expected failures (a bad setting, a missing or corrupt file) end the job with one line on
stderr, `calm_jax: error: <message>`, and exit status 1; --debug (or CALM_JAX_DEBUG=1)
shows the traceback instead. `--help` lists the modes; `--print_config` prints the resolved
config and exits.
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
flags.DEFINE_bool("print_config", False, "Print the resolved config (every field and value, "
                  "overrides applied) and exit without running.")
flags.DEFINE_bool("debug", False, "Show the full traceback of a failure (also "
                  "CALM_JAX_DEBUG=1) instead of the one-line error.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host pods). "
                  "Without the three flags below the coordinator, process count and id come "
                  "from the TPU or SLURM environment.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (with --distributed).")
flags.DEFINE_integer("num_processes", None, "Number of processes (with --distributed).")
flags.DEFINE_integer("process_id", None, "This process's index (with --distributed).")

PROGRAM = "calm_jax"
DEBUG_ENV = "CALM_JAX_DEBUG"
# What a user can cause and fix: bad settings and values, missing, unreadable or corrupt
# files, an optional package not installed. Anything else is a bug and keeps its traceback.
EXPECTED_ERRORS = (ValueError, TypeError, OSError, ImportError)
OUT_OF_MEMORY = "RESOURCE_EXHAUSTED"
USAGE = """\
calm_jax: Confident Adaptive Language Modeling (early-exit T5) in JAX.

usage: python -m calm_jax.main --config=FILE[:NAME] --workdir=DIR [--config.FIELD=VALUE ...]

  --config=FILE       a get_config() file: configs/demo.py (offline, runs on a laptop CPU),
                      configs/<dataset>.py or configs/dataset.py:<name> (see their docstrings)
  --workdir=DIR       where outputs are written (created if missing)
  --config.FIELD=V    override one field, e.g. --config.mode=decode --config.exit.threshold=0.8
  --print_config      print the resolved config (every field and value) and exit
  --debug             show tracebacks (also {debug_env}=1)
  --distributed       multi-host pods (see launch/); --helpfull lists every absl flag

modes (--config.mode=NAME):
{modes}
"""


def usage_text() -> str:
  """--help: the flags that matter and the modes, one line each."""
  width = max(len(name) for name in modes.MODES)
  lines = [f"  {name:<{width}}  {modes.summary(name)}" for name in modes.MODES]
  return USAGE.format(debug_env=DEBUG_ENV, modes="\n".join(lines))


def debugging(argv) -> bool:
  """Whether tracebacks were asked for (--debug or CALM_JAX_DEBUG=1), read before absl
  parses the flags so that a parsing failure honours it too."""
  return (os.environ.get(DEBUG_ENV, "") not in ("", "0")
          or any(arg in ("--debug", "--debug=true", "--debug=True") for arg in argv[1:]))


def fail(message: str) -> None:
  """Exits with status 1 after one line on stderr."""
  line = " ".join(str(message).split())
  sys.stderr.write(f"{PROGRAM}: error: {line}\n")
  sys.stderr.flush()
  sys.exit(1)


def initialize_distributed() -> None:
  """jax.distributed.initialize from the flags when given, else from the environment."""
  explicit = {"coordinator_address": FLAGS.coordinator_address,
              "num_processes": FLAGS.num_processes, "process_id": FLAGS.process_id}
  given = {k: v for k, v in explicit.items() if v is not None}
  if given and not FLAGS.distributed:
    raise ValueError(f"--{next(iter(given))} needs --distributed")
  if given and len(given) != len(explicit):
    missing = sorted(set(explicit) - set(given))
    raise ValueError(f"give all of --coordinator_address, --num_processes and "
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


def flag_error_line(error: flags.Error) -> str:
  """A flag error in one line: a config file's own error (absl embeds its traceback) is
  reduced to the flag and the exception's last line."""
  text = str(error)
  if "Traceback (most recent call last)" not in text:
    return text
  head = text.splitlines()[0].split(": Error whilst parsing config file")[0]
  last = [line.strip() for line in text.splitlines() if line.strip()][-1]
  return f"{head.strip()}: {last}"


def parse_flags(argv):
  """absl's flag parsing, every failure one line: an unknown flag or override, a value of
  the wrong type, a config file that raises, a missing --config or --workdir. `--help`
  prints the modes (absl's --helpfull is untouched)."""
  if any(arg in ("--help", "-h", "-?") for arg in argv[1:]):
    sys.stdout.write(usage_text())
    sys.exit(0)
  try:
    rest = FLAGS(argv)
  except flags.Error as error:
    if debugging(argv):
      raise
    fail(flag_error_line(error))
  except (AttributeError, KeyError) as error:
    message = unknown_override(error, argv)
    if not message or debugging(argv):
      raise
    fail(message)
  for name in ("config", "workdir"):
    if FLAGS[name].value is None and not (name == "workdir" and FLAGS.print_config):
      fail(f"--{name} is required; --help lists the flags and modes")
  return rest


def run(argv) -> None:
  """The job after flag parsing: --print_config, or the mode."""
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {' '.join(argv[1:])} (flags take the form "
                     "--name=value)")
  if FLAGS.print_config:
    sys.stdout.write(str(FLAGS.config))
    return
  if not any(arg.split("=")[0] in ("--verbosity", "-v", "--v") for arg in sys.argv[1:]):
    # Orbax logs every save at INFO (and an import raises the verbosity to INFO), so
    # warnings only unless the user asks with --verbosity.
    logging.set_verbosity(logging.WARNING)
  initialize_distributed()
  logging.info("JAX process %d of %d; local devices: %s", jax.process_index(),
               jax.process_count(), jax.local_devices())
  modes.run(FLAGS.config, FLAGS.workdir)


def main(argv):
  """Runs the job; an expected failure is one line on stderr (a traceback with --debug)."""
  try:
    run(argv)
  except EXPECTED_ERRORS as error:
    if debugging(sys.argv) or FLAGS.debug:
      raise
    fail(error)
  except RuntimeError as error:  # XLA's out-of-memory: the numbers are in the first line
    if OUT_OF_MEMORY not in str(error) or debugging(sys.argv) or FLAGS.debug:
      raise
    fail(f"{str(error).splitlines()[0]} (lower the batch size or the lengths: "
         "train.batch_size, data.max_input_len, decode.max_decode_len)")


def cli() -> None:
  """The `calm-jax` console script: `python -m calm_jax.main`, which also puts the working
  directory first on sys.path (the config files import `configs`)."""
  sys.path.insert(0, os.getcwd())
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  cli()
