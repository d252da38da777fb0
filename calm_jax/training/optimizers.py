"""Optimizers and learning-rate schedules from optax, chosen by name in the `train` config.

Schedules (peak rate `learning_rate`, `warmup_steps` of linear warmup from 0):
- 'rsqrt': T5's inverse square root after warmup, lr * sqrt(warmup / step).
- 'cosine': cosine decay to 0 at `steps`.
- 'constant': the peak rate after warmup.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax.numpy as jnp
import optax

OPTIMIZERS = ("adafactor", "adamw")
SCHEDULES = ("rsqrt", "cosine", "constant")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """What `make_optimizer` builds; `validate` runs before any training work."""

  optimizer: str = "adafactor"  # one of OPTIMIZERS
  learning_rate: float = 1e-3  # peak learning rate
  schedule: str = "rsqrt"  # one of SCHEDULES
  warmup_steps: int = 0  # linear warmup from 0 to the peak
  total_steps: int = 1  # the run's length (the cosine schedule ends there)
  weight_decay: float = 0.0  # decoupled weight decay (AdamW; Adafactor's weight_decay_rate)
  clip_norm: float = 1.0  # global gradient-norm clipping; 0 turns it off

  def validate(self) -> None:
    if self.optimizer not in OPTIMIZERS:
      raise ValueError(f"optimizer={self.optimizer!r} is not known; allowed: {', '.join(OPTIMIZERS)}")
    if self.schedule not in SCHEDULES:
      raise ValueError(f"schedule={self.schedule!r} is not known; allowed: {', '.join(SCHEDULES)}")
    if not self.learning_rate > 0:
      raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}")
    if self.warmup_steps < 0:
      raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps!r}")
    if self.total_steps < 1:
      raise ValueError(f"the number of training steps must be >= 1, got {self.total_steps!r}")
    if self.weight_decay < 0:
      raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
    if self.clip_norm < 0:
      raise ValueError(f"clip_norm must be >= 0 (0 = no clipping), got {self.clip_norm!r}")


def optimizer_description(config: OptimizerConfig) -> dict:
  """The settings a resumed run must share (JSON); the run length may grow."""
  return {k: v for k, v in dataclasses.asdict(config).items() if k != "total_steps"}


def make_schedule(config: OptimizerConfig) -> Callable[[Any], Any]:
  """The learning rate as a function of the step (0-based)."""
  peak, warmup = config.learning_rate, config.warmup_steps
  if config.schedule == "constant":
    after = optax.constant_schedule(peak)
  elif config.schedule == "cosine":
    after = optax.cosine_decay_schedule(peak, max(config.total_steps - warmup, 1))
  else:
    base = max(warmup, 1)
    # join_schedules evaluates this before the boundary too (at negative steps): clamp.
    after = lambda step: peak * jnp.sqrt(base / (jnp.maximum(step, 0) + base))
  if not warmup:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def make_optimizer(config: OptimizerConfig) -> optax.GradientTransformation:
  """Global-norm clipping, then the optimizer on the schedule."""
  config.validate()
  schedule = make_schedule(config)
  if config.optimizer == "adamw":
    core = optax.adamw(schedule, weight_decay=config.weight_decay)
  else:
    core = optax.adafactor(schedule, weight_decay_rate=config.weight_decay or None)
  chain = [optax.clip_by_global_norm(config.clip_norm)] if config.clip_norm else []
  return optax.chain(*chain, core)
