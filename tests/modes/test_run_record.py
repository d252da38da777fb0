"""The run record (calm_jax.modes.run_record): written last by every mode run, naming each
file it wrote with the config's digest; a workdir whose outputs disagree with it (a run
killed between its writes, a file changed or gone, outputs no finished run recorded) is
reported before the next mode runs."""

import json
import os
import subprocess
import sys

import ml_collections
import pytest

from calm_jax import modes
from calm_jax.modes import run_record

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(**fields) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({"mode": "decode", **fields})


def test_the_record_names_what_the_run_wrote_and_finds_changes(tmp_path):
  (tmp_path / "old.json").write_text("{}")
  os.utime(tmp_path / "old.json", ns=(1, 1))  # written long before the run
  started = run_record.workdir_clock(str(tmp_path))
  (tmp_path / "a.json").write_text('{"x": 1}')
  (tmp_path / "sub").mkdir()
  (tmp_path / "sub" / "b.md").write_text("b")
  (tmp_path / "checkpoints").mkdir()
  (tmp_path / "checkpoints" / "c.json").write_text("{}")  # Orbax's, never recorded
  run_record.write_record(str(tmp_path), "decode", _config(seed=1), started)
  record = run_record.read_record(str(tmp_path))
  assert sorted(record) == ["a.json", os.path.join("sub", "b.md")]
  assert record["a.json"].mode == "decode"
  assert record["a.json"].config_digest == run_record.config_digest(_config(seed=1))
  assert record["a.json"].config_digest != run_record.config_digest(_config(seed=2))
  assert run_record.inconsistencies(str(tmp_path)) == [
      "old.json not in run_record.json: written by a run that did not finish"]
  os.remove(tmp_path / "old.json")
  assert run_record.inconsistencies(str(tmp_path)) == []
  (tmp_path / "a.json").write_text('{"x": 2}')
  os.remove(tmp_path / "sub" / "b.md")
  assert run_record.inconsistencies(str(tmp_path)) == [
      "a.json changed after the decode run that recorded it: a later run stopped before "
      "finishing, so outputs may mix two configs",
      f"{os.path.join('sub', 'b.md')} (written by decode) is missing"]
  (tmp_path / run_record.RECORD_FILE).write_text('{"files": ')
  with pytest.raises(ValueError, match="run_record.json is not a valid run record"):
    run_record.inconsistencies(str(tmp_path))


KILLED_CALIBRATION = """
import os, signal, sys
sys.path.insert(0, {root!r})
from configs import demo
from calm_jax import modes
from calm_jax.modes import context

def config(epsilon):
  c = demo.get_config()
  c.mode = "calibrate"
  c.decode.max_decode_len = 3
  c.model.update(num_layers=1, num_decoder_layers=2, d_model=16, d_ff=16, num_heads=2, d_kv=8)
  c.calibration.update(num_examples=4, thresholds=(1.0, 0.3), deltas=(0.3,), num_splits=2,
                       calibration_fraction=0.5, rules=("ltt_hoeffding_bentkus",),
                       epsilon=epsilon)
  c.lock()
  return c

modes.run(config(0.1), {workdir!r})
write = context.write_json_atomically

def killed_after_calibration_json(path, value):
  write(path, value)
  if path.endswith("calibration.json"):
    os.kill(os.getpid(), signal.SIGKILL)  # between calibrate's writes

context.write_json_atomically = killed_after_calibration_json
modes.run(config(0.2), {workdir!r})
"""


def test_a_calibrate_run_killed_between_writes_is_reported(tmp_path, demo_config, capsys):
  workdir = str(tmp_path / "run")
  done = subprocess.run([sys.executable, "-c", KILLED_CALIBRATION.format(root=ROOT,
                                                                         workdir=workdir)],
                        cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == -9, done.stderr
  validity = json.load(open(os.path.join(workdir, "validity.json"), encoding="utf-8"))
  calibration = json.load(open(os.path.join(workdir, "calibration.json"), encoding="utf-8"))
  # A mixed set: calibration.json from the second run, validity.json from the first (the
  # same shapes, so the second run compiles nothing new).
  assert calibration["choices"][0]["result"]["epsilon"] == 0.2 and validity["epsilon"] == 0.1
  record = run_record.read_record(workdir)
  assert {"calibration.json", "validity.json", "validity.md", "validity.png"} <= set(record)
  problem = ("calibration.json changed after the calibrate run that recorded it: a later "
             "run stopped before finishing, so outputs may mix two configs")
  assert run_record.inconsistencies(workdir) == [problem]
  # The next mode run says so first (here one its checks then refuse).
  config = demo_config()
  with config.unlocked():
    config.decode.max_decode_len = 0
  with pytest.raises(ValueError, match="decode.max_decode_len"):
    modes.run(config, workdir)
  assert f"calm_jax: warning: {workdir}: {problem}" in capsys.readouterr().err
