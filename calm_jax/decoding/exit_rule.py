"""The exit rule: which layers are exit points and the threshold at each output position.

Layers are numbered 1..L. Layer i is an exit point when i >= min_exit_layer and
(i - min_exit_layer) is a multiple of exit_interval; layer L always is. A token leaves
after exit point i when its confidence c_i >= lambda_t (or, for static and oracle exits,
where the measure says so). lambda >= 1 never exits early: the output is the full model's.
"""

from __future__ import annotations

import dataclasses
import numbers
import jax.numpy as jnp
import numpy as np

DECAYS = ("paper", "code")
PROPAGATIONS = ("copy_state", "full_compute")
DECODINGS = ("per_token", "synchronized")
ADAPTIVE_THRESHOLDS = ("none", "beta_mixture")
# Fields read on the host between decode calls (decoding.free_adaptive), never compiled
HOST_SIDE_FIELDS = ("adaptive_threshold", "adaptive_target", "adaptive_max_refits")


@dataclasses.dataclass(frozen=True)
class ExitConfig:
  """How tokens leave the decoder early. Hashable; the threshold and tau are runtime values."""

  measure: str = "softmax_diff"  # a name in calm_jax.decoding.measures.MEASURES
  threshold: float = 1.0  # lambda; >= 1 never exits early
  tau: float = 0.0  # decay speed of the threshold over output positions; 0 = constant lambda
  decay: str = "paper"  # 'paper': clip(0.9 lambda + 0.1 e^(-tau t/N)); 'code': lambda (0.9 + 0.1 e^(-tau t/N))
  min_exit_layer: int = 1  # first layer a token may leave after
  exit_interval: int = 1  # exit points every this many layers from min_exit_layer
  static_exit_layer: int = 0  # the layer of the 'static' measure (1..L)
  propagation: str = "copy_state"  # skipped layers' K/V: from the exit state, or computed in full
  classifier_path: str = ""  # saved exit classifier of a learned measure (run configs only)
  contrastive_alpha: float = 0.1  # contrastive_*: head set {v : p_i(v) >= alpha max p_i}, (0, 1]
  jsd_by_distance: bool = False  # contrastive_jsd: divide the JSD by the layer distance i - j
  contrastive_token: bool = False  # contrastive_*: emit the contrastive argmax (contrastive decoding)
  top_k: int = 2000  # softmax_topk / softmax_pruned: tokens kept at the first exit point (K, k1)
  pruning: str = "fixed"  # softmax_pruned: 'fixed', 'decaying' (k1 -> min_top_k) or 'adaptive'
  min_top_k: int = 10  # softmax_pruned: k*, the fewest tokens pruning keeps
  # 'per_token': CALM's exits at every exit point, skipped layers propagated.
  # 'synchronized': FREE's one shallow exit at layer s, deep layers run over pending tokens.
  decoding: str = "per_token"
  shallow_exit_layer: int = 1  # synchronized: s, the one exit point (1 <= s < L)
  max_pending: int = 4  # synchronized: tokens an example may leave pending before a deep pass
  # synchronized: at a deep pass, replace a pending token the deep layers disagree with at
  # cross-entropy above this (later pending tokens regenerated); inf = never
  rollback_threshold: float = float("inf")
  verify: bool = False  # synchronized: replace every pending token the deep layers disagree with
  adaptive_threshold: str = "none"  # synchronized: 'beta_mixture' refits lambda between calls
  # beta_mixture: the posterior probability of agreement from which on tokens exit, (0, 1)
  adaptive_target: float = 0.9
  adaptive_max_refits: int = 10  # beta_mixture: refits, after which lambda stays put (>= 0)

  def validate(self, num_layers: int) -> None:
    """Raises ValueError naming the bad field; call before compiling anything. Only the
    fields every measure shares: a measure checks its own options
    (`measures.checked_measure` does both)."""
    for name in ("threshold", "tau"):
      value = getattr(self, name)
      if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"ExitConfig.{name} must be a real number, got "
                        f"{type(value).__name__} {value!r}")
    if not self.threshold >= 0:
      raise ValueError(f"ExitConfig.threshold (lambda) must be >= 0, got {self.threshold!r}")
    if not self.tau >= 0:
      raise ValueError(f"ExitConfig.tau must be >= 0, got {self.tau!r}")
    if self.decay not in DECAYS:
      raise ValueError(f"ExitConfig.decay={self.decay!r}; allowed: {', '.join(DECAYS)}")
    if self.propagation not in PROPAGATIONS:
      raise ValueError(f"ExitConfig.propagation={self.propagation!r}; allowed: "
                       f"{', '.join(PROPAGATIONS)}")
    if not isinstance(self.min_exit_layer, numbers.Integral) or not 1 <= self.min_exit_layer <= num_layers:
      raise ValueError(f"ExitConfig.min_exit_layer={self.min_exit_layer!r} must be in "
                       f"[1, {num_layers}] (the decoder has {num_layers} layers)")
    if not isinstance(self.exit_interval, numbers.Integral) or self.exit_interval < 1:
      raise ValueError(f"ExitConfig.exit_interval must be a positive integer, got "
                       f"{self.exit_interval!r}")
    self._validate_synchronized(num_layers)
    for field in dataclasses.fields(self):  # the switches (jsd_by_distance, contrastive_token)
      value = getattr(self, field.name)
      if isinstance(field.default, bool) and not isinstance(value, bool):
        raise ValueError(f"ExitConfig.{field.name} must be true or false, got {value!r}")

  def _validate_synchronized(self, num_layers: int) -> None:
    """The synchronized-decoding fields (checked whatever `decoding` is, so a bad value
    never waits for the day it is used)."""
    if self.decoding not in DECODINGS:
      raise ValueError(f"ExitConfig.decoding={self.decoding!r}; allowed: {', '.join(DECODINGS)}")
    if self.adaptive_threshold not in ADAPTIVE_THRESHOLDS:
      raise ValueError(f"ExitConfig.adaptive_threshold={self.adaptive_threshold!r}; allowed: "
                       f"{', '.join(ADAPTIVE_THRESHOLDS)}")
    layer = self.shallow_exit_layer
    if self.decoding == "synchronized" and (
        not isinstance(layer, numbers.Integral) or not 1 <= layer < num_layers):
      raise ValueError(f"ExitConfig.shallow_exit_layer={layer!r} must be in [1, "
                       f"{num_layers - 1}] (the decoder has {num_layers} layers; the deep "
                       "part needs at least one)")
    if not isinstance(self.max_pending, numbers.Integral) or self.max_pending < 1:
      raise ValueError(f"ExitConfig.max_pending must be an integer >= 1, got "
                       f"{self.max_pending!r}")
    rollback = self.rollback_threshold
    if not isinstance(rollback, numbers.Real) or not rollback >= 0:
      raise ValueError(f"ExitConfig.rollback_threshold must be >= 0 (inf = never roll back), "
                       f"got {rollback!r}")
    if self.decoding == "per_token" and (self.verify is True or rollback != float("inf")
                                         or self.adaptive_threshold != "none"):
      raise ValueError("ExitConfig.verify, rollback_threshold and adaptive_threshold act on "
                       "synchronized decoding only; set decoding='synchronized' (got "
                       f"verify={self.verify!r}, rollback_threshold={rollback!r}, "
                       f"adaptive_threshold={self.adaptive_threshold!r})")
    self._validate_adaptive()
    if self.verify is True and rollback != float("inf"):
      raise ValueError(f"ExitConfig.verify=True replaces every disagreement; leave "
                       f"rollback_threshold at inf (got {rollback!r})")

  def _validate_adaptive(self) -> None:
    target, refits = self.adaptive_target, self.adaptive_max_refits
    if (not isinstance(target, numbers.Real) or isinstance(target, bool)
        or not 0 < target < 1):
      raise ValueError(f"ExitConfig.adaptive_target must be in (0, 1), got {target!r}")
    if isinstance(refits, bool) or not isinstance(refits, numbers.Integral) or refits < 0:
      raise ValueError(f"ExitConfig.adaptive_max_refits must be an integer >= 0, got "
                       f"{refits!r}")

  @classmethod
  def from_section(cls, section) -> "ExitConfig":
    """From a config's `exit` section (a ConfigDict or mapping of these fields)."""
    values = dict(section)
    known = [field.name for field in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(known))
    if unknown:
      raise ValueError(f"unknown exit option(s) {unknown}; allowed: {', '.join(known)}")
    return cls(**values)

  def compiled_part(self) -> "ExitConfig":
    """This config without its runtime values (and the adaptive threshold's host-side
    settings), so that changing them never recompiles."""
    host_side = {name: getattr(ExitConfig, name) for name in HOST_SIDE_FIELDS}  # defaults
    return dataclasses.replace(self, threshold=0.0, tau=0.0, classifier_path="", **host_side)


def is_exit_point(layer, exit_config: ExitConfig, num_layers: int):
  """Whether 1-based `layer` (may be traced) is an exit point."""
  on_grid = ((layer >= exit_config.min_exit_layer)
             & ((layer - exit_config.min_exit_layer) % exit_config.exit_interval == 0))
  return on_grid | (layer == num_layers)


def threshold_at(threshold, tau, position, max_decode_len: int, decay: str):
  """lambda_t for output `position` t (0-based) of at most `max_decode_len` tokens.

  With tau = 0 the threshold is lambda itself, in both forms.
  """
  threshold = jnp.asarray(threshold, jnp.float32)
  tau = jnp.asarray(tau, jnp.float32)
  fading = jnp.exp(-tau * position / max_decode_len)
  if decay == "paper":
    decayed = jnp.clip(0.9 * threshold + 0.1 * fading, 0.0, 1.0)
  else:
    decayed = threshold * (0.9 + 0.1 * fading)
  return jnp.where(tau > 0, decayed, threshold)


def exit_point_layers(exit_config: ExitConfig, num_layers: int) -> tuple:
  """The exit points as a tuple of 1-based layers (e.g. `exit_points` of the classifiers'
  teacher-forced logits)."""
  layers = np.arange(1, num_layers + 1)
  return tuple(int(layer) for layer in layers[is_exit_point(layers, exit_config, num_layers)])
