"""Checks and preparation of decoder inputs, shared by every decoding entry point.

Everything here runs on the host before anything is compiled.
"""

from __future__ import annotations

import numbers
import warnings
from typing import Optional

import jax.numpy as jnp
import numpy as np

from calm_jax.model.config import T5Config


def is_integer(value) -> bool:
  """A Python or NumPy integer, not a bool."""
  return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def check_max_decode_len(max_decode_len) -> None:
  if not is_integer(max_decode_len) or max_decode_len < 1:
    raise ValueError(f"max_decode_len must be a positive integer, got {max_decode_len!r}")


def check_mask_values(mask: np.ndarray) -> None:
  """An attention mask holds 1 (keep) and 0 (padding) only, of any numeric or bool dtype;
  anything else (2, 0.5) is refused rather than cast."""
  if mask.dtype == bool:
    return
  if not (np.issubdtype(mask.dtype, np.integer) or np.issubdtype(mask.dtype, np.floating)):
    raise ValueError(f"attention_mask must hold 0 and 1, got dtype {mask.dtype}")
  bad = np.flatnonzero((mask != 0) & (mask != 1))
  if bad.size:
    position = np.unravel_index(bad[0], mask.shape)
    raise ValueError(f"attention_mask must hold only 0 (padding) and 1 (token); "
                     f"attention_mask[{', '.join(map(str, position))}] = "
                     f"{mask[position].item()!r}")


def prepare_inputs(config: T5Config, input_ids, attention_mask, max_input_len: Optional[int]):
  """Checks shapes and ids; truncates inputs longer than `max_input_len` with a warning.

  Truncation keeps the first `max_input_len` tokens of every example (the end is cut, as
  T5's preprocessing does); an EOS cut off is not re-added.
  """
  input_ids = np.asarray(input_ids)
  if input_ids.ndim != 2 or input_ids.shape[0] < 1 or input_ids.shape[1] < 1:
    raise ValueError(f"input_ids must have shape [batch, length] with both >= 1, got "
                     f"{input_ids.shape}")
  if not np.issubdtype(input_ids.dtype, np.integer):
    raise ValueError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
  if input_ids.min() < 0 or input_ids.max() >= config.vocab_size:
    raise ValueError(f"input_ids must lie in [0, {config.vocab_size}), got values in "
                     f"[{input_ids.min()}, {input_ids.max()}]")
  mask = (np.ones_like(input_ids) if attention_mask is None else np.asarray(attention_mask))
  if mask.shape != input_ids.shape:
    raise ValueError(f"attention_mask shape {mask.shape} differs from input_ids shape "
                     f"{input_ids.shape}")
  check_mask_values(mask)
  if max_input_len is not None:
    if not is_integer(max_input_len) or max_input_len < 1:
      raise ValueError(f"max_input_len must be >= 1, got {max_input_len}")
    if input_ids.shape[1] > max_input_len:
      longest = int(mask.sum(axis=1).max())
      if longest > max_input_len:
        warnings.warn(f"inputs of up to {longest} tokens truncated to max_input_len="
                      f"{max_input_len} (the first tokens are kept)", stacklevel=3)
      input_ids, mask = input_ids[:, :max_input_len], mask[:, :max_input_len]
  return jnp.asarray(input_ids, jnp.int32), jnp.asarray(mask, jnp.int32)
