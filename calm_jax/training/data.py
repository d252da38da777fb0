"""Training batches in a fixed order that depends only on (seed, step), so a run resumed from
a checkpoint sees exactly the batches an uninterrupted run would, and every host agrees on
the global batch and takes its own contiguous share of its rows."""

from __future__ import annotations

import dataclasses
from typing import Sequence, Tuple

import jax
import numpy as np

from calm_jax.training.objectives import Batch


@dataclasses.dataclass(frozen=True)
class EncodedExamples:
  """A training set as padded id arrays."""

  inputs: np.ndarray  # [N, S] int32, padding 0
  targets: np.ndarray  # [N, T] int32 ending in EOS, padding 0

  def __post_init__(self):
    if len(self.inputs) != len(self.targets) or len(self.inputs) == 0:
      raise ValueError(f"need the same non-zero number of inputs and targets; got "
                       f"{len(self.inputs)} and {len(self.targets)}")


def global_rows(step: int, num_examples: int, batch_size: int, seed: int) -> np.ndarray:
  """Example indices [batch_size] of the global batch at `step` (0-based): consecutive
  slices of a stream of epoch-wise permutations, each seeded by (seed, epoch)."""
  start = step * batch_size
  rows = []
  while len(rows) < batch_size:
    epoch, offset = divmod(start + len(rows), num_examples)
    order = np.random.default_rng((seed, epoch)).permutation(num_examples)
    rows.extend(order[offset:offset + batch_size - len(rows)].tolist())
  return np.asarray(rows, np.int64)


def process_share(rows: np.ndarray, process_index: int, process_count: int) -> np.ndarray:
  """This host's contiguous part of the global batch rows."""
  if len(rows) % process_count:
    raise ValueError(f"the global batch of {len(rows)} rows does not split over "
                     f"{process_count} processes")
  per_host = len(rows) // process_count
  return rows[process_index * per_host:(process_index + 1) * per_host]


def host_batch(data: EncodedExamples, step: int, batch_size: int, seed: int) -> Tuple[np.ndarray, np.ndarray]:
  """This process's (inputs, targets) rows of the global batch at `step`."""
  rows = process_share(global_rows(step, len(data.inputs), batch_size, seed),
                       jax.process_index(), jax.process_count())
  return data.inputs[rows], data.targets[rows]


def device_batch(local: Sequence[np.ndarray], sharding: jax.sharding.Sharding) -> Batch:
  """Global arrays, rows split as `sharding` says, from each process's local rows."""
  inputs, targets = (jax.make_array_from_process_local_data(sharding, a) for a in local)
  return Batch(inputs=inputs, targets=targets)
