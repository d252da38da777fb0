"""Calibration losses from decoded outputs: how much worse early exit made each example.

Two objectives (CALM section 3):
- textual consistency: L = 1 - similarity(early, full), the early output judged against
  the full model's output as if it were the reference;
- risk consistency: L = max(0, R(early, refs) - R(full, refs)) with R = 1 - the task
  metric, i.e. only the quality the early output lost against the gold references.
Both are in [0, 1]. An early output identical to the full model's has loss 0 exactly.

Inputs are laid out as the threshold-grid decoder returns them: one list of n outputs per
threshold. The result is the [n, k] loss matrix `ltt.learn_then_test` takes.
"""

from __future__ import annotations

from typing import Callable, List, Sequence

import numpy as np

from calm_jax.data import metrics

OBJECTIVES = ("textual", "risk")


def _check_grid(early_outputs: Sequence[Sequence], num_examples: int) -> None:
  if len(early_outputs) == 0:
    raise ValueError("early_outputs is empty: give one list of outputs per threshold")
  for j, column in enumerate(early_outputs):
    if len(column) != num_examples:
      raise ValueError(f"early_outputs[{j}] has {len(column)} outputs but there are "
                       f"{num_examples} full-model outputs; every threshold needs one output "
                       f"per example")


def _similarity_fn(similarity) -> Callable:
  if callable(similarity):
    return similarity
  if similarity == "token_agreement":
    return metrics.token_agreement
  return metrics.get_text_similarity(similarity)


def textual_consistency_losses(early_outputs: Sequence[Sequence], full_outputs: Sequence,
                               similarity="rouge_l") -> np.ndarray:
  """[n, k] losses 1 - similarity(early[j][i], full[i]).

  early_outputs: k lists of n outputs (strings, or token-id sequences for
    'token_agreement'), one list per threshold.
  full_outputs: the n full-model outputs.
  similarity: a name in data.metrics.TEXT_SIMILARITIES, 'token_agreement', or a function
    (prediction, reference) -> [0, 1].
  """
  score = _similarity_fn(similarity)
  _check_grid(early_outputs, len(full_outputs))
  losses = np.zeros((len(full_outputs), len(early_outputs)))  # [n, k]
  for i, full in enumerate(full_outputs):
    seen = {}
    for j, column in enumerate(early_outputs):
      early = column[i]
      key = _hashable(early)
      if key not in seen:
        seen[key] = 0.0 if _same(early, full) else 1.0 - _checked(score(early, full), similarity)
      losses[i, j] = seen[key]
  return losses


def risk_consistency_losses(early_outputs: Sequence[Sequence[str]], full_outputs: Sequence[str],
                            references: Sequence, metric="rouge_l") -> np.ndarray:
  """[n, k] losses max(0, metric(full[i], refs[i]) - metric(early[j][i], refs[i])).

  references: n entries, each a reference string or a list of them.
  metric: a name in data.metrics.TEXT_SIMILARITIES or a function (prediction, references)
    -> [0, 1]; R = 1 - metric, so the loss is the metric the early output gave up.
  """
  score = _similarity_fn(metric)
  if isinstance(references, (str, bytes)) or not hasattr(references, "__len__"):
    raise ValueError(f"references must be a list with one entry per example, got "
                     f"{type(references).__name__} {references!r:.60}")
  if len(references) != len(full_outputs):
    raise ValueError(f"references has {len(references)} entries but there are "
                     f"{len(full_outputs)} full-model outputs; give one per example")
  _check_grid(early_outputs, len(full_outputs))
  losses = np.zeros((len(full_outputs), len(early_outputs)))  # [n, k]
  for i, (full, refs) in enumerate(zip(full_outputs, references)):
    full_quality = _checked(score(full, refs), metric)
    seen = {}
    for j, column in enumerate(early_outputs):
      early = column[i]
      key = _hashable(early)
      if key not in seen:
        quality = full_quality if _same(early, full) else _checked(score(early, refs), metric)
        seen[key] = max(0.0, full_quality - quality)
      losses[i, j] = seen[key]
  return losses


def consistency_losses(objective: str, early_outputs, full_outputs, references=None,
                       similarity="rouge_l") -> np.ndarray:
  """Dispatches on objective 'textual' or 'risk' (which needs references)."""
  if objective == "textual":
    return textual_consistency_losses(early_outputs, full_outputs, similarity)
  if objective == "risk":
    if references is None:
      raise ValueError("objective='risk' needs the gold references of every example")
    return risk_consistency_losses(early_outputs, full_outputs, references, similarity)
  raise ValueError(f"objective={objective!r} is not allowed; allowed: {', '.join(OBJECTIVES)}")


def _hashable(output):
  return output if isinstance(output, str) else tuple(output)


def _same(a, b) -> bool:
  if isinstance(a, str) or isinstance(b, str):
    return a == b
  return list(a) == list(b)


def _checked(value: float, name) -> float:
  if not 0.0 <= value <= 1.0:
    raise ValueError(f"similarity {name!r} returned {value!r}; similarities must lie in [0, 1]")
  return float(value)


def outputs_by_threshold(rows: Sequence[Sequence]) -> List[List]:
  """[n][k] (per example) -> [k][n] (per threshold)."""
  return [list(column) for column in zip(*rows)]
