"""Per-layer token statistics: the arrays every layer-wise study reads.

One `LayerwiseTokens` holds, for every decoder layer and every position of a batch of
sequences, that layer's top-1 token, its probability, the probability and rank of the final
layer's top-1, and the cosine similarity of the layer's state with the final layer's. It is
built from what the forward pass returns (each layer's state [L, B, T, d] and its exit-head
logits [B, T, V]) under one of two input settings:

- teacher_forced: the decoder reads the reference targets (shifted right); the position's
  target is the reference token.
- free_running: the decoder reads the full model's own greedy output (shifted right), so
  every layer sees exactly the prefix the model generated; the position's target is the
  token the model emitted there.

NumPy only.
"""

from __future__ import annotations

import dataclasses
import math
from typing import List, Optional, Sequence

import numpy as np

SETTINGS = ("teacher_forced", "free_running")
SETTING_LABELS = {
    "teacher_forced": "teacher-forced (reference targets as decoder inputs)",
    "free_running": "free-running (the full model's own greedy outputs as decoder inputs)",
}
SETTING_DESCRIPTIONS = {
    "teacher_forced": "The decoder reads the reference targets shifted right; every target "
                      "position up to and including EOS counts, and a layer is accurate where "
                      "its top-1 equals the reference token.",
    "free_running": "The decoder reads the full model's own greedy output shifted right (the "
                    "prefix it generated itself); every generated position up to and including "
                    "EOS counts, and a layer is accurate where its top-1 equals the token the "
                    "full model emitted.",
}


@dataclasses.dataclass(frozen=True)
class LayerStatistics:
  """One layer's view of every position, from its exit-head logits."""

  top1: np.ndarray  # [B, T] int64, the most likely token (first index on ties)
  top1_prob: np.ndarray  # [B, T] float64, its softmax probability
  final_prob: np.ndarray  # [B, T] float64, probability of the final layer's top-1
  final_rank: np.ndarray  # [B, T] int64, rank of the final layer's top-1 (1 = most likely)


def layer_token_statistics(logits, final_top1) -> LayerStatistics:
  """Statistics of one layer's logits [B, T, V] against the final layer's top-1 [B, T].

  The rank counts the tokens with a strictly larger logit, plus one: a token tied with the
  maximum has rank 1.
  """
  logits = np.asarray(logits, np.float64)  # [B, T, V]
  final_top1 = np.asarray(final_top1)
  if logits.ndim != 3 or final_top1.shape != logits.shape[:2]:
    raise ValueError(f"logits must be [B, T, V] and final_top1 [B, T]; got {logits.shape} "
                     f"and {final_top1.shape}")
  largest = logits.max(axis=-1)  # [B, T]
  log_normaliser = largest + np.log(np.exp(logits - largest[..., None]).sum(axis=-1))
  final_logit = np.take_along_axis(logits, final_top1[..., None], axis=-1)[..., 0]  # [B, T]
  return LayerStatistics(
      top1=logits.argmax(axis=-1),
      top1_prob=np.exp(largest - log_normaliser),
      final_prob=np.exp(final_logit - log_normaliser),
      final_rank=1 + (logits > final_logit[..., None]).sum(axis=-1))


def cosine_to_final(states) -> np.ndarray:
  """Cosine similarity of every layer's state with the last layer's: [L, B, T, d] ->
  [L, B, T] (a zero vector has similarity 0)."""
  states = np.asarray(states, np.float64)
  if states.ndim != 4:
    raise ValueError(f"states must be [L, B, T, d]; got shape {states.shape}")
  final = states[-1]  # [B, T, d]
  dot = (states * final).sum(axis=-1)
  norms = np.linalg.norm(states, axis=-1) * np.linalg.norm(final, axis=-1)
  return dot / np.maximum(norms, 1e-12)


@dataclasses.dataclass(frozen=True)
class LayerwiseTokens:
  """Per-layer statistics of a batch of sequences under one input setting."""

  setting: str  # 'teacher_forced' or 'free_running'
  top1: np.ndarray  # [L, B, T] int, each layer's most likely token
  top1_prob: np.ndarray  # [L, B, T] float, its probability
  final_prob: np.ndarray  # [L, B, T] float, probability of the final layer's top-1
  final_rank: np.ndarray  # [L, B, T] int, rank of the final layer's top-1 (1 = top)
  similarity: np.ndarray  # [L, B, T] float, cosine of the state with the final layer's
  targets: np.ndarray  # [B, T] int, the token each position should produce
  mask: np.ndarray  # [B, T] bool, positions that count
  # [L, B, T] the decoder's own confidence measure per layer (its trace), NaN where it was
  # not computed; free-running only
  measure_confidence: Optional[np.ndarray] = None

  def __post_init__(self):
    if self.setting not in SETTINGS:
      raise ValueError(f"setting={self.setting!r}; allowed: {', '.join(SETTINGS)}")
    layered = ["top1", "top1_prob", "final_prob", "final_rank", "similarity"]
    if self.measure_confidence is not None:
      layered.append("measure_confidence")
    for name in layered:
      shape = getattr(self, name).shape
      if len(shape) != 3 or shape[1:] != self.mask.shape:
        raise ValueError(f"{name} has shape {shape}; expected [L, B, T] with [B, T] = "
                         f"{self.mask.shape} (the mask's)")
      if shape[0] != self.num_layers:
        raise ValueError(f"{name} has {shape[0]} layers but top1 has {self.num_layers}")
    if self.targets.shape != self.mask.shape:
      raise ValueError(f"targets has shape {self.targets.shape}; expected {self.mask.shape}")

  @property
  def num_layers(self) -> int:
    return self.top1.shape[0]


def concatenate(parts: Sequence[LayerwiseTokens]) -> LayerwiseTokens:
  """Joins chunks of one setting along the batch axis."""
  if not parts:
    raise ValueError("nothing to concatenate: give at least one chunk")
  join = lambda name, axis: np.concatenate([getattr(p, name) for p in parts], axis=axis)
  has_measure = parts[0].measure_confidence is not None
  return LayerwiseTokens(
      setting=parts[0].setting, top1=join("top1", 1), top1_prob=join("top1_prob", 1),
      final_prob=join("final_prob", 1), final_rank=join("final_rank", 1),
      similarity=join("similarity", 1), targets=join("targets", 0), mask=join("mask", 0),
      measure_confidence=join("measure_confidence", 1) if has_measure else None)


def tokens_of(values, mask) -> np.ndarray:
  """The positions that count, per layer: [L, B, T] with a [B, T] mask -> [L, N].

  Raises ValueError when no position counts (a study of nothing has no answer).
  """
  values = np.asarray(values)
  mask = np.asarray(mask, bool)
  if values.ndim != 3 or values.shape[1:] != mask.shape:
    raise ValueError(f"values must be [L, B, T] with a [B, T] mask; got {values.shape} and "
                     f"{mask.shape}")
  if not mask.any():
    raise ValueError("the mask selects no token: there is nothing to analyse")
  return values[:, mask]


def check_after_layers(after_layers: Sequence[int], num_layers: int) -> List[int]:
  """Layers k after which monotonicity is asked (over layers k+1..L): integers with
  0 <= k <= L - 2, so that at least two layers are compared."""
  checked = []
  for k in after_layers:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k <= num_layers - 2:
      raise ValueError(f"after-layer {k!r} is not allowed for a {num_layers}-layer decoder; "
                       f"allowed: integers 0..{num_layers - 2} (layer 0 = from layer 1 on)")
    checked.append(int(k))
  return checked


def rises_after(values, after_layer: int, *, strict: bool) -> np.ndarray:
  """Per token, whether values [L, N] rise over layers after_layer+1..L (1-based):
  non-decreasing, or strictly increasing with `strict`. -> [N] bool."""
  steps = np.diff(np.asarray(values)[after_layer:], axis=0)  # [L - after_layer - 1, N]
  return np.all(steps > 0 if strict else steps >= 0, axis=0)


def finite_or_none(value) -> Optional[float]:
  """A float for JSON, None for NaN or infinity."""
  value = float(value)
  return value if math.isfinite(value) else None
