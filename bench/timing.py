"""What the speed benchmarks share: interleaved medians, the streaming bandwidth of this
machine, and the weight bytes a decoder reads per generated token."""

import time
from typing import Any, Callable, Dict, Mapping, Tuple

import jax
import jax.numpy as jnp

from calm_jax.utils import timing


def interleaved(fns: Mapping[str, Callable[[], Any]],
                rounds: int) -> Tuple[Dict[str, float], Dict[str, float]]:
  """(median seconds, first-call seconds) of each of `fns`, timed in interleaved rounds."""
  first = {}
  for name, fn in fns.items():
    start = time.perf_counter()
    jax.block_until_ready(fn())
    first[name] = time.perf_counter() - start
  return timing.medians(timing.interleaved(fns, rounds, warm=False)), first


def matvec_bandwidth(dtype=jnp.float32, rounds: int = 5) -> float:
  """Bytes per second a matrix-vector product over a 256 MiB (float32) matrix streams."""
  matrix = jax.random.normal(jax.random.PRNGKey(0), (8192, 8192), jnp.float32).astype(dtype)
  vector = jnp.ones((8192,), dtype)
  matvec = jax.jit(lambda m, v: m @ v)
  seconds, _ = interleaved({"matvec": lambda: matvec(matrix, vector)}, rounds)
  return matrix.size * matrix.dtype.itemsize / seconds["matvec"]


def weight_bytes_per_token(params) -> int:
  """Decoder layer weights read per token (cross-attention K/V projections excluded: they
  run once per input) plus the LM head, for stacked params."""
  layers = params["decoder"]["layers"]
  total = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(layers))
  cross_kv = sum(layers["cross_attn"][p]["kernel"].size * layers["cross_attn"][p]["kernel"]
                 .dtype.itemsize for p in ("k", "v"))
  head = params["lm_head"]["kernel"] if "lm_head" in params else params["shared"]["embedding"]
  return total - cross_kv + head.size * head.dtype.itemsize
