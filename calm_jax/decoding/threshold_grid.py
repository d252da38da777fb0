"""Decoding a batch under a whole grid of thresholds, for calibration, without one full
pass per threshold.

`generate_grid` vmaps the decoder over K thresholds: exact, one compiled call, but every
(threshold, example) pair runs in one batch of K*B rows whose layer loop only stops when the
deepest row has exited, so the cost is K full passes or more. This module gets the same
outputs for much less, from one fact: until a token's exit decision differs, two decodes of
the same example compute exactly the same states.

1. One never-exit pass (lambda = 1) records every token's confidence at every layer (the
   trace). It is each example's first reference.
2. Walking the grid from the largest threshold down, a pair (lambda, example) whose
   reference trace shows the same decision at every token (no exit point before the
   reference's exit layer reaches lambda_t, and every early exit of the reference still
   clears lambda_t) *is* the reference decode, so it is copied. A `margin` around lambda_t
   sends near ties to a real decode, so rounding between compiled programs cannot flip a
   decision.
3. The other pairs are decoded in waves led by one pair per example, with one threshold
   per row (`generate_with_thresholds`, exact by batch invariance); the room left in a
   wave's padded size is filled with those examples' next thresholds, decoded directly
   rather than in later tiny waves. Each example's last decode becomes its reference for
   the smaller thresholds. On a trained model most neighbouring thresholds share their
   decisions, so few pairs are decoded at all.

Outputs equal `generate_grid`'s exactly (tested). Synchronized decoding (FREE) has no
trace: there every pair is decoded, packed with one threshold per row.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np

from calm_jax.decoding.exit_rule import ExitConfig, is_exit_point, threshold_at
from calm_jax.decoding.generate import (check_threshold_grid, generate,
                                       generate_with_thresholds)
from calm_jax.decoding.inputs import prepare_inputs
from calm_jax.decoding.measures import build_measure
from calm_jax.decoding.plan import row_buckets
from calm_jax.decoding.sharded import DecodeMesh
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
  decoded_pairs: int  # (threshold, example) pairs decoded rather than copied

  @property
  def num_tokens(self) -> np.ndarray:
    """[K, B] generated tokens (up to and including EOS) per pair."""
    return (self.exit_layers > 0).sum(axis=-1)

  @property
  def layer_sums(self) -> np.ndarray:
    """[K, B] decoder layers run, summed over each pair's tokens."""
    return self.exit_layers.sum(axis=-1)

  def generated_ids(self):
    """The generated token ids (up to and including EOS) as lists: early [K][B] and full
    [B], the layout `consistency` takes."""
    cut = lambda tokens, layers: [row[kept > 0].tolist() for row, kept in zip(tokens, layers)]
    return ([cut(t, l) for t, l in zip(self.tokens, self.exit_layers)],
            cut(self.full_tokens, self.full_exit_layers))

  def to_arrays(self) -> Dict[str, np.ndarray]:
    """Every field as a NumPy array (for np.savez); `from_arrays` reads them back."""
    return {field.name: np.asarray(getattr(self, field.name))
            for field in dataclasses.fields(self)}

  @classmethod
  def from_arrays(cls, arrays: Dict[str, np.ndarray]) -> "GridDecode":
    counts = {"num_layers": int(arrays["num_layers"]),
              "decoded_pairs": int(arrays["decoded_pairs"])}
    return cls(**{**arrays, **counts})

  @classmethod
  def concatenate(cls, parts: Sequence["GridDecode"]) -> "GridDecode":
    """The grid decode of the parts' examples one after another (same thresholds)."""
    first = parts[0]
    join = lambda name, axis: np.concatenate([getattr(p, name) for p in parts], axis=axis)
    return cls(first.thresholds, join("tokens", 1), join("exit_layers", 1),
               join("confidences", 1), join("full_tokens", 0), join("full_exit_layers", 0),
               first.num_layers, sum(p.decoded_pairs for p in parts))


@dataclasses.dataclass(frozen=True)
class _GridJob:
  """What every decode of one grid shares: the model, the inputs (host arrays) and the
  decode settings."""

  config: T5Config
  params: Any
  input_ids: np.ndarray  # [B, S] int32
  attention_mask: np.ndarray  # [B, S] int32
  exit_config: ExitConfig
  max_decode_len: int
  batch_size: int  # most rows per decode call
  margin: float  # near ties around lambda_t that are decoded rather than copied
  classifier_params: Any
  mesh: Optional[DecodeMesh]  # every decode call's rows split over its data shards

  def decode_rows(self, rows: np.ndarray, thresholds: np.ndarray):
    """generate_with_thresholds on examples `rows` [R] at `thresholds` [R], padded to the
    smallest of row_buckets(batch_size) that holds them with skipped rows (which cost
    nothing and never hold the loops)."""
    size = min(b for b in row_buckets(self.batch_size) if b >= rows.size)
    extra = size - rows.size
    padded = np.concatenate([rows, np.repeat(rows[-1:], extra)])
    return generate_with_thresholds(
        self.config, self.params, self.input_ids[padded], self.attention_mask[padded],
        thresholds=np.concatenate([thresholds, np.ones(extra, thresholds.dtype)]),
        exit=self.exit_config, max_decode_len=self.max_decode_len,
        return_trace=self.exit_config.decoding != "synchronized",
        skip_rows=np.arange(size) >= rows.size, classifier_params=self.classifier_params,
        mesh=self.mesh)


@dataclasses.dataclass
class _Reference:
  """Per example, the most recent decode along the grid (largest threshold first) whose
  trajectory later thresholds may share."""

  tokens: np.ndarray  # [B, T] int32
  exit_layers: np.ndarray  # [B, T] int32
  confidences: np.ndarray  # [B, T] float32
  trace: np.ndarray  # [B, T, L] float32, NaN where not computed

  def update(self, examples: np.ndarray, decoded: Any, out_rows: np.ndarray) -> None:
    """Makes rows `out_rows` of a decode the new references of `examples` (both [E])."""
    self.tokens[examples] = np.asarray(decoded.tokens)[out_rows]
    self.exit_layers[examples] = np.asarray(decoded.exit_layers)[out_rows]
    self.confidences[examples] = np.asarray(decoded.confidences)[out_rows]
    self.trace[examples] = np.asarray(decoded.trace)[out_rows]


def same_decisions(trace: np.ndarray, exit_layers: np.ndarray, lambda_t: np.ndarray,
                   exit_config: ExitConfig, num_layers: int, margin: float) -> np.ndarray:
  """[...] bool: decoding with thresholds lambda_t [..., T] (< 1) would exit every token
  where the reference decode (trace [..., T, L], exit_layers [..., T]; leading axes
  broadcast) did, so it would produce the reference's tokens, exit layers and confidences.

  That holds when no exit point before a token's exit layer reaches lambda_t - margin, and
  every early exit of the reference still clears lambda_t + margin (the margin absorbs
  rounding differences between compiled programs).
  """
  layer_numbers = np.arange(1, num_layers + 1)  # [L]
  early_point = (np.asarray(is_exit_point(layer_numbers, exit_config, num_layers))
                 & (layer_numbers < num_layers))  # [L]
  confidence = np.nan_to_num(trace, nan=-np.inf)  # [..., T, L]
  before_exit = early_point & (layer_numbers < exit_layers[..., None])  # [..., T, L]
  best_before_exit = np.where(before_exit, confidence, -np.inf).max(axis=-1)  # [..., T]
  leaves_earlier = (best_before_exit >= lambda_t - margin).any(axis=-1)  # [...]
  at_exit = np.take_along_axis(confidence, np.maximum(exit_layers, 1)[..., None] - 1,
                               axis=-1)[..., 0]  # [..., T]
  early_exit = (exit_layers > 0) & (exit_layers < num_layers)  # [..., T]
  exit_shaky = (early_exit & (at_exit < lambda_t + margin)).any(axis=-1)  # [...]
  return ~leaves_earlier & ~exit_shaky


def _check_arguments(margin, batch_size) -> None:
  if isinstance(margin, bool) or not isinstance(margin, numbers.Real) or not margin >= 0:
    raise ValueError(f"margin must be a number >= 0, got {margin!r}")
  if batch_size is not None and (isinstance(batch_size, bool)
                                 or not isinstance(batch_size, numbers.Integral)
                                 or batch_size < 1):
    raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


def decode_threshold_grid(config: T5Config, params: Any, input_ids, attention_mask=None, *,
                          thresholds: Sequence[float], exit: ExitConfig = ExitConfig(),  # pylint: disable=redefined-builtin
                          max_decode_len: int, batch_size: Optional[int] = None,
                          margin: float = 1e-4,
                          max_input_len: Optional[int] = None,
                          classifier_params: Any = None,
                          progress: Optional[Callable[[int, int], None]] = None,
                          mesh: Optional[DecodeMesh] = None) -> GridDecode:
  """Greedy early-exit decoding of input ids [B, S] under each of K thresholds.

  batch_size: most rows per decode call (default B). Calls are padded to one of
  `row_buckets(batch_size)` rows, so at most four programs are compiled.
  classifier_params: a learned measure's parameters, as for `generate`.
  progress: called as progress(pairs filled, pairs decoded) after every decode call; the
  grid holds K * B (threshold, example) pairs.
  mesh: every decode call (the reference pass and each wave) split over the mesh's data
  shards, each running its own loops (sharded.py); without it, one device.
  """
  thresholds = check_threshold_grid(thresholds)
  _check_arguments(margin, batch_size)
  # Host copies: each wave gathers its rows on the host (a device gather per call costs more).
  input_ids, attention_mask = (np.asarray(a) for a in prepare_inputs(
      config, input_ids, attention_mask, max_input_len))
  batch = input_ids.shape[0]
  job = _GridJob(config, params, input_ids, attention_mask, exit, max_decode_len,
                 batch if batch_size is None else int(batch_size), margin, classifier_params,
                 mesh)
  if exit.decoding == "synchronized":
    return _decode_every_pair(job, thresholds, progress or (lambda filled, decoded: None))
  decode = functools.partial(generate, config, params, max_decode_len=max_decode_len,
                             return_trace=True, classifier_params=classifier_params,
                             mesh=mesh)
  full = decode(input_ids, attention_mask, exit=dataclasses.replace(exit, threshold=1.0))
  stack = lambda field: np.repeat(np.asarray(field)[None], thresholds.size, axis=0)
  full_tokens, full_exit_layers = np.asarray(full.tokens), np.asarray(full.exit_layers)
  if not build_measure(exit).needs.thresholded:
    # The threshold plays no part: one decode serves every grid point.
    once = decode(input_ids, attention_mask, exit=exit)
    return GridDecode(thresholds, stack(once.tokens), stack(once.exit_layers),
                      stack(once.confidences), full_tokens, full_exit_layers,
                      config.num_decoder_layers, batch)
  grid = GridDecode(thresholds, stack(full.tokens), stack(full.exit_layers),
                    stack(full.confidences), full_tokens, full_exit_layers,
                    config.num_decoder_layers, 0)
  reference = _Reference(*(np.array(a) for a in (full.tokens, full.exit_layers,
                                                 full.confidences, full.trace)))
  decoded = _walk_grid(job, grid, reference, progress or (lambda filled, decoded: None))
  return dataclasses.replace(grid, decoded_pairs=decoded)


def _decode_every_pair(job: _GridJob, thresholds: np.ndarray,
                       progress: Callable[[int, int], None]) -> GridDecode:
  """The grid of synchronized decoding (FREE): it has no per-layer trace to prove two
  thresholds' decodes equal, so every (threshold, example) pair is decoded, packed
  batch_size pairs a call with one threshold per row (exact by batch invariance); the
  full model's output is the pairs' decode at lambda = 1, decoded the same way."""
  batch, size = job.input_ids.shape[0], thresholds.size
  with_full = np.concatenate([thresholds, np.ones(1, thresholds.dtype)])  # [K + 1]
  ks, rows = (a.ravel() for a in np.meshgrid(np.arange(size + 1), np.arange(batch),
                                             indexing="ij"))  # [(K + 1) * B] pairs
  shape = (size + 1, batch, job.max_decode_len)
  tokens, exit_layers = np.zeros(shape, np.int32), np.zeros(shape, np.int32)
  confidences = np.zeros(shape, np.float32)
  for start in range(0, ks.size, job.batch_size):
    part = slice(start, start + job.batch_size)
    out = job.decode_rows(rows[part], with_full[ks[part]])
    count = ks[part].size
    tokens[ks[part], rows[part]] = np.asarray(out.tokens)[:count]
    exit_layers[ks[part], rows[part]] = np.asarray(out.exit_layers)[:count]
    confidences[ks[part], rows[part]] = np.asarray(out.confidences)[:count]
    progress(min(start + count, size * batch), start + count)
  return GridDecode(thresholds, tokens[:size], exit_layers[:size], confidences[:size],
                    tokens[size], exit_layers[size], job.config.num_decoder_layers,
                    ks.size)


def _walk_grid(job: _GridJob, grid: GridDecode, reference: _Reference,
               progress: Callable[[int, int], None]) -> int:
  """Fills grid[k, b] for every pair, largest threshold first per example: copied from the
  example's reference when the decisions provably agree, else decoded (in waves led by one
  pair per example) and made the new reference. Returns the pairs decoded."""
  thresholds = grid.thresholds
  exit_config, max_decode_len, batch_size = job.exit_config, job.max_decode_len, job.batch_size
  order = np.argsort(-thresholds, kind="stable")  # grid indices, largest first
  lambda_t = np.asarray(threshold_at(
      thresholds[:, None], exit_config.tau, np.arange(max_decode_len)[None], max_decode_len,
      exit_config.decay))  # [K, T]
  cursor = np.zeros(job.input_ids.shape[0], np.int64)  # per example: next entry of `order`
  decoded = 0
  while True:
    waiting = _advance_copies(job, grid, reference, order, lambda_t,
                              cursor)  # [W] examples whose next pair must decode
    progress(int(cursor.sum()), decoded)
    if waiting.size == 0:
      return decoded
    for start in range(0, waiting.size, batch_size):
      rows, steps = _plan_wave(waiting[start:start + batch_size], cursor, order.size,
                               batch_size)
      ks = order[cursor[rows] + steps]
      out = job.decode_rows(rows, thresholds[ks])
      grid.tokens[ks, rows] = np.asarray(out.tokens)[:rows.size]
      grid.exit_layers[ks, rows] = np.asarray(out.exit_layers)[:rows.size]
      grid.confidences[ks, rows] = np.asarray(out.confidences)[:rows.size]
      # Each example's last (smallest-threshold) decode becomes its reference.
      examples, last_from_end = np.unique(rows[::-1], return_index=True)
      last = rows.size - 1 - last_from_end
      reference.update(examples, out, last)
      cursor[examples] += steps[last] + 1
      decoded += rows.size
      progress(int(cursor.sum()), decoded)


def _plan_wave(waiting: np.ndarray, cursor: np.ndarray, grid_size: int,
               batch_size: int):
  """The rows of one decode call: each waiting example's next pair, then, while the call's
  padded size has room, the pairs after it (consecutive thresholds, round robin over the
  examples). Extra pairs are decoded directly (exact) instead of in later tiny waves.
  Returns (examples [R], steps [R]): pair = (order[cursor[e] + step], e)."""
  room = min(b for b in row_buckets(batch_size) if b >= waiting.size) - waiting.size
  examples, steps = [waiting], [np.zeros(waiting.size, np.int64)]
  step = 1
  while room > 0:
    more = waiting[cursor[waiting] + step < grid_size][:room]
    if more.size == 0:
      break
    examples.append(more)
    steps.append(np.full(more.size, step, np.int64))
    room -= more.size
    step += 1
  return np.concatenate(examples), np.concatenate(steps)


def _advance_copies(job: _GridJob, grid: GridDecode, reference: _Reference, order: np.ndarray,
                    lambda_t: np.ndarray, cursor: np.ndarray) -> np.ndarray:
  """Copies, for every example, the run of its next pairs that share its reference's
  decisions, moving its cursor to the first pair that needs a decode; returns the examples
  that have one."""
  grid_size = order.size
  pending = np.flatnonzero(cursor < grid_size)  # [P]
  position = cursor[pending][:, None] + np.arange(grid_size)  # [P, K]
  valid = position < grid_size
  ks = order[np.minimum(position, grid_size - 1)]  # [P, K] grid indices, largest first
  rows = pending[:, None]
  shared = same_decisions(reference.trace[rows], reference.exit_layers[rows], lambda_t[ks],
                          job.exit_config, job.config.num_decoder_layers,
                          job.margin)  # [P, K]
  shared |= grid.thresholds[ks] >= 1.0  # never exits: the reference is still the full decode
  shared &= valid
  run = np.where(shared.all(axis=1), valid.sum(axis=1), np.argmin(shared, axis=1))  # [P]
  for step in range(int(run.max(initial=0))):
    take = run > step
    examples, k_step = pending[take], ks[take, step]
    grid.tokens[k_step, examples] = reference.tokens[examples]
    grid.exit_layers[k_step, examples] = reference.exit_layers[examples]
    grid.confidences[k_step, examples] = reference.confidences[examples]
  cursor[pending] += run
  return pending[cursor[pending] < grid_size]
