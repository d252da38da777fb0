"""The resume store of calibrate and evaluate (calm_jax.modes.resume): parts saved and read
back, a changed config or model refused with the differences listed, and a calibrate run
killed mid-grid that, restarted, ends with exactly the files of an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from calm_jax import modes
from calm_jax.modes.resume import ResumeMismatchError, open_store

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The calibrate run of the kill test: 6 examples in parts of 2, three thresholds.
OVERRIDES = {"mode": "calibrate", "data.max_input_len": 24, "decode.max_decode_len": 4,
             "model.num_decoder_layers": 2, "model.d_model": 32, "model.d_ff": 64,
             "calibration.num_examples": 6, "calibration.save_every": 2,
             "calibration.batch_size": 2, "calibration.thresholds": [1.0, 0.5, 0.1],
             "calibration.deltas": [0.2, 0.5], "calibration.num_splits": 3,
             "calibration.calibration_fraction": 0.5}

# Runs calibrate and kills itself (SIGKILL, no clean-up) right after the second part is saved.
KILLED_RUN = r'''
import json, os, signal, sys
from calm_jax import modes
from calm_jax.modes import resume
from configs import demo
config = demo.get_config()
for key, value in json.loads(sys.argv[2]).items():
  section, _, field = key.rpartition(".")
  (config[section] if section else config)[field] = tuple(value) if isinstance(value, list) else value
saved = []
original = resume.ResumeStore.save
def save_then_die(self, key, arrays):
  original(self, key, arrays)
  saved.append(key)
  if len(saved) == 2:
    os.kill(os.getpid(), signal.SIGKILL)
resume.ResumeStore.save = save_then_die
modes.run(config, sys.argv[1])
'''


def _config(overrides):
  from configs import demo  # pylint: disable=import-outside-toplevel
  config = demo.get_config()
  for key, value in overrides.items():
    section, _, field = key.rpartition(".")
    (config[section] if section else config)[field] = (tuple(value) if isinstance(value, list)
                                                       else value)
  config.lock()
  return config


def _files(directory, names):
  contents = {}
  for name in names:
    with open(os.path.join(directory, name), "rb") as f:
      contents[name] = f.read()
  return contents


def test_store_saves_parts_and_refuses_another_run(tmp_path):
  config = ml_collections.ConfigDict({"seed": 0, "calibration": {"epsilon": 0.1},
                                      "mesh": {"data": -1}})
  params = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
  store = open_store(str(tmp_path), "calibrate", config, params)
  assert store.load("grid_a_0") is None
  store.save("grid_a_0", {"tokens": np.array([[1, 2]], np.int32)})
  assert not [n for n in os.listdir(store.directory) if n.startswith(".tmp")]
  # Reopened with the same config (another mesh is allowed): the part is there.
  config.mesh.data = 4
  again = open_store(str(tmp_path), "calibrate", config, params)
  assert len(again) == 1
  np.testing.assert_array_equal(again.load("grid_a_0")["tokens"], [[1, 2]])
  changed = ml_collections.ConfigDict({"seed": 1, "calibration": {"epsilon": 0.2},
                                       "mesh": {"data": -1}})
  with pytest.raises(ResumeMismatchError, match=r"another config or model: config.calibration."
                     r"epsilon: stored 0.1, this run 0.2; config.seed: stored 0, this run 1; "
                     r"model_sha256: stored '[0-9a-f]{64}', this run '[0-9a-f]{64}'\. Restart "
                     r"with that run's config"):
    open_store(str(tmp_path), "calibrate", changed, {"w": params["w"] + 1})
  again.finish()
  assert os.listdir(tmp_path) == []


def test_killed_calibrate_resumes_to_the_files_of_an_uninterrupted_run(tmp_path,
                                                                      saved_resume_keys):
  killed, whole = str(tmp_path / "killed"), str(tmp_path / "whole")
  done = subprocess.run([sys.executable, "-c", KILLED_RUN, killed, json.dumps(OVERRIDES)],
                        cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu"),
                        capture_output=True, text=True, timeout=900, check=False)
  assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
  store = os.path.join(killed, "resume", "calibrate")
  assert "calibration.json" not in os.listdir(killed)
  assert sorted(os.listdir(store)) == ["description.json", "grid_softmax_diff_0.npz",
                                       "grid_softmax_diff_2.npz"]

  changed = dict(OVERRIDES, **{"calibration.epsilon": 0.2})
  with pytest.raises(ResumeMismatchError, match="config.calibration.epsilon: stored 0.1, this run 0.2"):
    modes.run(_config(changed), killed)
  assert sorted(os.listdir(store))[1:] == ["grid_softmax_diff_0.npz", "grid_softmax_diff_2.npz"]

  # The restart decodes only the last part; then an uninterrupted run for comparison.
  saved_resume_keys.clear()
  modes.run(_config(OVERRIDES), killed)
  assert saved_resume_keys == ["grid_softmax_diff_4"]
  modes.run(_config(OVERRIDES), whole)
  assert sorted(os.listdir(killed)) == sorted(os.listdir(whole))
  assert "resume" not in os.listdir(killed)
  outputs = ("calibration.json", "validity.json", "validity.md", "validity.png")
  assert set(outputs) <= set(os.listdir(killed))
  assert _files(killed, outputs) == _files(whole, outputs)
