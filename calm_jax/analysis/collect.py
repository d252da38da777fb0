"""Runs a model to produce the arrays the studies read (the one JAX module of analysis/).

Everything comes from the project's own forward pass and decoder: `encode` and
`decode_teacher_forced` give every layer's state [L, B, T, d], `exit_logits` each layer's
logits, and `generate` the free-running outputs (with the decoder's per-layer confidence
trace) and the oracle decodes. Examples are processed in chunks of `batch_size`. Every
decode runs on the given mesh (decoding.sharded: rows over its data shards, parameters over
'model'); the teacher-forced forward passes run on one device.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Iterator, List, Optional, Sequence

import jax
import numpy as np

from calm_jax.analysis import layerwise
from calm_jax.analysis.oracle import DecodedOutputs
from calm_jax.decoding.exit_rule import ExitConfig
from calm_jax.decoding.generate import generate
from calm_jax.decoding.sharded import DecodeMesh
from calm_jax.model.config import T5Config
from calm_jax.model.t5 import decode_teacher_forced, encode, exit_logits, shift_right

PROPAGATIONS = {"oracle_copy_state": "copy_state", "oracle_full_compute": "full_compute"}


@dataclasses.dataclass(frozen=True)
class AnalysisInputs:
  """The examples every study reads, already tokenised."""

  input_ids: np.ndarray  # [B, S] int32 encoder inputs
  input_mask: np.ndarray  # [B, S] int32, 1 keep / 0 pad
  target_ids: np.ndarray  # [B, T] int32 reference targets (EOS included), pad after
  target_mask: np.ndarray  # [B, T] bool, reference positions
  references: List[str]  # [B] reference texts
  detokenize: Callable[[Sequence[int]], str]  # ids -> text (stops at EOS)

  @property
  def num_examples(self) -> int:
    return self.input_ids.shape[0]


def _chunks(count: int, batch_size: int) -> Iterator[slice]:
  size = batch_size or count
  for start in range(0, count, size):
    yield slice(start, min(start + size, count))


@functools.partial(jax.jit, static_argnames=("config",))
def _layer_states(config: T5Config, params: Any, input_ids, input_mask, decoder_input_ids):
  """Every decoder layer's state [L, B, T, d] for given decoder inputs."""
  encoded = encode(config, params, input_ids, input_mask)
  return decode_teacher_forced(config, params, decoder_input_ids, encoded, input_mask)


_exit_logits = jax.jit(exit_logits, static_argnames=("config",))


def layerwise_chunk(config: T5Config, params: Any, input_ids, input_mask, targets, mask,
                    setting: str, measure_confidence=None) -> layerwise.LayerwiseTokens:
  """Per-layer statistics of one chunk whose decoder reads `targets` [B, T] shifted right.

  Layer logits are computed one layer at a time, so host memory holds one [B, T, V] array.
  """
  decoder_inputs = shift_right(config, np.asarray(targets, np.int32))
  states = _layer_states(config, params, input_ids, input_mask, decoder_inputs)  # [L, B, T, d]
  final_top1 = np.asarray(_exit_logits(config, params, states[-1])).argmax(axis=-1)  # [B, T]
  per_layer = [layerwise.layer_token_statistics(_exit_logits(config, params, states[i]),
                                                final_top1)
               for i in range(config.num_decoder_layers)]
  stack = lambda name: np.stack([getattr(s, name) for s in per_layer])  # [L, B, T]
  return layerwise.LayerwiseTokens(
      setting=setting, top1=stack("top1"), top1_prob=stack("top1_prob"),
      final_prob=stack("final_prob"), final_rank=stack("final_rank"),
      similarity=layerwise.cosine_to_final(np.asarray(states)),
      targets=np.asarray(targets), mask=np.asarray(mask, bool),
      measure_confidence=measure_confidence)


def teacher_forced(config: T5Config, params: Any, inputs: AnalysisInputs,
                   batch_size: int) -> layerwise.LayerwiseTokens:
  """Statistics with the reference targets as decoder inputs."""
  parts = [layerwise_chunk(config, params, inputs.input_ids[rows], inputs.input_mask[rows],
                           inputs.target_ids[rows], inputs.target_mask[rows], "teacher_forced")
           for rows in _chunks(inputs.num_examples, batch_size)]
  return layerwise.concatenate(parts)


def _decode(config: T5Config, params: Any, inputs: AnalysisInputs, rows: slice,
            exit_config: ExitConfig, max_decode_len: int, return_trace: bool,
            mesh: Optional[DecodeMesh]):
  out = generate(config, params, inputs.input_ids[rows], inputs.input_mask[rows],
                 exit=exit_config, max_decode_len=max_decode_len, return_trace=return_trace,
                 mesh=mesh)
  return jax.tree.map(np.asarray, out)


def _decoded(name: str, tokens: np.ndarray, exit_layers: np.ndarray,
             inputs: AnalysisInputs) -> DecodedOutputs:
  return DecodedOutputs(name=name, tokens=tokens, exit_layers=exit_layers,
                        texts=[inputs.detokenize(row) for row in tokens])


def free_running(config: T5Config, params: Any, inputs: AnalysisInputs, *,
                 max_decode_len: int, batch_size: int,
                 trace_exit: Optional[ExitConfig] = None, mesh: Optional[DecodeMesh] = None):
  """The full model's greedy outputs and the statistics with them as decoder inputs.

  `trace_exit` names a thresholded measure (and its exit grid) whose per-layer confidence
  the decoder records along the way; its threshold is set to 1, so no token exits early.
  `mesh`: where the decodes run (None: one device).
  Returns (LayerwiseTokens, DecodedOutputs of the full model).
  """
  exit_config = dataclasses.replace(trace_exit or ExitConfig(), threshold=1.0, tau=0.0)
  parts, tokens, exit_layers = [], [], []
  for rows in _chunks(inputs.num_examples, batch_size):
    out = _decode(config, params, inputs, rows, exit_config, max_decode_len,
                  return_trace=trace_exit is not None, mesh=mesh)
    trace = None if trace_exit is None else out.trace.transpose(2, 0, 1)  # [B, T, L] -> [L, B, T]
    parts.append(layerwise_chunk(config, params, inputs.input_ids[rows],
                                 inputs.input_mask[rows], out.tokens, out.exit_layers > 0,
                                 "free_running", trace))
    tokens.append(out.tokens)
    exit_layers.append(out.exit_layers)
  full = _decoded("full", np.concatenate(tokens), np.concatenate(exit_layers), inputs)
  return layerwise.concatenate(parts), full


def full_decode(config: T5Config, params: Any, inputs: AnalysisInputs, *,
                max_decode_len: int, batch_size: int,
                mesh: Optional[DecodeMesh] = None) -> DecodedOutputs:
  """The full model's greedy outputs (lambda = 1: no token exits early)."""
  return oracle_or_full(config, params, inputs, "full", ExitConfig(threshold=1.0),
                        max_decode_len=max_decode_len, batch_size=batch_size, mesh=mesh)


def oracle_decodes(config: T5Config, params: Any, inputs: AnalysisInputs,
                   exit_grid: ExitConfig, *, max_decode_len: int, batch_size: int,
                   mesh: Optional[DecodeMesh] = None) -> List[DecodedOutputs]:
  """The local oracle with propagated state and with the true cache, on `exit_grid`'s exit
  points (its min_exit_layer and exit_interval)."""
  decodes = []
  for name, propagation in PROPAGATIONS.items():
    exit_config = ExitConfig(measure="oracle", min_exit_layer=exit_grid.min_exit_layer,
                             exit_interval=exit_grid.exit_interval, propagation=propagation)
    decodes.append(oracle_or_full(config, params, inputs, name, exit_config,
                                  max_decode_len=max_decode_len, batch_size=batch_size,
                                  mesh=mesh))
  return decodes


def oracle_or_full(config: T5Config, params: Any, inputs: AnalysisInputs, name: str,
                   exit_config: ExitConfig, *, max_decode_len: int, batch_size: int,
                   mesh: Optional[DecodeMesh] = None) -> DecodedOutputs:
  """One decode of every example, as `name` (on `mesh`; None: one device)."""
  outs = [_decode(config, params, inputs, rows, exit_config, max_decode_len, False, mesh)
          for rows in _chunks(inputs.num_examples, batch_size)]
  return _decoded(name, np.concatenate([o.tokens for o in outs]),
                  np.concatenate([o.exit_layers for o in outs]), inputs)
