"""The device mesh a decoding mode runs on: the `mesh` section (sizes and the logical-axis
rules training uses) as a `decoding.sharded.DecodeMesh`, announced by process 0 in one
line, e.g. `[decode] mesh data=4 model=2 over 1 process(es)`."""

from __future__ import annotations

import jax
import ml_collections

from calm_jax.decoding.sharded import DecodeMesh, decode_mesh
from calm_jax.modes.training_setup import mesh_config_from


def run_mesh(config: ml_collections.ConfigDict, label: str) -> DecodeMesh:
  """The run's decode mesh over every device of every process; printed as `[label] mesh
  data=D model=M over P process(es)`."""
  mesh = decode_mesh(mesh_config_from(config.mesh))
  if jax.process_index() == 0:
    print(f"[{label}] {mesh.describe()}", flush=True)
  return mesh
