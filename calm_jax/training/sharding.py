"""Device mesh, logical axis names on parameters, and the rules that map them to the mesh.

The mesh has two axes, 'data' (batch split, parameters replicated) and 'model' (parameter
dimensions split). Every parameter dimension gets a logical name from its place in the tree
(`logical_axes`); config rules such as ('mlp', 'model') say which mesh axis splits it.
A dimension that does not divide evenly over its mesh axis stays replicated.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "model")

# Logical names by the parameter's key (last path entry) and rank, after the layer axis.
_LOGICAL_BY_KEY = {
    ("embedding", 2): ("vocab", "embed"),
    ("relative_bias", 2): ("relpos_buckets", "heads"),
    ("global_relative_bias", 2): ("relpos_buckets", "heads"),  # LongT5 transient-global
    ("scale", 1): ("embed",),
}
# Kernels by their module name: attention projections split heads, feed-forward splits mlp.
_KERNELS = {
    "q": ("embed", "joined_kv"), "k": ("embed", "joined_kv"),
    "v": ("embed", "joined_kv"), "o": ("joined_kv", "embed"),
    "wi": ("embed", "mlp"), "wi_0": ("embed", "mlp"), "wi_1": ("embed", "mlp"),
    "wo": ("mlp", "embed"), "lm_head": ("embed", "vocab"),
}
DEFAULT_RULES: Tuple[Tuple[str, Optional[str]], ...] = (
    ("batch", "data"), ("vocab", "model"), ("mlp", "model"), ("joined_kv", "model"),
    ("heads", "model"), ("embed", None), ("layers", None), ("relpos_buckets", None),
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Mesh shape (-1: every device left over) and logical-to-mesh rules."""

  data: int = -1
  model: int = 1
  rules: Tuple[Tuple[str, Optional[str]], ...] = DEFAULT_RULES


def make_mesh(config: MeshConfig, devices: Optional[Sequence[Any]] = None) -> Mesh:
  """A ('data', 'model') mesh over all (or the given) devices."""
  devices = list(jax.devices() if devices is None else devices)
  data, model = config.data, config.model
  if model < 1 or (data < 1 and data != -1):
    raise ValueError(f"mesh sizes must be positive (data may be -1 = the rest); got "
                     f"data={data}, model={model}")
  if data == -1:
    if len(devices) % model:
      raise ValueError(f"mesh.model={model} does not divide the {len(devices)} devices")
    data = len(devices) // model
  if data * model != len(devices):
    raise ValueError(f"mesh data={data} x model={model} = {data * model} devices, but "
                     f"{len(devices)} are available")
  return Mesh(np.asarray(devices).reshape(data, model), MESH_AXES)


def _path_names(path) -> Tuple[str, ...]:
  return tuple(str(getattr(entry, "key", entry)) for entry in path)


def _logical_for(names: Tuple[str, ...], shape: Tuple[int, ...]) -> Tuple[Optional[str], ...]:
  stacked = "layers" in names  # a leading layer axis from the stacked layer parameters
  rank = len(shape) - int(stacked)
  key = names[-1]
  if key == "kernel":
    module = names[-2] if len(names) > 1 else ""
    axes = _KERNELS.get(module, (None,) * rank)
  else:
    axes = _LOGICAL_BY_KEY.get((key, rank), (None,) * rank)
  if len(axes) != rank:
    axes = (None,) * rank
  return (("layers",) if stacked else ()) + tuple(axes)


def logical_axes(params: Any) -> Any:
  """A pytree like `params` of logical axis-name tuples (None: no name)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: _logical_for(_path_names(path), np.shape(leaf)), params)


def _fit(spec: PartitionSpec, shape: Tuple[int, ...], mesh: Mesh) -> PartitionSpec:
  """Drops mesh axes that do not divide their dimension (replicating it instead)."""
  fitted = []
  for dim, axis in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    size = int(np.prod([mesh.shape[a] for a in (axis if isinstance(axis, tuple) else (axis,))])) \
        if axis is not None else 1
    fitted.append(axis if axis is not None and dim % size == 0 else None)
  return PartitionSpec(*fitted)


def param_shardings(params: Any, mesh: Mesh, rules: Sequence[Tuple[str, Optional[str]]]) -> Any:
  """NamedSharding for every parameter from its logical axes and the rules."""
  def one(axes, leaf):
    spec = nn.logical_to_mesh_axes(axes, rules)
    return NamedSharding(mesh, _fit(spec, np.shape(leaf), mesh))
  return jax.tree.map(one, logical_axes(params), params,
                      is_leaf=lambda x: isinstance(x, tuple))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Rows split over 'data', everything else replicated."""
  return NamedSharding(mesh, PartitionSpec("data"))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())
