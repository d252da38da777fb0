"""Early-exit decoding on a ('data', 'model') device mesh, on one host or many.

The batch's rows are split over the mesh's 'data' axis, and each data shard runs the
decoder's own loops on its rows (`jax.shard_map`, manual over 'data'): a shard stops its
layer loop when its own rows have exited and its token loop when its own rows have
finished, so one slow example holds only its shard. (A plain jit over a row-sharded batch
would run one loop for the whole global batch, every device waiting for the deepest exit
anywhere.) Inside a shard the 'model' axis is left to the compiler: parameters are placed
by the logical-axis rules training uses (`training.sharding.param_shardings`), so a model
too large for one device decodes split over 'model'.

A batch that does not divide over 'data' is padded with rows that start finished (the
decoder's `skip_rows`), which cost nothing and are cut from the result. Over several
processes (`jax.distributed`) every process passes the same host batch, each process's
devices decode only its own rows, and the outputs are gathered to every process as host
arrays (only process 0 writes them).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from calm_jax.decoding.plan import DecodeConstants
from calm_jax.model.layer_layout import check_layout, in_layout
from calm_jax.training.sharding import MeshConfig, make_mesh, param_shardings
from calm_jax.utils.conversion_cache import ConversionCache

Params = Any
DATA = "data"


@dataclasses.dataclass(frozen=True)
class DecodeMesh:
  """The mesh a decode runs on and the rules that shard the parameters over 'model'."""

  mesh: Mesh
  rules: Tuple[Tuple[str, Optional[str]], ...]

  @property
  def data_size(self) -> int:
    return self.mesh.shape[DATA]

  @property
  def model_size(self) -> int:
    return self.mesh.shape["model"]

  def describe(self) -> str:
    """E.g. 'mesh data=4 model=2 over 1 process(es)'."""
    return (f"mesh data={self.data_size} model={self.model_size} over "
            f"{jax.process_count()} process(es)")


def decode_mesh(config: MeshConfig = MeshConfig(), devices=None) -> DecodeMesh:
  """The decode mesh of a mesh config (sizes checked by make_mesh) over all devices."""
  return DecodeMesh(make_mesh(config, devices), tuple(config.rules))


def _place(tree: Any, shardings: Any) -> Any:
  """Global arrays with `shardings` from host values every process holds in full."""
  def one(leaf, sharding):
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
      return jax.device_put(leaf, sharding)  # already global: let JAX reshard it
    host = np.asarray(leaf)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
  return jax.tree.map(one, tree, shardings)


def _place_in_layout(params: Params, key: Tuple[DecodeMesh, str]) -> Params:
  where, layout = key
  placed = _place(params, param_shardings(params, where.mesh, where.rules))
  return in_layout(placed, layout)


# The last placements (per mesh and layer layout), so that decoding the same parameters
# again (a threshold grid's waves, evaluate's timing rounds) neither copies nor converts
# them again. The layout conversion is kept here, with the placement, rather than in
# layer_layout's cache of one tree per layout: there, decoding the same parameters on one
# device and on the mesh in turn would evict one conversion with the other and convert the
# weights again at every switch.
_PLACED = ConversionCache(_place_in_layout, keep=2, arrays_only=False)


def place_params(params: Params, where: DecodeMesh, layout: str = "stacked") -> Params:
  """Stacked parameters placed on the mesh by the logical-axis rules (split over 'model',
  replicated over 'data'), then in decoding layer `layout` (model.layer_layout: 'stacked',
  'per_layer' or 'auto'); the last placements are reused for the same arrays."""
  return _PLACED.get(params, (where, check_layout(layout)))


def padded_batch(rows: int, where: DecodeMesh) -> int:
  """The global batch: `rows` rounded up to a multiple of the 'data' size."""
  return -(-rows // where.data_size) * where.data_size


def _pad_rows(array: np.ndarray, total: int) -> np.ndarray:
  """array [B, ...] -> [total, ...], the extra rows copies of row 0 (valid inputs)."""
  extra = total - array.shape[0]
  return np.concatenate([array, np.repeat(array[:1], extra, axis=0)]) if extra else array


def _row_sharded(host: np.ndarray, where: DecodeMesh) -> jax.Array:
  """A global array of host rows [B, ...] split over 'data'; each process places its own."""
  sharding = NamedSharding(where.mesh, PartitionSpec(DATA))
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _per_row_threshold(constants: Any) -> bool:
  """Whether `constants` are an early-exit decode's with one threshold per row ([B])."""
  return isinstance(constants, DecodeConstants) and jnp.ndim(constants.threshold) == 1


def _constants_spec(constants: Any) -> Any:
  """shard_map specs of the constants: everything replicated over 'data' except one
  threshold per row ([B]), which is split with the rows. Constants other than
  DecodeConstants (plain greedy decoding's parameters) are replicated whole."""
  if not isinstance(constants, DecodeConstants):
    return PartitionSpec()
  return constants.replace(context=PartitionSpec(), tau=PartitionSpec(),
                           threshold=PartitionSpec(DATA) if _per_row_threshold(constants)
                           else PartitionSpec())


@functools.lru_cache(maxsize=32)
def _sharded_program(impl: Callable, plan: Any, where: DecodeMesh, per_row: bool):
  """The jitted decode of `impl` with each data shard running its own loops."""
  def shard(constants, input_ids, attention_mask, rng, skip_rows):
    rng = jax.random.fold_in(rng, jax.lax.axis_index(DATA))  # own sampling stream per shard
    return impl(plan, constants, input_ids, attention_mask, rng, skip_rows)

  def program(constants, input_ids, attention_mask, rng, skip_rows):
    spec = PartitionSpec(DATA)
    mapped = jax.shard_map(
        shard, mesh=where.mesh, axis_names=frozenset({DATA}), check_vma=False,
        in_specs=(_constants_spec(constants), spec, spec, PartitionSpec(), spec),
        out_specs=spec)
    return mapped(constants, input_ids, attention_mask, rng, skip_rows)
  del per_row  # part of the cache key only: the specs differ with the threshold's rank
  return jax.jit(program)


def decode_on_mesh(impl: Callable, plan: Any, constants: Any,
                   input_ids, attention_mask, rng, skip_rows, where: DecodeMesh) -> Any:
  """impl(plan, constants, input_ids, attention_mask, rng, skip_rows) over the mesh's data
  shards -> its output as host arrays [B, ...] on every process (padding rows cut). `plan`
  is static (hashable); `constants` are DecodeConstants, whose `context.params` must be
  placed by `place_params` and whose per-row threshold [B] is split with the rows, or any
  tree replicated over 'data' (parameters placed by `place_params`)."""
  rows = input_ids.shape[0]
  total = padded_batch(rows, where)
  skip = np.zeros(rows, bool) if skip_rows is None else np.asarray(skip_rows, bool)
  skip = np.concatenate([skip, np.ones(total - rows, bool)])
  if _per_row_threshold(constants):
    threshold = _pad_rows(np.asarray(constants.threshold), total)
    constants = constants.replace(threshold=_row_sharded(threshold, where))
  ids, mask = (_row_sharded(_pad_rows(np.asarray(a), total), where)
               for a in (input_ids, attention_mask))
  program = _sharded_program(impl, plan, where, _per_row_threshold(constants))
  out = program(constants, ids, mask, rng, _row_sharded(skip, where))
  gathered = multihost_utils.process_allgather(out, tiled=True)
  return jax.tree.map(lambda field: np.asarray(field)[:rows], gathered)
