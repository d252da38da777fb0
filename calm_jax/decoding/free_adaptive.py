"""FREE's adaptive threshold between decode calls (ExitConfig.adaptive_threshold=
'beta_mixture').

Every deep pass of synchronized decoding judges the tokens emitted from layer s: the pair
(confidence at layer s, deep layers agreed) lands in `SynchronizedOutput.confidences` and
`.deep_agreed`. `AdaptiveThreshold` collects those pairs on the host after each call, refits
a two-component Beta mixture (calibration.beta_mixture) while it has refits left, and
offers the next lambda: the smallest confidence from which on the posterior probability of
agreement stays >= `target`. Inside a call lambda stays the traced runtime value it always
is, so a new lambda never recompiles. `decode_batches` runs a stream of batches this way.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, List, Optional, Tuple

import numpy as np

from calm_jax.calibration.beta_mixture import BetaMixture, fit_beta_mixture
from calm_jax.decoding.exit_rule import ExitConfig
from calm_jax.decoding.synchronized import UNCHECKED


@dataclasses.dataclass
class AdaptiveThreshold:
  """lambda for the next decode call, refitted from the judged pairs seen so far."""

  threshold: float  # the current lambda (the config's to start with)
  target: float = 0.9  # posterior probability of agreement the next lambda must reach
  max_refits: int = 10  # refits after which lambda stays put
  min_pairs: int = 32  # pairs (with both verdicts present) before the first fit
  refits: int = 0
  mixture: Optional[BetaMixture] = None
  confidences: List[np.ndarray] = dataclasses.field(default_factory=list)
  agreed: List[np.ndarray] = dataclasses.field(default_factory=list)

  def __post_init__(self):
    if not 0 < self.target < 1:
      raise ValueError(f"target must be in (0, 1), got {self.target!r}")
    if self.max_refits < 0 or self.min_pairs < 4:
      raise ValueError(f"max_refits must be >= 0 and min_pairs >= 4, got {self.max_refits!r}, "
                       f"{self.min_pairs!r}")

  def observe(self, output: Any) -> float:
    """Collects a SynchronizedOutput's judged pairs, refits when due; the next lambda."""
    judged = np.asarray(output.deep_agreed) != UNCHECKED
    self.confidences.append(np.asarray(output.confidences)[judged])
    self.agreed.append(np.asarray(output.deep_agreed)[judged])
    confidences, agreed = np.concatenate(self.confidences), np.concatenate(self.agreed)
    both_seen = 0 < agreed.sum() < agreed.size
    if self.refits < self.max_refits and agreed.size >= self.min_pairs and both_seen:
      self.mixture = fit_beta_mixture(confidences, agreed)
      self.threshold = self.mixture.threshold(self.target)
      self.refits += 1
    return self.threshold


def adaptive_threshold_for(exit_config: ExitConfig) -> Optional[AdaptiveThreshold]:
  """The refitting threshold `exit_config` asks for (adaptive_threshold='beta_mixture':
  its lambda to start with, adaptive_target, adaptive_max_refits), or None."""
  if exit_config.adaptive_threshold == "none":
    return None
  return AdaptiveThreshold(threshold=float(exit_config.threshold),
                           target=float(exit_config.adaptive_target),
                           max_refits=int(exit_config.adaptive_max_refits))


def describe(adaptive: AdaptiveThreshold, start: float) -> str:
  """One line: lambda before and after, the refits, the pairs seen."""
  pairs = sum(len(a) for a in adaptive.agreed)
  return (f"beta_mixture threshold: lambda {start:g} -> {adaptive.threshold:.4g} after "
          f"{adaptive.refits} refit(s) (at most {adaptive.max_refits}) on {pairs} judged "
          f"tokens, target {adaptive.target:g}")


def decode_batches(decode, batches: Iterable[Tuple[Any, Any]], exit_config: ExitConfig,
                   adaptive: AdaptiveThreshold) -> List[Any]:
  """decode(input_ids, attention_mask, exit_config) over each (ids, mask) batch, lambda
  refitted between batches; returns each batch's output (in order)."""
  outputs = []
  for input_ids, attention_mask in batches:
    current = dataclasses.replace(exit_config, threshold=adaptive.threshold)
    outputs.append(decode(input_ids, attention_mask, current))
    adaptive.observe(outputs[-1])
  return outputs
