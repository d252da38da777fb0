"""CALM fine-tuning as a library call: the anytime objective over every decoder layer, or
FREE's shallow-deep objective (objectives.ShallowDeepObjective), whose learned KD map
(kd_linear_map) trains beside the model and comes back as TrainResult.extra."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Union

import numpy as np
from jax.sharding import Mesh

from calm_jax.model.config import T5Config
from calm_jax.training import data as data_lib
from calm_jax.training.loop import LoopSettings, TrainResult, fit
from calm_jax.training.objectives import (AnytimeObjective, ShallowDeepObjective, anytime_loss,
                                          shallow_deep_loss)
from calm_jax.training.optimizers import OptimizerConfig, make_optimizer, optimizer_description
from calm_jax.training.sharding import DEFAULT_RULES, make_mesh, MeshConfig

# Keys of the tree trained with FREE's learned KD map (ShallowDeepObjective.kd_linear_map)
MODEL_KEY, KD_MAP_KEY = "model", "kd_map"


def calm_description(config: T5Config, objective: Union[AnytimeObjective, ShallowDeepObjective],
                     optimizer: OptimizerConfig) -> Dict[str, Any]:
  """What a CALM checkpoint must match to be resumed: model, objective and optimizer."""
  return {"kind": "calm", "model": dataclasses.asdict(config),
          "objective": dataclasses.asdict(objective),
          "optimizer": optimizer_description(optimizer)}


def train_calm(config: T5Config, params: Any, data: data_lib.EncodedExamples, *,
               objective: Union[AnytimeObjective, ShallowDeepObjective],
               optimizer: OptimizerConfig,
               settings: LoopSettings, workdir: str, mesh: Optional[Mesh] = None,
               rules=DEFAULT_RULES, stop_after: Optional[int] = None) -> TrainResult:
  """Fine-tunes `params` with the anytime loss or FREE's shallow-deep loss (by the
  objective's type); checks every setting before compiling."""
  is_shallow_deep = isinstance(objective, ShallowDeepObjective)
  if is_shallow_deep:
    objective.validate(config.num_decoder_layers)
  else:
    objective.validate()
  optimizer = dataclasses.replace(optimizer, total_steps=settings.steps)
  optimizer.validate()
  mesh = mesh if mesh is not None else make_mesh(MeshConfig())
  settings.validate(mesh)

  learned_map = is_shallow_deep and objective.kd_linear_map

  def loss_fn(params, frozen, batch, rng):
    del frozen
    if learned_map:
      return shallow_deep_loss(config, objective, params[MODEL_KEY], batch, rng=rng,
                               kd_map=params[KD_MAP_KEY])
    loss = shallow_deep_loss if is_shallow_deep else anytime_loss
    return loss(config, objective, params, batch, rng=rng)

  trained = with_kd_map(config, params) if learned_map else params
  result = fit(loss_fn, trained, make_optimizer(optimizer), data, settings, mesh, rules,
               workdir, calm_description(config, objective, optimizer), name="train",
               stop_after=stop_after)
  if not learned_map:
    return result
  return dataclasses.replace(result, params=result.params[MODEL_KEY],
                             extra=result.params[KD_MAP_KEY])


def with_kd_map(config: T5Config, params: Any) -> Dict[str, Any]:
  """The tree trained with a learned KD map: the model's parameters and the map [d, d],
  starting as the identity (so the KD starts as the plain state MSE)."""
  kd_map = np.eye(config.d_model, dtype=np.float32)  # [d, d]
  return {MODEL_KEY: params, KD_MAP_KEY: kd_map}
