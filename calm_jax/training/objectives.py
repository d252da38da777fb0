"""CALM's anytime objective: every decoder layer predicts the next token through the shared
exit head, and the losses are summed with per-layer weights.

    L = sum_i w_i * NLL_i,   w_i = i / sum_j j            ('calm', the paper's default)
                             w_i = 1 / L                  ('uniform')
                             w_i = 2^i / sum_j 2^j        ('geometric')
                             w_L = 1, others 0            ('last': ordinary training)

`ShallowDeepObjective` / `shallow_deep_loss` are FREE's alternative: two exits (the
shallow layer s and layer L) plus layer-wise distillation (training.distillation).

Optional label smoothing (the target keeps 1 - s, the rest spread uniformly) and T5X's
z-loss (z * log(Z)^2, which keeps the softmax normaliser near 1).

Keeping the extra heads cheap: the loss takes log Z with one logsumexp and the target logit
with one gather (no one-hot, no [.., V] log-softmax), layers with zero weight never reach
the head (so 'last' costs one head and 'calm' L), and the heads run one layer at a time in
a rematerialised `lax.map`, so memory holds one layer's [B, T, V] logits, not L of them
(the backward pass recomputes each layer's logits once).
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from calm_jax.model.config import T5Config
from calm_jax.model.t5 import decode_teacher_forced, encode, exit_logits, shift_right
from calm_jax.training import distillation

Array = jnp.ndarray
LAYER_WEIGHTINGS = ("calm", "uniform", "geometric", "last")


@dataclasses.dataclass(frozen=True)
class AnytimeObjective:
  """How the per-layer losses combine."""

  layer_weighting: str = "calm"  # one of LAYER_WEIGHTINGS
  label_smoothing: float = 0.0  # in [0, 1)
  z_loss: float = 0.0  # >= 0; T5X uses 1e-4

  def validate(self) -> None:
    if self.layer_weighting not in LAYER_WEIGHTINGS:
      raise ValueError(f"layer_weighting={self.layer_weighting!r} is not known; allowed: "
                       f"{', '.join(LAYER_WEIGHTINGS)}")
    if not 0.0 <= self.label_smoothing < 1.0:
      raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
    if not self.z_loss >= 0.0:
      raise ValueError(f"z_loss must be >= 0, got {self.z_loss!r}")


def layer_weights(weighting: str, num_layers: int) -> np.ndarray:
  """The weights w_1..w_L [L] (float64, summing to 1)."""
  layers = np.arange(1, num_layers + 1, dtype=np.float64)
  if weighting == "calm":
    weights = layers
  elif weighting == "uniform":
    weights = np.ones_like(layers)
  elif weighting == "geometric":
    weights = 2.0 ** (layers - num_layers)  # scaled by 2^-L so deep decoders stay finite
  elif weighting == "last":
    weights = (layers == num_layers).astype(np.float64)
  else:
    raise ValueError(f"layer_weighting={weighting!r} is not known; allowed: "
                     f"{', '.join(LAYER_WEIGHTINGS)}")
  return weights / weights.sum()


def token_losses(logits: Array, targets: Array, label_smoothing: float,
                 z_loss: float) -> Tuple[Array, Array]:
  """Cross-entropy per token and the z-loss term, both [...], from logits [..., V] and
  integer targets [...]."""
  logits = logits.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)  # [...]
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  nll = log_z - target_logit
  if label_smoothing:
    vocab = logits.shape[-1]
    off = label_smoothing / (vocab - 1)
    mean_logit = logits.mean(axis=-1)
    # -sum_v q_v log p_v with q = (1-s) at the target and s/(V-1) elsewhere.
    nll = ((1.0 - label_smoothing - off) * (log_z - target_logit)
           + off * vocab * (log_z - mean_logit))
  return nll, z_loss * jnp.square(log_z)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Batch:
  """One training batch of byte- or token-id pairs."""

  inputs: Array  # [B, S] int32 encoder input ids, padding 0
  targets: Array  # [B, T] int32 target ids ending in EOS, padding 0


def _layer_sums(config: T5Config, objective: AnytimeObjective, params: Any, states: Array,
                targets: Array, token_mask: Array, rng: Optional[Array]) -> Tuple[Array, ...]:
  """Per layer of `states` [L', B, T, d]: token sums of the objective term (cross-entropy
  plus z-loss), the plain NLL and the top-1 hits, each [L'].

  One layer's logits [B, T, V] exist at a time: the map body is rematerialised, so the
  backward pass recomputes them instead of keeping L' of them alive.
  """
  deterministic = rng is None
  keys = jax.random.split(rng if rng is not None else jax.random.PRNGKey(0), states.shape[0])

  def one_layer(layer_inputs):
    hidden, key = layer_inputs
    logits = exit_logits(config, params, hidden, deterministic=deterministic,
                         rng=None if deterministic else key)  # [B, T, V]
    cross_entropy, z_term = token_losses(logits, targets, objective.label_smoothing,
                                         objective.z_loss)  # [B, T] each
    if objective.label_smoothing:
      nll, _ = token_losses(logits, targets, 0.0, 0.0)  # [B, T]
    else:
      nll = cross_entropy
    hits = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)  # [B, T]
    total = lambda x: jnp.sum(x * token_mask)
    return total(cross_entropy + z_term), total(nll), total(hits)

  return jax.lax.map(jax.checkpoint(one_layer), (states, keys))


def _decoder_states(config: T5Config, params: Any, batch: Batch,
                    rng: Optional[Array]) -> Tuple[Array, Optional[Array]]:
  """Every decoder layer's teacher-forced state [L, B, T, d] (dropout when `rng` is given)
  and the key left for the heads' dropout."""
  deterministic = rng is None
  enc_rng, dec_rng, head_rng = jax.random.split(rng, 3) if rng is not None else (None,) * 3
  mask = (batch.inputs != config.pad_token_id).astype(jnp.int32)  # [B, S]
  encoded = encode(config, params, batch.inputs, mask, deterministic=deterministic, rng=enc_rng)
  states = decode_teacher_forced(config, params, shift_right(config, batch.targets), encoded,
                                 mask, deterministic=deterministic, rng=dec_rng)
  return states, head_rng


def anytime_loss(config: T5Config, objective: AnytimeObjective, params: Any, batch: Batch, *,
                 rng: Optional[Array] = None) -> Tuple[Array, Dict[str, Array]]:
  """The weighted anytime loss and its metrics.

  Dropout runs when `rng` is given (training). Metrics: 'loss' (the objective, label
  smoothing and z-loss included), 'layer_loss' [L] mean NLL of the target per layer
  (without smoothing or z-loss), 'layer_accuracy' [L] top-1 accuracy per layer, 'tokens'
  (non-padding targets); layers with zero weight are never computed and report NaN.
  """
  states, head_rng = _decoder_states(config, params, batch, rng)  # [L, B, T, d]
  weights = layer_weights(objective.layer_weighting, config.num_decoder_layers)
  return _weighted_layers(config, objective, params, states, batch, weights, head_rng)


def _weighted_layers(config: T5Config, objective: AnytimeObjective, params: Any, states: Array,
                     batch: Batch, weights: np.ndarray,
                     head_rng: Optional[Array]) -> Tuple[Array, Dict[str, Array]]:
  """sum_i weights[i] * NLL_i over states [L, B, T, d] (layers of weight 0 never reach the
  head) and the metrics of anytime_loss."""
  used = np.flatnonzero(weights > 0)  # layers that enter the loss (static)
  token_mask = (batch.targets != config.pad_token_id).astype(jnp.float32)  # [B, T]
  tokens = jnp.maximum(token_mask.sum(), 1.0)
  objective_sums, nll_sums, hit_sums = _layer_sums(
      config, objective, params, states[used], batch.targets, token_mask, head_rng)  # [L'] each
  loss = jnp.sum(jnp.asarray(weights[used], jnp.float32) * objective_sums) / tokens
  scatter = lambda values: jnp.full((config.num_decoder_layers,), jnp.nan).at[used].set(values)
  return loss, {"loss": loss, "layer_loss": scatter(nll_sums / tokens),
                "layer_accuracy": scatter(hit_sums / tokens), "tokens": token_mask.sum()}


@dataclasses.dataclass(frozen=True)
class ShallowDeepObjective:
  """FREE's shallow-deep objective with a shallow exit at layer s of L:

      (s * NLL_s + L * NLL_L) / (s + L) + kd_weight * KD

  both NLLs through the shared exit head, KD the layer-wise distillation of
  training.distillation (deep states behind stop_gradient) under `kd_mapping`."""

  shallow_exit_layer: int = 1  # s (1 <= s < L)
  kd_weight: float = 1.0  # >= 0; 0 trains the two exits without distillation
  kd_mapping: str = "last"  # one of distillation.KD_MAPPINGS
  label_smoothing: float = 0.0  # in [0, 1), as in AnytimeObjective
  z_loss: float = 0.0  # >= 0, as in AnytimeObjective
  # A learned linear map [d, d] on the shallow states before the KD (identity at the start,
  # trained with the model; training.calm keeps it beside the model's parameters)
  kd_linear_map: bool = False

  def validate(self, num_layers: Optional[int] = None) -> None:
    """ValueError naming the bad field; the layer count, once known, bounds s (and picks
    the published uniform list)."""
    AnytimeObjective(label_smoothing=self.label_smoothing, z_loss=self.z_loss).validate()
    distillation.check_mapping(self.kd_mapping)
    if not isinstance(self.kd_linear_map, bool):
      raise ValueError(f"kd_linear_map must be True or False, got {self.kd_linear_map!r}")
    layer = self.shallow_exit_layer
    if isinstance(layer, bool) or not isinstance(layer, numbers.Integral) or layer < 1 or (
        num_layers is not None and layer >= num_layers):
      bound = f"[1, {num_layers - 1}]" if num_layers is not None else ">= 1"
      raise ValueError(f"shallow_exit_layer={layer!r} must be in {bound} (the shallow exit "
                       "needs at least one deep layer after it)")
    if not isinstance(self.kd_weight, numbers.Real) or not self.kd_weight >= 0:
      raise ValueError(f"kd_weight must be >= 0, got {self.kd_weight!r}")
    distillation.check_mapping(self.kd_mapping, layer, num_layers)


def shallow_deep_loss(config: T5Config, objective: ShallowDeepObjective, params: Any,
                      batch: Batch, *, rng: Optional[Array] = None,
                      kd_map: Optional[Array] = None) -> Tuple[Array, Dict[str, Array]]:
  """The shallow-deep loss and its metrics: 'loss', 'layer_loss' and 'layer_accuracy' [L]
  (NaN except at s and L), 'kd' (the distillation term), 'tokens'. `kd_map` [d, d]: an
  optional learned linear map applied to the shallow states before the KD."""
  states, head_rng = _decoder_states(config, params, batch, rng)  # [L, B, T, d]
  shallow, num_layers = objective.shallow_exit_layer, config.num_decoder_layers
  weights = np.zeros(num_layers)
  weights[[shallow - 1, num_layers - 1]] = [shallow, num_layers]
  anytime = AnytimeObjective(label_smoothing=objective.label_smoothing, z_loss=objective.z_loss)
  loss, metrics = _weighted_layers(config, anytime, params, states, batch,
                                   weights / (shallow + num_layers), head_rng)
  token_mask = (batch.targets != config.pad_token_id).astype(jnp.float32)  # [B, T]
  kd = distillation.distillation_loss(states, token_mask, shallow, objective.kd_mapping, kd_map)
  loss = loss + objective.kd_weight * kd
  return loss, dict(metrics, loss=loss, kd=kd)
