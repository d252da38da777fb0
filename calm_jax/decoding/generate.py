"""Public entry points of the early-exit decoder: `generate` and `generate_grid`.

Arguments are checked before anything is compiled. The threshold and tau are traced
arguments: a new value never recompiles, and `generate_grid` vmaps one compiled call over a
grid of thresholds.
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from calm_jax.decoding.early_exit import GenerateOutput, generate_impl
from calm_jax.decoding.exit_rule import ExitConfig
from calm_jax.decoding.inputs import check_max_decode_len, prepare_inputs
from calm_jax.decoding.sampling import SamplingConfig
from calm_jax.model.config import T5Config

STATIC = ("config", "exit_config", "sampling", "max_decode_len", "return_trace")

_generate_jit = jax.jit(generate_impl, static_argnames=STATIC)


@functools.partial(jax.jit, static_argnames=STATIC)
def _generate_grid_jit(config, exit_config, sampling, max_decode_len, return_trace, params,
                       input_ids, attention_mask, thresholds, tau, rng):
  one = lambda threshold: generate_impl(config, exit_config, sampling, max_decode_len,
                                        return_trace, params, input_ids, attention_mask,
                                        threshold, tau, rng)
  return jax.vmap(one)(thresholds)


def _check(config: T5Config, exit_config: ExitConfig, sampling: SamplingConfig,
           max_decode_len: int, rng) -> None:
  check_max_decode_len(max_decode_len)
  exit_config.validate(config.num_decoder_layers)
  sampling.validate(config.vocab_size)
  if not sampling.greedy and rng is None:
    raise ValueError("sampling (temperature > 0) needs an explicit rng key")


def generate(config: T5Config, params: Any, input_ids, attention_mask=None, *,
             exit: ExitConfig = ExitConfig(),  # pylint: disable=redefined-builtin
             max_decode_len: int, sampling: SamplingConfig = SamplingConfig(),
             rng: Optional[jax.Array] = None, return_trace: bool = False,
             max_input_len: Optional[int] = None) -> GenerateOutput:
  """Early-exit decoding of input ids [B, S] (attention_mask: 1 keep, 0 pad).

  Returns tokens, exit layers and exit confidences, each [B, max_decode_len], and with
  `return_trace` the per-layer confidences [B, max_decode_len, L].
  """
  _check(config, exit, sampling, max_decode_len, rng)
  input_ids, attention_mask = prepare_inputs(config, input_ids, attention_mask, max_input_len)
  return _generate_jit(config, exit.compiled_part(), sampling, max_decode_len, return_trace,
                       params, input_ids, attention_mask, jnp.float32(exit.threshold),
                       jnp.float32(exit.tau), rng if rng is not None else jax.random.PRNGKey(0))


def generate_grid(config: T5Config, params: Any, input_ids, attention_mask=None, *,
                  thresholds: Sequence[float], exit: ExitConfig = ExitConfig(),  # pylint: disable=redefined-builtin
                  max_decode_len: int, sampling: SamplingConfig = SamplingConfig(),
                  rng: Optional[jax.Array] = None, return_trace: bool = False,
                  max_input_len: Optional[int] = None) -> GenerateOutput:
  """`generate` under K thresholds in one compiled call: every field gets a leading [K]."""
  thresholds = np.asarray(thresholds, np.float32)
  if thresholds.ndim != 1 or thresholds.size < 1 or (thresholds < 0).any() or not np.isfinite(thresholds).all():
    raise ValueError(f"thresholds must be a non-empty 1-D list of finite values >= 0, got "
                     f"{thresholds.tolist()}")
  _check(config, exit, sampling, max_decode_len, rng)
  input_ids, attention_mask = prepare_inputs(config, input_ids, attention_mask, max_input_len)
  return _generate_grid_jit(config, exit.compiled_part(), sampling, max_decode_len,
                            return_trace, params, input_ids, attention_mask,
                            jnp.asarray(thresholds), jnp.float32(exit.tau),
                            rng if rng is not None else jax.random.PRNGKey(0))
