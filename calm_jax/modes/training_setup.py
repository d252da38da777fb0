"""What the train and train_exit modes share: loop, optimizer and mesh settings from a
config section (checked before any model work), and the encoded training examples."""

from __future__ import annotations

import dataclasses

import ml_collections

from calm_jax.modes.context import RunContext, encode_targets
from calm_jax.training.data import EncodedExamples
from calm_jax.training.loop import LoopSettings
from calm_jax.training.optimizers import OptimizerConfig
from calm_jax.training.sharding import MESH_AXES, MeshConfig, make_mesh


def loop_settings_from(section: ml_collections.ConfigDict, seed: int) -> LoopSettings:
  """LoopSettings from a training section (`train` or `train_exit`)."""
  return LoopSettings(steps=section.steps, batch_size=section.batch_size, seed=seed,
                      log_every=section.log_every, checkpoint_every=section.checkpoint_every,
                      keep_checkpoints=section.keep_checkpoints,
                      async_checkpoints=section.async_checkpoints)


def optimizer_from(section: ml_collections.ConfigDict) -> OptimizerConfig:
  """OptimizerConfig from a training section; the schedule ends at its last step."""
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


@dataclasses.dataclass(frozen=True)
class TrainingSetup:
  """A training section's loop and optimizer, and the mesh they run on, checked."""

  loop: LoopSettings
  optimizer: OptimizerConfig
  mesh: MeshConfig


def training_setup(section: ml_collections.ConfigDict, config: ml_collections.ConfigDict,
                   name: str = "train") -> TrainingSetup:
  """The loop and optimizer of `section` (the config's section `name`) and the run's `mesh`
  section, checked (the batch must split over the mesh's data axis); a bad value names
  its key in that section."""
  loop = loop_settings_from(section, config.seed)
  optimizer = optimizer_from(section)
  mesh = mesh_config_from(config.mesh)
  try:
    optimizer.validate()
    loop.validate(make_mesh(mesh))
  except ValueError as error:
    raise ValueError(section_message(str(error), name)) from None
  return TrainingSetup(loop, optimizer, mesh)


def section_message(message: str, name: str) -> str:
  """A loop or optimizer check's message with its field named as the config key
  `<name>.<field>` (the library's own messages say `train.` or the bare field)."""
  message = message.replace("the number of training steps", "steps")
  if message.startswith("train."):
    message = message[len("train."):]
  return f"{name}.{message}"


def training_data(context: RunContext, vocab_size: int) -> EncodedExamples:
  """train.num_examples of data.task's train.split through data.vocabulary: inputs cut
  to data.max_input_len, targets to decode.max_decode_len (keeping EOS)."""
  config, vocabulary = context.config, context.vocabulary
  vocabulary.check_model(vocab_size)
  if vocabulary.pad_id != 0:
    raise ValueError(f"vocabulary {vocabulary.name!r} pads with id {vocabulary.pad_id}; "
                     "T5 training expects padding id 0")
  split = context.split(config.train.split, config.train.num_examples)
  targets = encode_targets(split.examples, vocabulary, config.decode.max_decode_len)
  return EncodedExamples(inputs=split.input_ids, targets=targets)
