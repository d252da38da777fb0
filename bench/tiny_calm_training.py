"""A few hundred steps of CALM-style training of a small byte-level T5, so benchmarks can
measure early exit on a model whose confidences mean something (an untrained model's early
outputs diverge from its full outputs at once).

Benchmark support only: a short in-memory Adam loop over calm_jax.training's anytime
objective (sum_i w_i NLL_i, w_i = i / sum_j j), without checkpoints or sharding.
"""

from typing import Any, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from calm_jax.data import byte_vocab
from calm_jax.model.config import T5Config
from calm_jax.training.objectives import AnytimeObjective, Batch, anytime_loss


def _anytime_loss(config: T5Config, params: Any, ids, mask, targets) -> jax.Array:
  """calm_jax.training's anytime loss (calm weights) on one batch; `mask` is implied by the
  padding of `ids`."""
  del mask
  loss, _ = anytime_loss(config, AnytimeObjective(), params, Batch(ids, targets))
  return loss


def train(config: T5Config, params: Any, inputs: Sequence[str], targets: Sequence[str], *,
          steps: int, batch_size: int = 64, learning_rate: float = 3e-3, input_len: int = 32,
          target_len: int = 16, seed: int = 0) -> Tuple[Any, float]:
  """Adam on the anytime loss over (inputs, targets) pairs; returns (params, last loss)."""
  ids, mask = (jnp.asarray(a) for a in byte_vocab.encode_batch(list(inputs), input_len))
  labels = jnp.asarray(byte_vocab.encode_batch(list(targets), target_len)[0])
  optimizer = optax.adam(learning_rate)
  opt_state = optimizer.init(params)

  @jax.jit
  def step(params, opt_state, rows):
    loss, grads = jax.value_and_grad(
        lambda p: _anytime_loss(config, p, ids[rows], mask[rows], labels[rows]))(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.default_rng(seed)
  loss = float("nan")
  for _ in range(steps):
    rows = rng.integers(0, len(ids), batch_size)
    params, opt_state, loss = step(params, opt_state, rows)
  return params, float(loss)
