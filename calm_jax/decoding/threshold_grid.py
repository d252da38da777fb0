"""Decoding a batch under a whole grid of thresholds, for calibration, without one full
pass per threshold.

`generate_grid` vmaps the decoder over K thresholds: exact, one compiled call, but every
(threshold, example) pair runs in one batch of K*B rows whose layer loop only stops when the
deepest row has exited, so the cost is about K full passes. This module gets the same
outputs for much less:

1. One never-exit pass records every token's confidence at every exit point (the trace).
2. A pair (lambda, example) whose trace never reaches lambda_t at an exit point before L
   cannot exit early anywhere: its decode *is* the never-exit decode (same states, same
   tokens, exit layer L everywhere), so it is copied, not decoded. This is exact: until a
   token exits early, the early-exit decoder computes exactly the full model's states.
   Pairs within `margin` of the threshold are decoded anyway, so float rounding between
   the two compiled programs cannot flip a decision.
3. The remaining pairs are sorted by threshold and packed into batches of the input's size,
   each row with its own threshold (`generate_with_thresholds`); rows with similar
   thresholds exit at similar layers, so each batch's layer loop stops early. Batch
   invariance makes each row equal to decoding that example alone.

Outputs equal `generate_grid`'s exactly (tested).
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Optional, Sequence

import numpy as np

from calm_jax.decoding.exit_rule import ExitConfig, is_exit_point, threshold_at
from calm_jax.decoding.generate import (check_threshold_grid, generate,
                                       generate_with_thresholds)
from calm_jax.decoding.inputs import prepare_inputs
from calm_jax.decoding.measures import get_measure
from calm_jax.model.config import T5Config


@dataclasses.dataclass(frozen=True)
class GridDecode:
  """A batch decoded under every threshold of a grid (NumPy arrays)."""

  thresholds: np.ndarray  # [K] float32, as given
  tokens: np.ndarray  # [K, B, T] int32
  exit_layers: np.ndarray  # [K, B, T] int32, 1..L per token, 0 after EOS
  confidences: np.ndarray  # [K, B, T] float32 confidence at the exit layer
  full_tokens: np.ndarray  # [B, T] int32, the never-exit (full model) decode
  full_exit_layers: np.ndarray  # [B, T] int32, L per generated token, 0 after EOS
  num_layers: int  # L
  decoded_pairs: int  # (threshold, example) pairs that needed their own decode

  @property
  def num_tokens(self) -> np.ndarray:
    """[K, B] generated tokens (up to and including EOS) per pair."""
    return (self.exit_layers > 0).sum(axis=-1)

  @property
  def layer_sums(self) -> np.ndarray:
    """[K, B] decoder layers run, summed over each pair's tokens."""
    return self.exit_layers.sum(axis=-1)


def early_exit_possible(trace: np.ndarray, thresholds: np.ndarray, exit_config: ExitConfig,
                        num_layers: int, max_decode_len: int, margin: float) -> np.ndarray:
  """[K, B] bool: pair (k, b) reaches lambda_k,t (less `margin`) at some exit point before
  layer L at some position of example b's never-exit decode. trace: [B, T, L], NaN where
  no confidence was computed (after EOS)."""
  layer_numbers = np.arange(1, num_layers + 1)
  early_point = (np.asarray(is_exit_point(layer_numbers, exit_config, num_layers))
                 & (layer_numbers < num_layers))  # [L]
  early = np.where(early_point, np.nan_to_num(trace, nan=-np.inf), -np.inf).max(-1)  # [B, T]
  positions = np.arange(max_decode_len)
  lambda_t = np.asarray(threshold_at(thresholds[:, None], exit_config.tau, positions[None],
                                     max_decode_len, exit_config.decay))  # [K, T]
  reaches = early[None] >= lambda_t[:, None, :] - margin  # [K, B, T]
  return reaches.any(-1) & (thresholds < 1.0)[:, None]


def decode_threshold_grid(config: T5Config, params: Any, input_ids, attention_mask=None, *,
                          thresholds: Sequence[float], exit: ExitConfig = ExitConfig(),  # pylint: disable=redefined-builtin
                          max_decode_len: int, batch_size: Optional[int] = None,
                          margin: float = 1e-4,
                          max_input_len: Optional[int] = None) -> GridDecode:
  """Greedy early-exit decoding of input ids [B, S] under each of K thresholds.

  batch_size: rows per packed decode call (default B); one compiled program serves all.
  """
  thresholds = check_threshold_grid(thresholds)
  if isinstance(margin, bool) or not isinstance(margin, numbers.Real) or not margin >= 0:
    raise ValueError(f"margin must be a number >= 0, got {margin!r}")
  if batch_size is not None and (isinstance(batch_size, bool)
                                 or not isinstance(batch_size, numbers.Integral)
                                 or batch_size < 1):
    raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
  input_ids, attention_mask = prepare_inputs(config, input_ids, attention_mask, max_input_len)
  batch = input_ids.shape[0]
  batch_size = batch if batch_size is None else int(batch_size)
  full = generate(config, params, input_ids, attention_mask,
                  exit=dataclasses.replace(exit, threshold=1.0), max_decode_len=max_decode_len,
                  return_trace=True)
  stack = lambda field: np.repeat(np.asarray(field)[None], thresholds.size, axis=0)
  tokens, exit_layers, confidences = stack(full.tokens), stack(full.exit_layers), stack(
      full.confidences)  # [K, B, T] each
  if not get_measure(exit.measure).thresholded:
    # The threshold plays no part: one decode serves every grid point.
    once = generate(config, params, input_ids, attention_mask, exit=exit,
                    max_decode_len=max_decode_len)
    return GridDecode(thresholds, stack(once.tokens), stack(once.exit_layers),
                      stack(once.confidences), np.asarray(full.tokens),
                      np.asarray(full.exit_layers), config.num_decoder_layers, batch)
  needed = early_exit_possible(np.asarray(full.trace), thresholds, exit,
                               config.num_decoder_layers, max_decode_len, margin)  # [K, B]
  pairs = np.argwhere(needed)  # [P, 2] (k, b)
  pairs = pairs[np.argsort(-thresholds[pairs[:, 0]], kind="stable")]
  for start in range(0, len(pairs), batch_size):
    chunk = pairs[start:start + batch_size]
    padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - len(chunk), axis=0)])
    out = generate_with_thresholds(
        config, params, input_ids[padded[:, 1]], attention_mask[padded[:, 1]],
        thresholds=thresholds[padded[:, 0]], exit=exit, max_decode_len=max_decode_len)
    k, b = chunk[:, 0], chunk[:, 1]
    tokens[k, b] = np.asarray(out.tokens)[:len(chunk)]
    exit_layers[k, b] = np.asarray(out.exit_layers)[:len(chunk)]
    confidences[k, b] = np.asarray(out.confidences)[:len(chunk)]
  return GridDecode(thresholds, tokens, exit_layers, confidences, np.asarray(full.tokens),
                    np.asarray(full.exit_layers), config.num_decoder_layers, len(pairs))
