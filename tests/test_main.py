"""calm_jax/main.py: --config.* overrides reach the run, and bad ones stop the main job with a
one-line error."""

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


def test_main_flags_override_and_reject_bad_values(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  command = [sys.executable, "-m", "calm_jax.main", "--config=configs/demo.py",
             f"--workdir={tmp_path}", "--config.mode=decode", "--config.data.num_examples=2",
             "--config.decode.max_decode_len=3", "--config.model.num_decoder_layers=1"]
  done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  assert len(open(tmp_path / "decode.jsonl", encoding="utf-8").readlines()) == 2
  bad = subprocess.run(command[:-1] + ["--config.model.num_decoder_layers=two"], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=300)
  assert bad.returncode != 0
  assert "num_decoder_layers" in bad.stderr
  unknown = subprocess.run(command + ["--config.model.widht=3"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
  assert unknown.returncode != 0 and "widht" in unknown.stderr
