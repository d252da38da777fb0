"""Training batches in a fixed order that depends only on (seed, step), so a run resumed from
a checkpoint sees exactly the batches an uninterrupted run would, and every host agrees on
the global batch and materialises only the rows its own devices hold."""

from __future__ import annotations

import dataclasses

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


def device_batch(data: EncodedExamples, step: int, batch_size: int, seed: int,
                 sharding: jax.sharding.Sharding) -> Batch:
  """The global batch of `step` as arrays split as `sharding` says. Every process computes
  the same global row indices and fills only the slices its own devices hold, so any mesh
  layout over any number of hosts gets consistent rows."""
  rows = global_rows(step, len(data.inputs), batch_size, seed)  # [B]

  def place(table: np.ndarray) -> jax.Array:
    shape = (batch_size,) + table.shape[1:]
    return jax.make_array_from_callback(
        shape, sharding, lambda index: table[rows[index[0]]][(slice(None),) + tuple(index[1:])])

  return Batch(inputs=place(data.inputs), targets=place(data.targets))
