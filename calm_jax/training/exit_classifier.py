"""Training a learned exit classifier on a frozen backbone.

The backbone (a CALM-trained T5) only supplies every decoder layer's state on the
reference sequence; `jax.lax.stop_gradient` cuts it off, and only the classifier's
parameters are trained (the loop passes the backbone as `frozen`, outside the optimizer).

Labels per layer i and position t:
- 'consistent' (CALM): layer i's top-1 equals the final layer's top-1;
- 'gold': layer i's top-1 equals the reference token.

Losses, over the classifier's defined exit points and real target positions:
- 'cross_entropy' with `balancing`:
  - 'class_weights' (CALM): each class of each layer weighted by n_i / (2 n_{i,c}), the
    counts taken over the batch, so both classes of every layer weigh the same;
  - 'logit_adjustment': log of each layer's class prior (batch counts) added to the
    logits before the cross-entropy (Menon et al.), the confidence at decode time unchanged;
  - 'none'.
- 'geometric': the classifier's exit distribution q(i) = c_i prod_{j<i} (1 - c_j) over the
  exit points where it predicts (the last always exits) is fit to the oracle exit layer,
  the first of them whose label is 1: loss = -log q(oracle) (as in the Depth-Adaptive
  Transformer's geometric-like halting, the option CALM mentions).

The cross-entropy and the metrics cover the layers where the decoder asks the classifier:
its exit points except layer L, where every token exits anyway. Metrics per layer (NaN
elsewhere): accuracy of the 0.5 decision, F1 of the "don't exit" class (label 0) and the
share of label 1.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from calm_jax.exit_classifiers.registry import get_classifier
from calm_jax.exit_classifiers.teacher_forced import (classifier_logits_teacher_forced,
                                                      defined_layers)
from calm_jax.model.config import T5Config
from calm_jax.model.t5 import decode_teacher_forced, encode, exit_logits, shift_right
from calm_jax.training import data as data_lib
from calm_jax.training.loop import LoopSettings, TrainResult, fit
from calm_jax.training.objectives import Batch
from calm_jax.training.optimizers import OptimizerConfig, make_optimizer, optimizer_description
from calm_jax.training.sharding import DEFAULT_RULES, MeshConfig, make_mesh

Array = jnp.ndarray
LABELS = ("consistent", "gold")
BALANCING = ("class_weights", "logit_adjustment", "none")
LOSSES = ("cross_entropy", "geometric")


@dataclasses.dataclass(frozen=True)
class ClassifierObjective:
  """What the classifier learns and how its loss is weighted."""

  classifier: str = "meta_mlp"  # a name of exit_classifiers.registry.CLASSIFIERS
  labels: str = "consistent"  # one of LABELS
  balancing: str = "class_weights"  # one of BALANCING (cross_entropy only)
  loss: str = "cross_entropy"  # one of LOSSES
  exit_points: Optional[Tuple[int, ...]] = None  # 1-based exit layers; None = every layer

  def validate(self) -> None:
    get_classifier(self.classifier)
    for field, allowed in (("labels", LABELS), ("balancing", BALANCING), ("loss", LOSSES)):
      value = getattr(self, field)
      if value not in allowed:
        raise ValueError(f"train_exit.{field}={value!r} is not known; allowed: "
                         f"{', '.join(allowed)}")


def backbone_states(config: T5Config, backbone: Any, batch: Batch) -> Tuple[Array, Array]:
  """(every decoder layer's state [L, B, T, d], each layer's top-1 [L, B, T]) on the
  references, with no gradient into the backbone."""
  backbone = jax.lax.stop_gradient(backbone)
  mask = (batch.inputs != config.pad_token_id).astype(jnp.int32)
  encoded = encode(config, backbone, batch.inputs, mask)
  states = decode_teacher_forced(config, backbone, shift_right(config, batch.targets),
                                 encoded, mask)  # [L, B, T, d]
  # One layer's [B, T, V] logits at a time.
  top1 = jax.lax.map(lambda h: jnp.argmax(exit_logits(config, backbone, h), axis=-1),
                     states)  # [L, B, T]
  return jax.lax.stop_gradient(states), top1


def exit_labels(top1: Array, targets: Array, kind: str) -> Array:
  """[L, B, T] float32 1 where layer i's top-1 is 'right' in the sense of `kind`."""
  reference = top1[-1] if kind == "consistent" else targets  # [B, T]
  return (top1 == reference[None]).astype(jnp.float32)


def _balanced_cross_entropy(log_probs: Array, labels: Array, weights: Array,
                            balancing: str) -> Array:
  """Mean over `weights` [L, B, T] of the (balanced) cross-entropy; log_probs [L, B, T, 2]."""
  count = lambda x: jnp.sum(x * weights, axis=(1, 2), keepdims=True)  # [L, 1, 1]
  positives, total = count(labels), count(jnp.ones_like(labels))
  prior = jnp.stack([total - positives, positives], axis=-1) / jnp.maximum(total, 1)[..., None]
  if balancing == "logit_adjustment":
    log_probs = jax.nn.log_softmax(log_probs + jnp.log(jnp.maximum(prior, 1e-12)), axis=-1)
  picked = jnp.where(labels > 0, log_probs[..., 1], log_probs[..., 0])  # [L, B, T]
  if balancing == "class_weights":
    share = jnp.where(labels > 0, prior[..., 1], prior[..., 0])  # [L, B, T]
    weights = weights / jnp.maximum(2.0 * share, 1e-12)
  return -jnp.sum(picked * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def _geometric_loss(log_probs: Array, labels: Array, points: np.ndarray,
                    token_mask: Array) -> Array:
  """-log q(oracle exit point), averaged over tokens; q lives on `points`, the exit points
  where the classifier predicts (the last of them always exits)."""
  index = np.flatnonzero(points)  # exit points, 0-based
  log_exit = log_probs[index, ..., 1].at[-1].set(0.0)  # [P, B, T], the last always exits
  log_stay = log_probs[index, ..., 0]
  log_q = log_exit + jnp.cumsum(log_stay, axis=0) - log_stay  # c_n prod_{j<n} (1 - c_j)
  hit = labels[index] > 0
  hit = hit.at[-1].set(True)
  oracle = jnp.argmax(hit, axis=0)  # [B, T] first exit point with label 1
  picked = jnp.take_along_axis(log_q, oracle[None], axis=0)[0]  # [B, T]
  return -jnp.sum(picked * token_mask) / jnp.maximum(jnp.sum(token_mask), 1.0)


def _layer_metrics(logits: Array, labels: Array, weights: Array) -> Dict[str, Array]:
  predicted = (logits[..., 1] > logits[..., 0]).astype(jnp.float32)
  total = lambda x: jnp.sum(x * weights, axis=(1, 2))  # [L]
  tokens = total(jnp.ones_like(labels))
  stay_right = total((1 - predicted) * (1 - labels))
  stay_wrong = total((1 - predicted) * labels)
  missed = total(predicted * (1 - labels))
  defined = tokens > 0
  nan = jnp.full_like(tokens, jnp.nan)
  return {
      "layer_accuracy": jnp.where(defined, total((predicted == labels).astype(jnp.float32))
                                  / jnp.maximum(tokens, 1), nan),
      "layer_dont_exit_f1": jnp.where(
          defined, 2 * stay_right / jnp.maximum(2 * stay_right + stay_wrong + missed, 1), nan),
      "layer_positive_rate": jnp.where(defined, total(labels) / jnp.maximum(tokens, 1), nan),
  }


def asked_layers(objective: ClassifierObjective, num_layers: int) -> np.ndarray:
  """[L] bool: where the decoder consults the classifier, i.e. its defined exit points
  except layer L (where every token exits anyway); the cross-entropy and the metrics cover
  these. ValueError when there is none."""
  asked = defined_layers(objective.classifier, num_layers, objective.exit_points).copy()
  asked[-1] = False
  if not asked.any():
    points = objective.exit_points or tuple(range(1, num_layers + 1))
    raise ValueError(f"exit classifier {objective.classifier!r} makes no prediction before "
                     f"the last layer with exit points {tuple(points)} of a "
                     f"{num_layers}-layer decoder (three_state_mlp needs three exit points "
                     "before the last layer); lower exit.min_exit_layer or exit_interval")
  return asked


def classifier_loss(config: T5Config, objective: ClassifierObjective, params: Any,
                    backbone: Any, batch: Batch) -> Tuple[Array, Dict[str, Array]]:
  """The classifier's loss on one batch and its per-layer metrics."""
  states, top1 = backbone_states(config, backbone, batch)
  token_mask = (batch.targets != config.pad_token_id).astype(jnp.float32)  # [B, T]
  decoder_mask = jnp.ones_like(batch.targets)  # every decoder input position is real
  logits = classifier_logits_teacher_forced(objective.classifier, params, states,
                                            decoder_mask, objective.exit_points)  # [L, B, T, 2]
  labels = exit_labels(top1, batch.targets, objective.labels)  # [L, B, T]
  points = defined_layers(objective.classifier, config.num_decoder_layers,
                          objective.exit_points)  # [L] static
  asked = asked_layers(objective, config.num_decoder_layers)  # [L] static
  weights = jnp.asarray(asked, jnp.float32)[:, None, None] * token_mask[None]  # [L, B, T]
  log_probs = jax.nn.log_softmax(logits, axis=-1)  # [L, B, T, 2]
  if objective.loss == "geometric":
    loss = _geometric_loss(log_probs, labels, points, token_mask)
  else:
    loss = _balanced_cross_entropy(log_probs, labels, weights, objective.balancing)
  return loss, {"loss": loss, **_layer_metrics(logits, labels, weights)}


def classifier_description(config: T5Config, objective: ClassifierObjective,
                           optimizer: OptimizerConfig) -> Dict[str, Any]:
  """What a classifier checkpoint must match to be resumed."""
  return {"kind": "exit_classifier", "model": dataclasses.asdict(config),
          "objective": dataclasses.asdict(objective),
          "optimizer": optimizer_description(optimizer)}


def train_classifier(config: T5Config, backbone: Any, params: Any,
                     data: data_lib.EncodedExamples, *, objective: ClassifierObjective,
                     optimizer: OptimizerConfig, settings: LoopSettings, workdir: str,
                     mesh: Optional[Mesh] = None, rules: Sequence = DEFAULT_RULES,
                     stop_after: Optional[int] = None) -> TrainResult:
  """Trains classifier `params` on the frozen `backbone`; checkpoints as exit_<name>."""
  objective.validate()
  asked_layers(objective, config.num_decoder_layers)
  optimizer = dataclasses.replace(optimizer, total_steps=settings.steps)
  optimizer.validate()
  mesh = mesh if mesh is not None else make_mesh(MeshConfig())
  settings.validate(mesh)

  def loss_fn(params, frozen, batch, rng):
    del rng  # the backbone runs without dropout: its states are what decoding sees
    return classifier_loss(config, objective, params, frozen, batch)

  return fit(loss_fn, params, make_optimizer(optimizer), data, settings, mesh, rules, workdir,
             classifier_description(config, objective, optimizer), frozen=backbone,
             name=f"exit_{objective.classifier}", stop_after=stop_after)
