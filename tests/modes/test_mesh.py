"""The decode mesh of the decoding modes (calm_jax.modes.mesh): built from the `mesh`
section, announced in one line, refused when its sizes do not fit the devices."""

import pytest

from calm_jax import modes
from calm_jax.modes.mesh import run_mesh


def test_the_mesh_line_names_its_sizes_and_processes(capsys, demo_config):
  mesh = run_mesh(demo_config(), "calibrate")
  assert (mesh.data_size, mesh.model_size) == (1, 1)
  assert capsys.readouterr().out == "[calibrate] mesh data=1 model=1 over 1 process(es)\n"


def test_a_mesh_larger_than_the_devices_is_refused(demo_config):
  config = demo_config()
  with config.unlocked():
    config.mesh.model = 2
  with pytest.raises(ValueError, match="mesh.model=2 does not divide the 1 devices"):
    run_mesh(config, "decode")


def test_the_decode_mode_prints_its_mesh(tmp_path, capsys, demo_config):
  modes.run(demo_config(), str(tmp_path))
  assert capsys.readouterr().out.splitlines()[0] == "[decode] mesh data=1 model=1 over 1 process(es)"
