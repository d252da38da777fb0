"""The `train` mode: CALM fine-tuning with the anytime objective, or FREE's shallow-deep
objective (train.objective).

Every setting of the `train` and `mesh` sections is checked before the model loads. The
run checkpoints under <workdir>/checkpoints/train, resumes from there when restarted in the
same workdir, logs to <workdir>/train_metrics.jsonl and <workdir>/tensorboard/train, and
ends by writing a params-only export to <workdir>/model, which later modes load with
--config.model.checkpoint=<workdir>/model (with train.kd_linear_map, FREE's learned KD map
beside it as kd_map.npy).
"""

from __future__ import annotations

import dataclasses
from typing import Union

import jax
import ml_collections
import numpy as np

from calm_jax.model.config import T5Config
from calm_jax.modes import memory
from calm_jax.modes.context import RunContext, run_context
from calm_jax.modes.training_setup import TrainingSetup, training_data, training_setup
from calm_jax.training.calm import train_calm
from calm_jax.training.checkpoints import export_kd_map, export_params
from calm_jax.training.data import EncodedExamples
from calm_jax.training.loop import LoopSettings
from calm_jax.training.objectives import AnytimeObjective, ShallowDeepObjective
from calm_jax.training.sharding import make_mesh

EXPORT_DIR = "model"
Objective = Union[AnytimeObjective, ShallowDeepObjective]


@dataclasses.dataclass(frozen=True)
class Settings:
  """What the train mode runs on, checked."""

  context: RunContext
  setup: TrainingSetup  # the `train` section's loop and optimizer, and the mesh
  objective: Objective


def objective_from(config: ml_collections.ConfigDict) -> Objective:
  """train.objective's objective, checked: 'anytime' (CALM) or 'shallow_deep' (FREE, the
  shallow exit at exit.shallow_exit_layer; bounded by the layer count here when the model is
  initialised fresh, else by train_calm once it is loaded)."""
  section = config.train
  if section.objective == "anytime":
    objective = AnytimeObjective(layer_weighting=section.layer_weighting,
                                 label_smoothing=section.label_smoothing, z_loss=section.z_loss)
    objective.validate()
    return objective
  if section.objective != "shallow_deep":
    raise ValueError(f"train.objective={section.objective!r}; allowed: anytime, shallow_deep")
  objective = ShallowDeepObjective(shallow_exit_layer=config.exit.shallow_exit_layer,
                                   kd_weight=section.kd_weight, kd_mapping=section.kd_mapping,
                                   label_smoothing=section.label_smoothing,
                                   z_loss=section.z_loss,
                                   kd_linear_map=section.get("kd_linear_map", False))
  fresh = not (config.model.hf_path or config.model.checkpoint)
  try:
    objective.validate(config.model.num_decoder_layers if fresh else None)
  except ValueError as error:
    raise ValueError(f"train.objective='shallow_deep': {error} (exit.shallow_exit_layer, "
                     "train.kd_weight, train.kd_mapping, train.kd_linear_map)") from None
  return objective


def check(config: ml_collections.ConfigDict, workdir: str) -> Settings:
  """Every training setting, the task and the model source, checked before any model or
  data work."""
  section = config.train
  objective = objective_from(config)
  setup = training_setup(section, config)
  if section.num_examples < 1:
    raise ValueError(f"train.num_examples must be >= 1, got {section.num_examples!r}")
  context = run_context(config, workdir, splits=("train.split",))
  memory.check_training(config, context.model_shape, "train")
  return Settings(context, setup, objective)


def describe(model: T5Config, data: EncodedExamples, settings: LoopSettings) -> str:
  tokens = int(np.sum(data.targets != 0))
  return (f"CALM training of a {model.num_layers}+{model.num_decoder_layers}-layer T5 "
          f"(d_model {model.d_model}) on {len(data.inputs)} examples ({tokens} target "
          f"tokens), {settings.steps} steps of batch {settings.batch_size}, on "
          f"{jax.device_count()} device(s)")


def run(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Runs (or resumes) CALM training; returns the export directory."""
  settings = check(config, workdir)
  context, setup = settings.context, settings.setup
  model_config, params = context.load_model()
  data = training_data(context, model_config.vocab_size)
  if context.writes:
    print(describe(model_config, data, setup.loop), flush=True)
  result = train_calm(model_config, params, data, objective=settings.objective,
                      optimizer=setup.optimizer, settings=setup.loop, workdir=workdir,
                      mesh=make_mesh(setup.mesh), rules=setup.mesh.rules)
  export = export_params(context.path(EXPORT_DIR), model_config, result.params)
  export_kd_map(export, result.extra)  # FREE's learned KD map (train.kd_linear_map) or None
  if context.writes:
    print(f"[train] {_summary(result.history)}. Model exported to {export}; use it with "
          f"--config.model.checkpoint={export}", flush=True)
  return export


def _summary(history) -> str:
  """The last logged step's loss and per-layer accuracy."""
  last = history[-1] if history else None
  if not last:
    return "nothing left to train (the checkpoint is at the last step)"
  return (f"final loss {last['loss']:.4f}; per-layer accuracy "
          + ", ".join(f"{a:.3f}" for a in last["layer_accuracy"] if a is not None))
