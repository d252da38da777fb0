"""Training batches (calm_jax.training.data): a fixed order that depends only on seed and
step, covering each epoch."""

import jax
import numpy as np

from calm_jax.training.data import device_batch, global_rows


def test_batches_depend_only_on_seed_and_step_and_cover_each_epoch(tiny_data):
  first_epoch = np.concatenate([global_rows(s, 10, 5, seed=3) for s in range(2)])
  assert sorted(first_epoch.tolist()) == list(range(10))
  np.testing.assert_array_equal(global_rows(7, 10, 4, seed=3), global_rows(7, 10, 4, seed=3))
  # A batch straddling two epochs takes the end of one permutation and the start of the next.
  straddling = global_rows(2, 10, 4, seed=3)  # stream positions 8..11
  np.testing.assert_array_equal(straddling[:2], first_epoch[8:])
  data = tiny_data(10)
  batch = device_batch(data, 2, 4, 3, jax.sharding.SingleDeviceSharding(jax.devices()[0]))
  np.testing.assert_array_equal(batch.inputs, data.inputs[straddling])
  np.testing.assert_array_equal(batch.targets, data.targets[straddling])
