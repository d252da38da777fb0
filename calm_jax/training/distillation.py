"""FREE's layer-wise distillation: which shallow layer learns from which deep layer, and the
mean squared error between their states.

With a shallow exit at layer s of L decoder layers, the shallow module is layers 1..s and
the deep module layers s+1..L. A mapping pairs them (1-based layers):

  'last'     (s, L): the shallow exit state learns the final state
  'uniform'  (i, s + ceil(i * (L - s) / s)) for i = 1..s: shallow layers spread evenly
             over the deep ones
  'uniform_published'  (i, PUBLISHED_UNIFORM[(L, s)][i - 1]) for i = 1..s: the fixed lists
             of FREE's released training code, which spread the shallow layers over all L
             layers (mostly i * L / s), for the (L, s) it lists only; a deep side layer may
             then lie inside the shallow module (L 24, s 12: layer i learns layer 2i)
  'dynamic'  every deep layer j = s+1..L paired with a shallow layer a_j, a_{s+1} <= ... <=
             a_L (monotone), the assignment of least total MSE on this batch (a small
             dynamic programme; recomputed per batch, no gradient through the choice)

The deep side of each pair is a teacher: its states sit behind stop_gradient.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jnp.ndarray
KD_MAPPINGS = ("last", "uniform", "uniform_published", "dynamic")
# (L, s) -> the teacher layer (1-based) of shallow layers 1..s in FREE's released code
# (util/losses.py, TEACHER_LAYERS, there 0-based indices into the L decoder layer outputs).
PUBLISHED_UNIFORM = {
    (24, 12): (2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24),
    (24, 10): (3, 6, 8, 11, 13, 16, 18, 20, 22, 24),
    (24, 8): (3, 6, 9, 12, 15, 18, 21, 24),
    (24, 6): (4, 8, 12, 16, 20, 24),
    (24, 4): (6, 12, 18, 24),
    (12, 3): (4, 8, 12),
}


def check_mapping(mapping: str, shallow: Optional[int] = None,
                  num_layers: Optional[int] = None) -> None:
  """ValueError for an unknown mapping, or (once s and L are known) a published list that
  does not exist for them."""
  if mapping not in KD_MAPPINGS:
    raise ValueError(f"kd_mapping={mapping!r}; allowed: {', '.join(KD_MAPPINGS)}")
  if (mapping == "uniform_published" and num_layers is not None
      and (num_layers, shallow) not in PUBLISHED_UNIFORM):
    listed = ", ".join(f"(L {l}, s {s})" for l, s in PUBLISHED_UNIFORM)
    raise ValueError(f"kd_mapping='uniform_published' has no list for {num_layers} decoder "
                     f"layers with shallow exit {shallow}; published for {listed}; use "
                     "'uniform' (the formula) otherwise")


def fixed_pairs(mapping: str, shallow: int, num_layers: int) -> Tuple[Tuple[int, int], ...]:
  """The (shallow layer, deep layer) pairs of 'last', 'uniform' or 'uniform_published',
  1-based."""
  if mapping == "last":
    return ((shallow, num_layers),)
  if mapping == "uniform_published":
    check_mapping(mapping, shallow, num_layers)
    return tuple(enumerate(PUBLISHED_UNIFORM[(num_layers, shallow)], start=1))
  deep = num_layers - shallow
  return tuple((i, shallow + math.ceil(i * deep / shallow)) for i in range(1, shallow + 1))


def masked_mse(student: Array, teacher: Array, token_mask: Array) -> Array:
  """Mean squared error over masked tokens and width: student and teacher [..., B, T, d]
  (broadcasting), token_mask [B, T] -> [...]."""
  per_token = jnp.mean(jnp.square((student - teacher).astype(jnp.float32)), axis=-1)
  tokens = jnp.maximum(jnp.sum(token_mask), 1.0)
  return jnp.sum(per_token * token_mask, axis=(-2, -1)) / tokens  # [...]


def monotone_assignment(costs: Array) -> Array:
  """costs [S, D] (shallow i, deep j) -> [D] int32 shallow index per deep layer, non-
  decreasing in j, of least total cost (ties: the lowest index)."""
  num_shallow, num_deep = costs.shape
  best = costs[:, 0]  # [S] least cost of deep layers 0..j with deep j on shallow i
  choices = []
  for j in range(1, num_deep):
    running_min = jax.lax.cummin(best)  # [S] best over shallow <= i
    from_index = _cumulative_argmin(best)  # [S]
    choices.append(from_index)
    best = running_min + costs[:, j]
  last = jnp.argmin(best)
  path = [last]
  for from_index in reversed(choices):
    path.append(from_index[path[-1]])
  return jnp.stack(path[::-1]).astype(jnp.int32)


def _cumulative_argmin(values: Array) -> Array:
  """[S] -> [S] index of the smallest of values[:i + 1] (lowest on ties)."""
  size = values.shape[0]
  lower = jnp.arange(size)[None, :] <= jnp.arange(size)[:, None]  # [S, S]
  return jnp.argmin(jnp.where(lower, values[None, :], jnp.inf), axis=1)


def distillation_loss(states: Array, token_mask: Array, shallow: int, mapping: str,
                      kd_map: Optional[Array] = None) -> Array:
  """KD over decoder states [L, B, T, d] (token_mask [B, T]): the mean over the mapping's
  pairs of the MSE between the shallow state (through `kd_map` [d, d] when given) and the
  deep state behind stop_gradient."""
  num_layers = states.shape[0]
  student = states[:shallow]  # [s, B, T, d]
  if kd_map is not None:
    student = jnp.einsum("sbtd,de->sbte", student, kd_map.astype(student.dtype))
  teacher = jax.lax.stop_gradient(states)  # [L, B, T, d]
  if mapping == "dynamic":
    costs = masked_mse(student[:, None], teacher[None, shallow:], token_mask)  # [s, L - s]
    chosen = monotone_assignment(jax.lax.stop_gradient(costs))  # [L - s]
    return jnp.mean(costs[chosen, jnp.arange(num_layers - shallow)])
  pairs = np.asarray(fixed_pairs(mapping, shallow, num_layers)) - 1  # [P, 2] 0-based
  return jnp.mean(masked_mse(student[pairs[:, 0]], teacher[pairs[:, 1]],
                             token_mask))  # [P] -> []
