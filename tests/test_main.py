"""calm_jax/main.py: bad --config.* overrides stop the main job with a one-line error."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(*overrides):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  command = [sys.executable, "-m", "calm_jax.main", "--config=configs/cnndm.py",
             "--workdir=/nonexistent/never-created", *overrides]
  return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=300)


def test_main_rejects_a_wrong_type_clearly():
  done = run_main("--config.exit.threshold=abc")
  assert done.returncode != 0
  assert ("flag --config.exit.threshold=abc: could not convert string to float: 'abc'"
          in done.stderr)


def test_main_rejects_an_unknown_field_clearly():
  done = run_main("--config.exit.threshhold=0.5")
  assert done.returncode != 0
  last = done.stderr.strip().splitlines()[-1]
  assert last == ("FATAL Flags parsing error: --config.exit.threshhold: the config has no "
                  "field 'threshhold'; Did you mean \"threshold\" instead of \"threshhold\"?")
  assert "Traceback" not in done.stderr
