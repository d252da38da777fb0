"""Training on a device mesh (calm_jax.training.sharding): on 8 simulated CPU devices, and on
two processes joined by jax.distributed, it gives the 1-device losses (data and model
parallel).

XLA fixes the device count when JAX starts, so each comparison runs in fresh processes with
XLA_FLAGS=--xla_force_host_platform_device_count=N. The processes train the conftest's tiny
model on its copy task, handed over as files (`_write_setup`).
"""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np


SCRIPT = r'''
import json, os, sys, tempfile
import jax, numpy as np
# argv: the setup folder; for one of two processes also coordinator, process id, workdir
if len(sys.argv) > 2:
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(sys.argv[2], num_processes=2, process_id=int(sys.argv[3]))
from calm_jax.model.config import T5Config
from calm_jax.model.t5 import init_params
from calm_jax.training.data import EncodedExamples
from calm_jax.training.calm import train_calm
from calm_jax.training.loop import LoopSettings
from calm_jax.training.objectives import AnytimeObjective
from calm_jax.training.optimizers import OptimizerConfig
from calm_jax.training.sharding import DEFAULT_RULES, MeshConfig, make_mesh

with open(os.path.join(sys.argv[1], "config.json"), encoding="utf-8") as f:
  TINY = T5Config(**json.load(f))
with np.load(os.path.join(sys.argv[1], "data.npz")) as arrays:
  DATA = EncodedExamples(inputs=arrays["inputs"], targets=arrays["targets"])

def losses(mesh_config, devices, batch_size=8):
  result = train_calm(
      TINY, init_params(TINY, jax.random.PRNGKey(0)), DATA,
      objective=AnytimeObjective(),
      optimizer=OptimizerConfig(optimizer="adafactor", learning_rate=1e-2, warmup_steps=1),
      settings=LoopSettings(steps=3, batch_size=batch_size, log_every=10),
      workdir=sys.argv[4] if len(sys.argv) > 4 else tempfile.mkdtemp(),
      mesh=make_mesh(mesh_config, devices), rules=DEFAULT_RULES)
  sharding = result.params["decoder"]["layers"]["ffn"]["wi_0"]["kernel"].sharding
  return [r["loss"] for r in result.history], list(sharding.spec)

out = {"devices": jax.device_count(), "process": jax.process_index()}
if len(sys.argv) > 2:
  out["two_processes"], _ = losses(MeshConfig(data=-1), None)
  print("RESULT" + json.dumps(out))
  sys.exit(0)
out["one"], _ = losses(MeshConfig(data=1), jax.devices()[:1])
out["data8"], _ = losses(MeshConfig(data=-1), None)
out["data4_model2"], out["mlp_spec"] = losses(MeshConfig(data=4, model=2), None)
try:
  losses(MeshConfig(data=-1), None, batch_size=12)
except ValueError as error:
  out["error"] = str(error)
print("RESULT" + json.dumps(out))
'''


def _write_setup(directory, config, data) -> str:
  """The tiny model's config and the copy task's arrays, for the training processes."""
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
    json.dump(dataclasses.asdict(config), f)
  np.savez(os.path.join(directory, "data.npz"), inputs=data.inputs, targets=data.targets)
  return str(directory)


ONE_DEVICE = {}  # the 1-device losses, shared with the two-process test


def test_eight_devices_match_one_device(tmp_path, tiny_config, tiny_data, jax_processes):
  setup = _write_setup(tmp_path / "setup", tiny_config, tiny_data())
  done = subprocess.run([sys.executable, "-c", SCRIPT, setup], cwd=jax_processes.root,
                        env=jax_processes.environment(8),
                        capture_output=True, text=True, timeout=900, check=False)
  out = jax_processes.result(done.stdout + done.stderr)
  ONE_DEVICE["losses"] = out["one"]
  assert out["devices"] == 8
  assert len(out["one"]) == 3 and out["one"][2] < out["one"][0]
  for name in ("data8", "data4_model2"):
    assert max(abs(a - b) for a, b in zip(out[name], out["one"])) < 1e-5, (name, out)
  assert out["mlp_spec"] == [None, None, "model"]
  assert out["error"] == ("train.batch_size=12 is not divisible by the data-parallel size 8 "
                          "(mesh.data)")


def test_two_processes_with_two_devices_each_match_one_device(tmp_path, tiny_config,
                                                              tiny_data, jax_processes):
  """Two hosts (processes) each feed their own half of every batch."""
  setup = _write_setup(tmp_path / "setup", tiny_config, tiny_data())
  outs = jax_processes.two_processes(
      SCRIPT, lambda address, i: [setup, address, str(i), str(tmp_path / "workdir")], tmp_path)
  assert [o["process"] for o in outs] == [0, 1] and outs[0]["devices"] == 4
  assert outs[0]["two_processes"] == outs[1]["two_processes"]
  expected = ONE_DEVICE.get("losses")
  if expected is None:  # run alone: compute the 1-device losses here
    done = subprocess.run([sys.executable, "-c", SCRIPT, setup], cwd=jax_processes.root,
                          env=jax_processes.environment(8),
                          capture_output=True, text=True, timeout=900, check=False)
    expected = jax_processes.result(done.stdout + done.stderr)["one"]
  assert max(abs(a - b) for a, b in zip(outs[0]["two_processes"], expected)) < 1e-5
