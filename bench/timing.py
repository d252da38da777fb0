"""What the speed benchmarks share: interleaved medians, the streaming bandwidth of this
machine, and the weight bytes a decoder reads per generated token."""

import time
from typing import Any, Callable, Dict, Mapping, Tuple

import jax
import jax.numpy as jnp

from calm_jax.utils import timing
from configs import default as default_config


def _demo_shape() -> Dict[str, Any]:
  """The T5Config values of configs/default.py's model (so the benchmarks follow it)."""
  model = default_config.get_config().model
  fields = ("vocab_size", "d_model", "d_kv", "d_ff", "num_heads", "num_layers",
            "num_decoder_layers", "feed_forward_proj", "tie_word_embeddings", "dropout_rate")
  return {name: model[name] for name in fields}


_T5_V11 = dict(vocab_size=32128, d_kv=64, feed_forward_proj="gated-gelu",
               tie_word_embeddings=False, scale_decoder_outputs=False, dropout_rate=0.0)
# T5Config values of the shapes the benchmarks run: the demo's model, the CALM paper's
# (8 + 8 layers at T5 v1.1-small widths), T5 v1.1-large, and 6 + 6 layers at v1.1-XL widths.
SHAPES = {
    "demo": _demo_shape(),
    "calm": dict(_T5_V11, d_model=512, num_heads=6, d_ff=1024, num_layers=8,
                 num_decoder_layers=8),
    "large": dict(_T5_V11, d_model=1024, num_heads=16, d_ff=2816, num_layers=24,
                  num_decoder_layers=24),
    "xl": dict(_T5_V11, d_model=2048, num_heads=32, d_ff=5120, num_layers=6,
               num_decoder_layers=6),
}


def interleaved(fns: Mapping[str, Callable[[], Any]], rounds: int,
                clock: str = "wall") -> Tuple[Dict[str, float], Dict[str, float]]:
  """(median seconds, first-call seconds) of each of `fns`, timed in interleaved rounds on
  `clock` ('wall' or 'cpu': calm_jax.utils.timing.CLOCKS)."""
  first = {}
  for name, fn in fns.items():
    start = time.perf_counter()
    jax.block_until_ready(fn())
    first[name] = time.perf_counter() - start
  return timing.medians(timing.interleaved(fns, rounds, warm=False, clock=clock)), first


def matvec_bandwidth(dtype=jnp.float32, rounds: int = 5) -> float:
  """Bytes per second a matrix-vector product over a 256 MiB (float32) matrix streams."""
  matrix = jax.random.normal(jax.random.PRNGKey(0), (8192, 8192), jnp.float32).astype(dtype)
  vector = jnp.ones((8192,), dtype)
  matvec = jax.jit(lambda m, v: m @ v)
  seconds, _ = interleaved({"matvec": lambda: matvec(matrix, vector)}, rounds)
  return matrix.size * matrix.dtype.itemsize / seconds["matvec"]


def matmul_flop_rate(rounds: int = 5) -> float:
  """FLOPs per second of a float32 matrix product whose operands stay in cache ([256, 512]
  x [512, 512], 1 MiB of weights): the arithmetic ceiling of this machine's cores."""
  a = jax.random.normal(jax.random.PRNGKey(1), (256, 512), jnp.float32)
  b = jax.random.normal(jax.random.PRNGKey(2), (512, 512), jnp.float32)
  repeat = 64
  chain = jax.jit(lambda a, b: jax.lax.fori_loop(0, repeat, lambda _, x: jnp.tanh(x @ b), a))
  seconds, _ = interleaved({"matmul": lambda: chain(a, b)}, rounds)
  return repeat * 2 * 256 * 512 * 512 / seconds["matmul"]


def weight_bytes_per_token(params) -> int:
  """Decoder layer weights read per token (cross-attention K/V projections excluded: they
  run once per input) plus the LM head, for stacked params."""
  layers = params["decoder"]["layers"]
  total = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(layers))
  cross_kv = sum(layers["cross_attn"][p]["kernel"].size * layers["cross_attn"][p]["kernel"]
                 .dtype.itemsize for p in ("k", "v"))
  head = params["lm_head"]["kernel"] if "lm_head" in params else params["shared"]["embedding"]
  return total - cross_kv + head.size * head.dtype.itemsize
