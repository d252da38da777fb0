"""The `train` mode: CALM fine-tuning with the anytime objective.

Every setting of the `train` and `mesh` sections is checked before the model loads. The
run checkpoints under <workdir>/checkpoints/train, resumes from there when restarted in the
same workdir, logs to <workdir>/train_metrics.jsonl and <workdir>/tensorboard/train, and
ends by writing a params-only export to <workdir>/model, which later modes load with
--config.model.checkpoint=<workdir>/model.
"""

from __future__ import annotations

import os
from typing import Tuple

import jax
import ml_collections
import numpy as np

from calm_jax.data.vocabulary import get_vocabulary
from calm_jax.model.config import T5Config
from calm_jax.model.source import check_source, load_model
from calm_jax.run_data import check_data, encode_split, encode_targets
from calm_jax.training.calm import train_calm
from calm_jax.training.checkpoints import export_params
from calm_jax.training.data import EncodedExamples
from calm_jax.training.loop import LoopSettings
from calm_jax.training.objectives import AnytimeObjective
from calm_jax.training.optimizers import OptimizerConfig
from calm_jax.training.sharding import MESH_AXES, MeshConfig, make_mesh

EXPORT_DIR = "model"


def loop_settings_from(section: ml_collections.ConfigDict, seed: int) -> LoopSettings:
  return LoopSettings(steps=section.steps, batch_size=section.batch_size, seed=seed,
                      log_every=section.log_every, checkpoint_every=section.checkpoint_every,
                      keep_checkpoints=section.keep_checkpoints,
                      async_checkpoints=section.async_checkpoints)


def optimizer_from(section: ml_collections.ConfigDict) -> OptimizerConfig:
  return OptimizerConfig(optimizer=section.optimizer, learning_rate=section.learning_rate,
                         schedule=section.schedule, warmup_steps=section.warmup_steps,
                         total_steps=section.steps, weight_decay=section.weight_decay,
                         clip_norm=section.clip_norm)


def mesh_config_from(section: ml_collections.ConfigDict) -> MeshConfig:
  """MeshConfig from the `mesh` section; a rule must map a name to a mesh axis or None."""
  rules = tuple((str(name), axis) for name, axis in section.rules)
  for name, axis in rules:
    if axis is not None and axis not in MESH_AXES:
      raise ValueError(f"mesh.rules maps {name!r} to {axis!r}, which is no mesh axis; "
                       f"allowed: {', '.join(MESH_AXES)} or None")
  return MeshConfig(data=section.data, model=section.model, rules=rules)


def training_data(config: ml_collections.ConfigDict, vocab_size: int) -> EncodedExamples:
  """train.num_examples of data.task's train.split through data.vocabulary: inputs cut
  to data.max_input_len, targets to decode.max_decode_len (keeping EOS)."""
  vocabulary = get_vocabulary(config.data.vocabulary)
  vocabulary.check_model(vocab_size)
  if vocabulary.pad_id != 0:
    raise ValueError(f"vocabulary {vocabulary.name!r} pads with id {vocabulary.pad_id}; "
                     "T5 training expects padding id 0")
  split = encode_split(config, config.train.split, config.train.num_examples, vocabulary)
  targets = encode_targets(split.examples, vocabulary, config.decode.max_decode_len)
  return EncodedExamples(inputs=split.input_ids, targets=targets)


def check_train_config(config: ml_collections.ConfigDict) -> Tuple[LoopSettings, OptimizerConfig,
                                                                   AnytimeObjective, MeshConfig]:
  """Every training setting checked, before any model or data work."""
  section = config.train
  settings = loop_settings_from(section, config.seed)
  optimizer = optimizer_from(section)
  optimizer.validate()
  objective = AnytimeObjective(layer_weighting=section.layer_weighting,
                               label_smoothing=section.label_smoothing, z_loss=section.z_loss)
  objective.validate()
  mesh_config = mesh_config_from(config.mesh)
  settings.validate(make_mesh(mesh_config))
  if section.num_examples < 1:
    raise ValueError(f"train.num_examples must be >= 1, got {section.num_examples!r}")
  check_data(config)
  check_source(config.model)
  return settings, optimizer, objective, mesh_config


def describe(model: T5Config, data: EncodedExamples, settings: LoopSettings) -> str:
  tokens = int(np.sum(data.targets != 0))
  return (f"CALM training of a {model.num_layers}+{model.num_decoder_layers}-layer T5 "
          f"(d_model {model.d_model}) on {len(data.inputs)} examples ({tokens} target "
          f"tokens), {settings.steps} steps of batch {settings.batch_size}, on "
          f"{jax.device_count()} device(s)")


def train_examples(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Runs (or resumes) CALM training; returns the export directory."""
  settings, optimizer, objective, mesh_config = check_train_config(config)
  model_config, params = load_model(config.model, config.seed)
  data = training_data(config, model_config.vocab_size)
  if jax.process_index() == 0:
    print(describe(model_config, data, settings), flush=True)
  result = train_calm(model_config, params, data, objective=objective, optimizer=optimizer,
                      settings=settings, workdir=workdir, mesh=make_mesh(mesh_config),
                      rules=mesh_config.rules)
  export = export_params(os.path.join(workdir, EXPORT_DIR), model_config, result.params)
  if jax.process_index() == 0:
    last = result.history[-1] if result.history else None
    summary = (f"final loss {last['loss']:.4f}; per-layer accuracy "
               + ", ".join(f"{a:.3f}" for a in last["layer_accuracy"] if a is not None)
               if last else "nothing left to train (the checkpoint is at the last step)")
    print(f"[train] {summary}. Model exported to {export}; use it with "
          f"--config.model.checkpoint={export}", flush=True)
  return export
