"""A few hundred steps of CALM-style training of a small byte-level T5, so benchmarks can
measure early exit on a model whose confidences mean something (an untrained model's early
outputs diverge from its full outputs at once).

Benchmark support only: the training issue owns the real objective, optimizer schedules,
checkpoints and sharding. The loss here is CALM's anytime objective, sum_i w_i NLL_i over
every decoder layer through the shared exit head with w_i = i / sum_j j.
"""

from typing import Any, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from calm_jax.data import byte_vocab
from calm_jax.model.config import T5Config
from calm_jax.model.t5 import decode_teacher_forced, encode, exit_logits, shift_right


def _anytime_loss(config: T5Config, params: Any, ids, mask, targets) -> jax.Array:
  encoded = encode(config, params, ids, mask)
  states = decode_teacher_forced(config, params, shift_right(config, targets), encoded,
                                 mask)  # [L, B, T, d]
  logits = jax.vmap(lambda h: exit_logits(config, params, h))(states)  # [L, B, T, V]
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets[None])  # [L, B, T]
  weights = (targets != byte_vocab.PAD_ID).astype(jnp.float32)  # [B, T]
  per_layer = (nll * weights).sum((1, 2)) / weights.sum()  # [L]
  layer_weights = jnp.arange(1, config.num_decoder_layers + 1, dtype=jnp.float32)
  return (per_layer * layer_weights / layer_weights.sum()).sum()


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
