"""CALM fine-tuning as a library call: the anytime objective over every decoder layer, or
FREE's shallow-deep objective (objectives.ShallowDeepObjective)."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Union

from jax.sharding import Mesh

from calm_jax.model.config import T5Config
from calm_jax.training import data as data_lib
from calm_jax.training.loop import LoopSettings, TrainResult, fit
from calm_jax.training.objectives import (AnytimeObjective, ShallowDeepObjective, anytime_loss,
                                          shallow_deep_loss)
from calm_jax.training.optimizers import OptimizerConfig, make_optimizer, optimizer_description
from calm_jax.training.sharding import DEFAULT_RULES, make_mesh, MeshConfig


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

  def loss_fn(params, frozen, batch, rng):
    del frozen
    loss = shallow_deep_loss if is_shallow_deep else anytime_loss
    return loss(config, objective, params, batch, rng=rng)

  return fit(loss_fn, params, make_optimizer(optimizer), data, settings, mesh, rules,
             workdir, calm_description(config, objective, optimizer), name="train",
             stop_after=stop_after)
