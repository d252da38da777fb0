"""The early-exit decoder's static plan and its traced constants.

`DecodePlan` holds every choice that shapes the compiled program (model config, the exit
config without its runtime values, sampling, lengths, row compaction) and the measure built
from it; it is the one place the decoder reads the measure's declaration (`Needs`).
`DecodeConstants` holds what is traced and constant over a decode: the parameters (in the
measure context), lambda and tau. A new threshold therefore never recompiles, and a grid of
thresholds is one `vmap` over `DecodeConstants.threshold`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Tuple

import flax
import jax.numpy as jnp
import numpy as np

from calm_jax.decoding.exit_rule import ExitConfig
from calm_jax.decoding.inputs import check_max_decode_len
from calm_jax.decoding.measures import (Measure, MeasureContext, Needs, build_measure,
                                        checked_measure)
from calm_jax.decoding.sampling import SamplingConfig
from calm_jax.model.config import T5Config

Array = jnp.ndarray


def row_buckets(batch: int, count: int = 4, ratio: int = 4) -> Tuple[int, ...]:
  """Row counts the layer loop may run a layer on: B, ceil(B/r), ceil(B/r^2), ... for
  r = `ratio` (distinct, at most `count`)."""
  sizes = [batch]
  while len(sizes) < count and sizes[-1] > 1:
    sizes.append(-(-sizes[-1] // ratio))
  return tuple(sizes)


@dataclasses.dataclass(frozen=True)
class DecodePlan:
  """Everything static about one compiled decode (hashable: a jit static argument)."""

  model: T5Config
  exit: ExitConfig  # without its runtime values (ExitConfig.compiled_part)
  sampling: SamplingConfig
  max_decode_len: int  # T, output positions
  return_trace: bool  # record every layer's confidence, [B, T, L]
  # Run each layer on the smallest row bucket holding the running examples. Under vmap a
  # data-dependent branch becomes a select of all branches, so the threshold grid turns
  # it off.
  compact: bool = True
  # The decode's thresholds let no row leave before layer L (lambda >= 1 for every row,
  # known on the host before compiling): no layer needs a conditional (some row runs every
  # layer until all have finished), and a measure on the full logits checks at layer L
  # only. Row buckets stay: they leave out the rows that have finished. The outputs are
  # those of the plan without it.
  never_exits: bool = False
  # The one row count every layer runs on (set while tracing a never-exit token loop, which
  # keeps one bucket for a stretch of positions: its running rows only decrease); None: the
  # layer loop picks from `buckets` at every layer.
  fixed_rows: Optional[int] = None

  @classmethod
  def checked(cls, model: T5Config, exit_config: ExitConfig, sampling: SamplingConfig,
              max_decode_len: int, return_trace: bool) -> "DecodePlan":
    """The plan, after checking every static choice (ValueError naming the bad one)."""
    check_max_decode_len(max_decode_len)
    measure = checked_measure(exit_config, model)
    sampling.validate(model.vocab_size)
    if exit_config.decoding == "synchronized":
      check_synchronized(exit_config, measure, sampling, return_trace)
    return cls(model, exit_config.compiled_part(), sampling, max_decode_len, return_trace)

  @functools.cached_property
  def measure(self) -> Measure:
    return build_measure(self.exit)

  @property
  def needs(self) -> Needs:
    return self.measure.needs

  @property
  def num_layers(self) -> int:
    return self.model.num_decoder_layers

  @property
  def full_compute(self) -> bool:
    """Every layer runs on true states, whatever the exits (propagation='full_compute')."""
    return self.exit.propagation == "full_compute"

  @property
  def trace_width(self) -> int:
    return self.num_layers if self.return_trace else 0

  def for_thresholds(self, thresholds: np.ndarray) -> "DecodePlan":
    """The plan to compile for these host thresholds [] or [B]: `never_exits` when none
    lets a row leave early and the measure is thresholded (per-token decoding, exits not
    computed at every layer anyway), else this plan."""
    never = (self.needs.thresholded and not self.full_compute
             and self.exit.decoding != "synchronized" and np.size(thresholds) > 0
             and bool(np.all(np.asarray(thresholds) >= 1.0)))
    return dataclasses.replace(self, never_exits=True) if never else self

  @property
  def runs_every_layer(self) -> bool:
    """Every layer runs on every row that has not finished: full compute, or no exits."""
    return self.full_compute or self.never_exits

  def buckets(self, batch: int) -> Tuple[int, ...]:
    """The row counts a layer may run on (one when not compacting): B, B/2, B/4, B/8 up to
    8 rows, else B, B/4, B/16, B/64. Each is a branch of every layer's switch to compile;
    quarters reach a few rows at batch 200 with four branches (eight halvings took twice
    the compile time for about the same speed)."""
    if self.fixed_rows is not None:
      return (self.fixed_rows,)
    if self.compact and not self.full_compute:
      return row_buckets(batch, ratio=2 if batch <= 8 else 4)
    return (batch,)

  def phase_buckets(self, batch: int) -> Tuple[int, ...]:
    """The row counts of a never-exit decode's token loops: B, then B/4 once at most that
    many rows still generate. Each is a token loop to compile (at batch 200 four halvings
    took 9 s against 3 s for one loop, and the demo's calibration compiles a never-exit
    decode per wave size and measure)."""
    if self.compact and not self.full_compute:
      return row_buckets(batch, count=2, ratio=4)
    return (batch,)

  def checks_at(self, layer_no: Array, exit_point: Array, allow_early: Array) -> Array:
    """[] bool: whether the measure runs at 1-based layer `layer_no` (a Python bool where
    that is known from a static layer number).

    A measure on the full logits (the costly head) runs only where it can decide an exit,
    where the trace records it, or at layer L (its logits give the token); cheap measures
    and those whose state spans exit points run at every exit point, and those that look
    at any earlier layer at every layer.
    """
    where = exit_point | self.needs.every_layer
    if self.return_trace or self.needs.logits != "full" or self.needs.every_exit_point:
      return where
    at_last = layer_no == self.num_layers
    may_leave_early = False if self.never_exits else jnp.any(allow_early)
    if isinstance(at_last, bool):  # a static layer number (the unrolled layer loop)
      return bool(where) and (at_last or may_leave_early)
    return where & (may_leave_early | at_last)


def check_synchronized(exit_config: ExitConfig, measure: Measure, sampling: SamplingConfig,
                       return_trace: bool) -> None:
  """What synchronized decoding cannot do, as a ValueError naming it (ExitConfig.validate
  has checked the fields themselves). The measure decides at layer s on its hidden state
  or the full head's logits; the token is the head's."""
  if exit_config.verify and not sampling.greedy:
    raise ValueError("ExitConfig.verify=True reproduces greedy decoding; it cannot sample "
                     f"(temperature={sampling.temperature!r}); use temperature 0")
  if return_trace:
    raise ValueError("return_trace: decoding='synchronized' has one exit point and no "
                     "per-layer trace; use decoding='per_token'")
  needs = measure.needs
  if (needs.logits == "subset" or needs.final_top1 or not needs.thresholded
      or measure.store is not None or exit_config.contrastive_token):
    raise ValueError(f"ExitConfig.measure={exit_config.measure!r} cannot decide "
                     "synchronized decoding's shallow exit (it needs a vocabulary subset, a "
                     "store of earlier positions, the final layer, a fixed exit layer or "
                     "emits its own token); use a measure on the state or the full head "
                     "(e.g. softmax_diff, softmax_max, state_saturation, meta_mlp)")


@flax.struct.dataclass
class DecodeConstants:
  """The traced values that stay constant over one decode."""

  context: MeasureContext  # model parameters, classifier parameters, head table
  threshold: Array  # [] or [B] float32 lambda (one per example)
  tau: Array  # [] float32 decay speed of the threshold
